package tests

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/metadata"
)

// A lease's whole story from the coordinator, with the real binaries: the afterLease
// dialogue of `lease release --follow` on a terminal, `logs -f --lease` from anywhere
// (resumed after kill -9 without a gap or a double), who may read a lease's log, the
// console from the coordinator, `lease show`, and retention.

const (
	aliceTok = "tok-alice-4f1c"
	bobTok   = "tok-bob-9a2e"
	rootTok  = "tok-root-77d0"
)

// storyFarm is a coordinator with client tokens (alice, bob, root the admin) and one
// supervisor with one board.
type storyFarm struct {
	coordAddr, coordState, labState string
	coord                           *proc
	leases                          pb.LeaseServiceClient
}

func startStoryFarm(t *testing.T, before, after string, virtual bool, coordFlags ...string) *storyFarm {
	t.Helper()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "client-tokens")
	if err := os.WriteFile(tokens, []byte("alice "+aliceTok+"\nbob "+bobTok+"\nroot "+rootTok+" admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &storyFarm{coordAddr: freeAddr(t), coordState: filepath.Join(dir, "coord"), labState: filepath.Join(dir, "lab", "state")}
	f.coord = startCoordinator(t, f.coordAddr, f.coordState, append([]string{"--client-tokens", tokens}, coordFlags...)...)
	cfg := labConfig{dir: filepath.Join(dir, "lab"), id: "lab-1", coordAddr: f.coordAddr, before: before, after: after, virtual: virtual,
		boards: []boardSpec{{"rpi4-01", "device: rpi4"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	f.leases = leaseClient(t, f.coordAddr)
	eventually(t, "the board available", func() bool {
		r, err := f.leases.ListBoards(as(ctxT(t), aliceTok), &pb.ListBoardsRequest{})
		return err == nil && len(r.GetBoards()) == 1 && r.GetBoards()[0].GetStatus().String() == "EXPORTER_STATUS_AVAILABLE"
	})
	return f
}

// letHookGo lets a hook blocked reading the FIFO gate go on. Unlike a blocking open, it
// is bounded: a hook that is not (or no longer) waiting there fails the test.
func letHookGo(t *testing.T, gate string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		g, err := os.OpenFile(gate, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			g.WriteString("go\n")
			g.Close()
			return
		}
		if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
			t.Fatalf("no hook waits on its gate %s: %v", gate, err)
		}
		time.Sleep(10 * time.Millisecond) // a reader opening the FIFO cannot be awaited
	}
}

func as(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// readyLease makes a lease for alice with the CLI and waits until it is READY.
func (f *storyFarm) readyLease(t *testing.T) string {
	t.Helper()
	out, err := bvAs(f.coordAddr, aliceTok, "lease", "create", "--board", "rpi4-01", "--duration", "10m")
	if err != nil {
		t.Fatalf("lease create: %v\n%s", err, out)
	}
	id := createdLease(out)["lease"]
	w, err := watchLease(as(ctxT(t), aliceTok), f.leases, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	return id
}

// waitEnded waits until the lease has ended.
func (f *storyFarm) waitEnded(t *testing.T, id string) {
	t.Helper()
	w, err := watchLease(as(ctxT(t), aliceTok), f.leases, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.until("ended", leaseEnded); err != nil {
		t.Fatal(err)
	}
}

// logLines strips the positions `logs --show-position` starts lines with, and the
// lines' times, keeping what a user reads: source, severity, text.
func logLines(out string) (lines, positions []string) {
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.SplitN(l, " ", 3)
		if len(f) < 3 {
			continue
		}
		positions = append(positions, f[0])
		lines = append(lines, strings.Join(strings.Fields(f[2]), " "))
	}
	return lines, positions
}

func TestLeaseReleaseFollowAndLogsFromAnywhere(t *testing.T) {
	// The afterLease hook prints a line, waits on a gate, prints another, waits on a
	// second gate, prints a last one: each line reaches the readers while the hook runs
	// (no phase change carries it: only the event path's wake-up).
	gate, gate2 := ptyFifo(t), ptyFifo(t)
	after := "echo 'Saving logs to archive...'; read x < " + gate + "; echo 'JMP_WARN: archive is slow'; read x < " + gate2 + "; echo 'archive done'"
	f := startStoryFarm(t, "echo 'JMP_INFO: Powering on device...'", after, false)
	id := f.readyLease(t)

	// Another user may not read alice's lease's log; an admin may.
	if out, err := bvAs(f.coordAddr, bobTok, "logs", "--lease", id); err == nil || !strings.Contains(out, "only its holder or an admin may read its log") {
		t.Fatalf("bob reads alice's lease's log: %v\n%s", err, out)
	}
	if out, err := bvAs(f.coordAddr, rootTok, "logs", "--lease", id); err != nil || !strings.Contains(out, "BEFORE_LEASE_HOOK INFO  Powering on device...") {
		t.Fatalf("an admin reads alice's lease's log: %v\n%s", err, out)
	}
	audit, _ := os.ReadFile(filepath.Join(f.coordState, "audit.jsonl"))
	if !strings.Contains(string(audit), "read the log of a lease held by alice") || !strings.Contains(string(audit), "bob at ") {
		t.Fatalf("bob's refusal is not in the coordinator's audit log:\n%s", audit)
	}

	// alice releases it from another terminal and follows the afterLease hook.
	term := openTerminal(t, coordEnv(f.coordAddr, aliceTok), "lease", "release", id, "--follow")
	term.expect("Releasing lease...")
	if extra := term.expect("afterLease hooks running (press Ctrl+C to disconnect):"); len(extra) > 0 {
		t.Fatalf("lines before the afterLease dialogue: %q", extra)
	}
	if extra := term.expect("[Hook Output] Saving logs to archive..."); len(extra) > 0 {
		t.Fatalf("lines before the hook's first line: %q", extra)
	}

	// Mid-hook, alice follows the lease's log from elsewhere (no supervisor address):
	// the earlier lines once, then it waits for more.
	t.Setenv("BOARDVISOR_COORDINATOR", f.coordAddr)
	t.Setenv("BOARDVISOR_USER_TOKEN", aliceTok)
	follower := start(t, "logs-follower", "logs", "-f", "--lease", id, "--show-position")
	follower.waitLine("AFTER_LEASE_HOOK", "Saving logs to archive...")
	if n := follower.countLines("Powering on device..."); n != 1 {
		t.Fatalf("the beforeLease line shown %d times, want once:\n%s", n, follower.output())
	}
	follower.kill() // as a user's terminal that went away; the hook still waits
	firstPart, positions := logLines(follower.output())
	last := positions[len(positions)-1]

	letHookGo(t, gate) // the hook goes on while nobody follows from elsewhere
	term.expect("[Hook WARN] archive is slow")

	// Restarted with its last position while the hook still runs, the follower shows
	// the line it missed, then the later ones live, without a gap or a double: both
	// parts together are the whole stored log.
	again := start(t, "logs-follower-again", "logs", "-f", "--lease", id, "--show-position", "--after", last)
	again.waitLine("AFTER_LEASE_HOOK", "archive is slow")
	letHookGo(t, gate2)
	again.waitLine("AFTER_LEASE_HOOK", "archive done")
	term.expect("[Hook Output] archive done")
	term.expect("afterLease hooks completed.")
	select {
	case err := <-term.done:
		if err != nil {
			t.Fatalf("lease release --follow exited with %v, want 0", err)
		}
	case <-time.After(wait):
		t.Fatal("lease release --follow did not exit after the lease ended")
	}
	select {
	case <-again.done:
		if again.err != nil {
			t.Fatalf("logs -f --after exited with %v:\n%s", again.err, again.output())
		}
	case <-time.After(wait):
		t.Fatal("logs -f did not exit after the lease ended")
	}
	out := again.output()
	secondPart, _ := logLines(out)
	whole, err := bvAs(f.coordAddr, aliceTok, "logs", "--lease", id, "--show-position")
	if err != nil {
		t.Fatalf("logs --lease after the end: %v\n%s", err, whole)
	}
	all, _ := logLines(whole)
	joined := append(append([]string{}, firstPart...), secondPart...)
	if strings.Join(joined, "\n") != strings.Join(all, "\n") {
		t.Fatalf("followed log (killed and resumed) differs from the stored log:\nfollowed:\n%s\nstored:\n%s", strings.Join(joined, "\n"), strings.Join(all, "\n"))
	}
	for _, want := range []string{"AFTER_LEASE_HOOK WARN archive is slow", "SYSTEM INFO lease DONE", "SYSTEM INFO lease ended DONE by alice: released by"} {
		if !strings.Contains(strings.Join(secondPart, "\n"), want) {
			t.Errorf("the resumed follower lacks %q:\n%s", want, out)
		}
	}

	// The timeline.
	show, err := bvAs(f.coordAddr, aliceTok, "lease", "show", id)
	if err != nil {
		t.Fatalf("lease show: %v\n%s", err, show)
	}
	for _, want := range []string{"holder alice", "BEFORE_LEASE", "READY", "AFTER_LEASE", "DONE", "beforeLease  ok", "afterLease   ok", "(DONE) by alice: released by"} {
		if !strings.Contains(show, want) {
			t.Errorf("lease show lacks %q:\n%s", want, show)
		}
	}
	t.Logf("lease show:\n%s\nlogs:\n%s", show, whole)
	js, err := bvAs(f.coordAddr, rootTok, "lease", "show", id, "-o", "json")
	if err != nil || !strings.Contains(js, `"outcome": "ok"`) || !strings.Contains(js, `"by": "alice"`) {
		t.Errorf("lease show -o json: %v\n%s", err, js)
	}
	ym, err := bvAs(f.coordAddr, aliceTok, "lease", "show", id, "-o", "yaml")
	if err != nil || !strings.Contains(ym, "hook: afterLease") || !strings.Contains(ym, "lines: 3") {
		t.Errorf("lease show -o yaml: %v\n%s", err, ym)
	}
}

// Ctrl+C in `lease release --follow` disconnects; the afterLease hook goes on.
func TestLeaseReleaseFollowCtrlCLeavesTheHookRunning(t *testing.T) {
	gate := ptyFifo(t)
	marker := filepath.Join(filepath.Dir(gate), "after-done")
	f := startStoryFarm(t, "", "echo 'Saving logs to archive...'; read x < "+gate+"; echo done > "+marker, false)
	id := f.readyLease(t)
	term := openTerminal(t, coordEnv(f.coordAddr, aliceTok), "lease", "release", id, "--follow")
	term.expect("[Hook Output] Saving logs to archive...")
	term.send("\x03")
	term.expect("Disconnected; the afterLease hook goes on.")
	select {
	case err := <-term.done:
		if err != nil {
			t.Fatalf("exit %v after Ctrl+C, want 0", err)
		}
	case <-time.After(wait):
		t.Fatal("no exit after Ctrl+C")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the hook finished before the test let it: the test proves nothing")
	}
	letHookGo(t, gate)
	if err := waitExists(marker, wait); err != nil {
		t.Fatalf("the afterLease hook did not go on after the client left: %v", err)
	}
	f.waitEnded(t, id)
}

// The console printed from the coordinator is the lease's recording on the lab host,
// byte for byte.
func TestLeaseConsoleFromTheCoordinatorEqualsTheRecording(t *testing.T) {
	f := startStoryFarm(t, "", "", true)
	out, err := runCLI(coordEnv(f.coordAddr, aliceTok), "shell", "--board", "rpi4-01", "--duration", "5m", "--", "sh", "-c",
		binary+` power cycle && timeout 3 `+binary+` console > /dev/null; echo "lease=$BOARDVISOR_LEASE"`)
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	id := out[strings.LastIndex(out, "lease=")+len("lease="):]
	id = strings.TrimSpace(id[:strings.IndexByte(id, '\n')])
	f.waitEnded(t, id)
	rec, err := cliStdout(nil, "logs", "--console", "--lease", id, "--state-dir", f.labState)
	if err != nil || !strings.Contains(string(rec), "login:") {
		t.Fatalf("the recording on the lab host: %v\n%q", err, rec)
	}
	var got []byte
	eventually(t, "the coordinator's console of the lease equal to the recording", func() bool {
		got, err = cliStdout(coordEnv(f.coordAddr, aliceTok), "logs", "--lease", id, "--console")
		return err == nil && string(got) == string(rec)
	})
	t.Logf("%d console bytes of lease %s, the same at the coordinator and on the lab host", len(got), id)
}

// Retention removes an ended lease's log past its age, not one within it.
func TestLeaseLogRetention(t *testing.T) {
	const retention = 5 * time.Second
	f := startStoryFarm(t, "echo 'JMP_INFO: up'", "", false, "--log-retention", retention.String(), "--log-prune-interval", "100ms")
	old := f.readyLease(t)
	if out, err := bvAs(f.coordAddr, aliceTok, "lease", "release", old); err != nil {
		t.Fatalf("release: %v %s", err, out)
	}
	f.waitEnded(t, old)
	time.Sleep(3 * time.Second) // the age between the two leases' ends: nothing to await
	recent := f.readyLease(t)
	if out, err := bvAs(f.coordAddr, aliceTok, "lease", "release", recent); err != nil {
		t.Fatalf("release: %v %s", err, out)
	}
	f.waitEnded(t, recent)
	recentEnd := time.Now()
	eventually(t, "the old lease's log removed", func() bool {
		out, err := bvAs(f.coordAddr, aliceTok, "logs", "--lease", old)
		return err != nil && strings.Contains(out, "was removed on") && strings.Contains(out, "by the coordinator's retention")
	})
	out, err := bvAs(f.coordAddr, aliceTok, "logs", "--lease", recent)
	if age := time.Since(recentEnd); age < retention {
		if err != nil || !strings.Contains(out, "BEFORE_LEASE_HOOK INFO  up") {
			t.Fatalf("the recent lease's log, within its age, is gone: %v\n%s", err, out)
		}
	} else {
		t.Logf("the machine is too slow to check that a log within its age stays: the recent lease is %s old", age)
	}
	db := openCoordinatorDB(t, f.coordState)
	var n int
	if err := db.QueryRowContext(ctxT(t), `SELECT COUNT(*) FROM events WHERE job_id = $1`, old).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d events of the old lease left (%v)", n, err)
	}
	show, err := bvAs(f.coordAddr, aliceTok, "lease", "show", old)
	if err != nil || !strings.Contains(show, "No timeline: the log of lease") {
		t.Fatalf("lease show of a lease whose log was removed: %v\n%s", err, show)
	}
	f.coord.waitLine("lease logs removed by retention")
}

// A follower outlives a coordinator restart (kill -9): it asks again from the last
// entry it printed, and its output is the whole stored log, once.
func TestLogsFollowAcrossCoordinatorRestart(t *testing.T) {
	gate, gate2 := ptyFifo(t), ptyFifo(t)
	after := "echo 'part one'; read x < " + gate + "; echo 'part two'; read x < " + gate2 + "; echo 'part three'"
	f := startStoryFarm(t, "", after, false)
	id := f.readyLease(t)
	if out, err := bvAs(f.coordAddr, aliceTok, "lease", "release", id); err != nil {
		t.Fatalf("release: %v %s", err, out)
	}
	t.Setenv("BOARDVISOR_COORDINATOR", f.coordAddr)
	t.Setenv("BOARDVISOR_USER_TOKEN", aliceTok)
	follower := start(t, "logs-follower", "logs", "-f", "--lease", id)
	follower.waitLine("AFTER_LEASE_HOOK", "part one")
	f.coord.kill()
	letHookGo(t, gate) // "part two" waits in the supervisor's outbox
	f.coord = startCoordinator(t, f.coordAddr, f.coordState, "--client-tokens", filepath.Join(filepath.Dir(f.coordState), "client-tokens"))
	follower.waitLine("AFTER_LEASE_HOOK", "part two")
	letHookGo(t, gate2)
	select {
	case <-follower.done:
		if follower.err != nil {
			t.Fatalf("logs -f exited with %v:\n%s", follower.err, follower.output())
		}
	case <-time.After(wait):
		t.Fatalf("logs -f did not end with the lease:\n%s", follower.output())
	}
	whole, err := bvAs(f.coordAddr, aliceTok, "logs", "--lease", id)
	if err != nil {
		t.Fatalf("logs --lease: %v\n%s", err, whole)
	}
	if follower.output() != whole {
		t.Fatalf("followed across the restart:\n%s\nstored:\n%s", follower.output(), whole)
	}
	if !strings.Contains(whole, "part three") || !strings.Contains(whole, "lease ended DONE by alice") {
		t.Fatalf("stored log incomplete:\n%s", whole)
	}
}
