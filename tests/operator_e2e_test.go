package tests

// Operators' commands through the real binaries (issue 17 item 4): a quarantine cleared,
// maintenance, a supervisor drained, user tokens added, listed and revoked without
// editing files, all audited; and what the users waiting meanwhile are told.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/metadata"
)

const (
	rootToken  = "tok-root-0123456789"
	aliceToken = "tok-alice-0123456789"
)

// opsLab is a coordinator with client tokens (root is an admin, alice is not) and a
// supervisor with two boards: q-01, whose afterLease hook fails (once) with onFailure:
// exit, and rpi4-01.
type opsLab struct {
	dir, coordAddr, coordDir, tokens string
	leases                           pb.LeaseServiceClient
}

func newOpsLab(t *testing.T) *opsLab {
	t.Helper()
	dir := t.TempDir()
	lab := &opsLab{dir: dir, coordAddr: freeAddr(t), coordDir: filepath.Join(dir, "coord"), tokens: filepath.Join(dir, "client-tokens")}
	if err := os.WriteFile(lab.tokens, []byte("root "+rootToken+" admin\nalice "+aliceToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	startCoordinator(t, lab.coordAddr, lab.coordDir, "--client-tokens", lab.tokens)
	// q-01's afterLease hook fails once.
	once := filepath.Join(dir, "failed-once")
	cfg := supervisorConfig(t, dir, "lab-1", lab.coordAddr, "", `[ "$BOARD_NAME" = q-01 ] && [ ! -e `+once+` ] && { touch `+once+`; echo 'JMP_ERROR: the board did not power off'; exit 3; }; true`,
		boardSpec{"q-01", "device: q"}, boardSpec{"rpi4-01", "device: rpi4"})
	editConfig(t, cfg, "afterLease: {timeout: 20s, onFailure: endLease", "afterLease: {timeout: 20s, onFailure: exit")
	startSupervisor(t, "supervisor", cfg)
	lab.leases = leaseClient(t, lab.coordAddr)
	waitBoardsAs(t, lab.leases, rootToken, 2)
	return lab
}

// as runs boardvisor as the user holding token; it fails the test unless the command
// exits with want.
func (lab *opsLab) as(t *testing.T, token string, want int, args ...string) string {
	t.Helper()
	out, err := bvAs(lab.coordAddr, token, args...)
	if got := exitCode(err); got != want {
		t.Fatalf("boardvisor %s: exit %d, want %d:\n%s", strings.Join(args, " "), got, want, out)
	}
	return out
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(interface{ ExitCode() int }); ok {
		return ee.ExitCode()
	}
	return -1
}

// boardJSON is `board show NAME -o json` as root.
func (lab *opsLab) board(t *testing.T, name string) map[string]any {
	t.Helper()
	var b map[string]any
	out := lab.as(t, rootToken, 0, "board", "show", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatalf("board show -o json: %v\n%s", err, out)
	}
	return b
}

func TestClearQuarantine(t *testing.T) {
	lab := newOpsLab(t)
	// A lease whose afterLease hook fails with onFailure: exit quarantines the board.
	out := lab.as(t, aliceToken, 0, "lease", "create", "--board", "q-01")
	id := createdLease(out)["lease"]
	lab.as(t, aliceToken, 0, "lease", "release", id)
	eventually(t, "q-01 quarantined", func() bool { return lab.board(t, "q-01")["health"] == "bad" })
	if st := lab.board(t, "q-01")["status"]; st != "OFFLINE" {
		t.Fatalf("quarantined board shows %v, want OFFLINE", st)
	}
	// A user waiting for it is told why, and that an operator must clear it.
	shell := start(t, "shell", "shell", "--coordinator", lab.coordAddr, "--token", aliceToken, "--board", "q-01", "--", "true")
	line := shell.waitLine("The only board matching board q-01 is unavailable")
	for _, want := range []string{"q-01 is quarantined", "afterLease hook failed", "boardvisor board clear q-01"} {
		if !strings.Contains(line, want) {
			t.Errorf("the waiting user is not told %q: %q", want, line)
		}
	}
	// Only an admin clears it.
	if out := lab.as(t, aliceToken, 4, "board", "clear", "q-01"); !strings.Contains(out, "only an admin") {
		t.Errorf("alice clears the quarantine: %q", out)
	}
	if out := lab.as(t, rootToken, 0, "board", "clear", "q-01", "--reason", "power supply replaced"); !strings.Contains(out, "quarantine cleared") {
		t.Errorf("board clear: %q", out)
	}
	// The waiting shell gets the board.
	shell.waitLine("Connected to device.")
	<-shell.done
	if shell.err != nil {
		t.Errorf("the waiting shell: %v", shell.err)
	}
	if out := lab.as(t, rootToken, 1, "board", "clear", "rpi4-01"); !strings.Contains(out, "not quarantined") {
		t.Errorf("clearing a healthy board: %q", out)
	}
	audit, _ := os.ReadFile(filepath.Join(lab.coordDir, "audit.jsonl"))
	if !strings.Contains(string(audit), `"clear-quarantine"`) || !strings.Contains(string(audit), `"who":"root"`) ||
		!strings.Contains(string(audit), "power supply replaced") {
		t.Errorf("the clearing is not audited:\n%s", audit)
	}
}

func TestMaintenanceAndDrain(t *testing.T) {
	lab := newOpsLab(t)
	lab.as(t, rootToken, 0, "board", "maintenance", "on", "rpi4-01", "--reason", "cable swap")
	if h := lab.board(t, "rpi4-01")["health"]; h != "maintenance" {
		t.Fatalf("health %v, want maintenance", h)
	}
	out := lab.as(t, aliceToken, 0, "lease", "create", "--board", "rpi4-01", "--detach")
	waiting := createdLease(out)["lease"]
	r, err := lab.leases.ExplainWait(asUser(t, rootToken), &pb.ExplainWaitRequest{Id: waiting})
	if err != nil || !strings.Contains(r.GetSummary(), "in maintenance: cable swap") {
		t.Fatalf("ExplainWait: %v %v", r, err)
	}
	lab.as(t, rootToken, 0, "board", "maintenance", "off", "rpi4-01")
	w, err := watchLease(asUser(t, rootToken), lab.leases, waiting)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatalf("the waiting lease after maintenance: %v", err)
	}

	// Drained, the supervisor's boards take no new lease; the live one goes on.
	out = lab.as(t, rootToken, 0, "supervisor", "drain", "lab-1", "--reason", "upgrade")
	if !strings.Contains(out, "2 board(s) take no new lease; 1 lease(s) still live") {
		t.Errorf("drain: %q", out)
	}
	var sups []map[string]any
	if err := json.Unmarshal([]byte(lab.as(t, rootToken, 0, "supervisor", "list", "-o", "json")), &sups); err != nil || len(sups) != 1 || sups[0]["drained"] != true {
		t.Fatalf("supervisor list: %v %v", sups, err)
	}
	next := createdLease(lab.as(t, aliceToken, 0, "lease", "create", "-l", "device=q", "--detach"))["lease"]
	lab.as(t, aliceToken, 0, "lease", "release", waiting)
	out = lab.as(t, rootToken, 0, "supervisor", "drain", "lab-1", "--wait")
	if !strings.Contains(out, "no live lease left") {
		t.Errorf("drain --wait: %q", out)
	}
	if l, _ := lab.leases.GetLease(asUser(t, rootToken), &pb.GetLeaseRequest{Id: next}); !l.GetLease().GetQueued() {
		t.Fatalf("a lease got a board of a drained supervisor: %v", l)
	}
	// A board in maintenance for its own reason stays so after an undrain.
	lab.as(t, rootToken, 0, "board", "maintenance", "off", "rpi4-01")
	lab.as(t, rootToken, 0, "board", "maintenance", "on", "rpi4-01", "--reason", "broken fan")
	lab.as(t, rootToken, 0, "supervisor", "undrain", "lab-1")
	w, err = watchLease(asUser(t, rootToken), lab.leases, next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatalf("the queued lease after undrain: %v", err)
	}
	if h := lab.board(t, "rpi4-01")["health"]; h != "maintenance" {
		t.Errorf("undrain took rpi4-01 out of its own maintenance: %v", h)
	}
	if out := lab.as(t, aliceToken, 4, "supervisor", "drain", "lab-1"); !strings.Contains(out, "only an admin") {
		t.Errorf("alice drains: %q", out)
	}
	if out := lab.as(t, rootToken, 5, "supervisor", "drain", "lab-9"); !strings.Contains(out, "no supervisor lab-9 (known: lab-1)") {
		t.Errorf("drain of an unknown supervisor: %q", out)
	}
	audit, _ := os.ReadFile(filepath.Join(lab.coordDir, "audit.jsonl"))
	if !strings.Contains(string(audit), `"drain"`) || !strings.Contains(string(audit), `"undrain"`) {
		t.Errorf("drains are not audited:\n%s", audit)
	}
}

func TestUserTokens(t *testing.T) {
	lab := newOpsLab(t)
	carol := strings.TrimSpace(lastLine(lab.as(t, rootToken, 0, "tokens", "add", "carol")))
	if len(carol) != 64 {
		t.Fatalf("tokens add printed %q, want a token", carol)
	}
	lab.as(t, carol, 0, "status") // in force at once
	list := lab.as(t, rootToken, 0, "tokens", "list")
	if !strings.Contains(list, "carol") || strings.Contains(list, carol) || strings.Contains(list, rootToken) {
		t.Fatalf("tokens list shows no carol, or shows a token:\n%s", list)
	}
	if out := lab.as(t, aliceToken, 4, "tokens", "list"); !strings.Contains(out, "only an admin") {
		t.Errorf("alice lists tokens: %q", out)
	}
	lab.as(t, rootToken, 0, "tokens", "revoke", "carol")
	if out := lab.as(t, carol, 4, "status"); !strings.Contains(out, "refused the token") {
		t.Errorf("a revoked token: %q", out)
	}
	if out := lab.as(t, rootToken, 1, "tokens", "revoke", "root"); !strings.Contains(out, "no admin") {
		t.Errorf("revoking the last admin: %q", out)
	}
	// Edited beside the coordinator (--file), the file is reloaded within seconds.
	dave := strings.TrimSpace(lastLine(lab.as(t, "", 0, "tokens", "add", "--file", lab.tokens, "dave")))
	eventually(t, "dave's token in force", func() bool {
		_, err := bvAs(lab.coordAddr, dave, "status")
		return err == nil
	})
	b, _ := os.ReadFile(lab.tokens)
	if fi, _ := os.Stat(lab.tokens); fi.Mode().Perm() != 0o600 || !strings.Contains(string(b), "dave "+dave) || !strings.Contains(string(b), "alice "+aliceToken) {
		t.Errorf("tokens file after the changes (mode %v):\n%s", fi.Mode(), b)
	}
	audit, _ := os.ReadFile(filepath.Join(lab.coordDir, "audit.jsonl"))
	for _, want := range []string{`"token-added"`, `"token-revoked"`, `"tokens-reloaded"`} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("no %s in the audit log:\n%s", want, audit)
		}
	}
	if strings.Contains(string(audit), carol) || strings.Contains(string(audit), dave) {
		t.Error("a token is in the audit log")
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// waitBoardsAs is waitBoards for a coordinator that wants a user token.
func waitBoardsAs(t *testing.T, c pb.LeaseServiceClient, token string, n int) {
	t.Helper()
	eventually(t, "boards available", func() bool {
		r, err := c.ListBoards(asUser(t, token), &pb.ListBoardsRequest{})
		ready := 0
		for _, b := range r.GetBoards() {
			if b.GetStatus().String() == "EXPORTER_STATUS_AVAILABLE" {
				ready++
			}
		}
		return err == nil && ready >= n
	})
}

// asUser is a context bounded by the test that carries a user token.
func asUser(t *testing.T, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+token)
}
