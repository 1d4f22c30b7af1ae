package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Terminal safety (issue 15 item 4): the peers' words reach the user's terminal with
// their control characters made visible (ESC as ^[, BEL as ^G, C1 as \u009b, bytes that
// are not UTF-8 as \xNN); -o json keeps them exact.

// rawTerminalBytes are the bytes that would act on a terminal: C0 controls but the
// newline, DEL, and C1 controls (UTF-8 encoded or as lone bytes).
func rawTerminalBytes(s string) []string {
	var found []string
	for _, r := range s {
		if (r < 0x20 && r != '\n') || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			found = append(found, fmt.Sprintf("%U", r))
		}
	}
	if !utf8.ValidString(s) {
		found = append(found, "invalid UTF-8")
	}
	return found
}

// hostileHello announces, on a raw SupervisorLink stream (the test is the supervisor: a
// real one refuses such names in its config), a board rpi4-ok and a board whose name
// and label hold escape sequences and a newline that would forge a row of the status
// table.
func hostileHello(t *testing.T, coordAddr, name string, labels map[string]string) {
	t.Helper()
	conn, err := grpc.NewClient(coordAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := pb.NewSupervisorLinkClient(conn).Connect(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	board := func(name string, labels map[string]string) *pb.BoardInfo {
		return &pb.BoardInfo{Name: name, Labels: labels, Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE,
			Health: pb.BoardHealth_BOARD_HEALTH_GOOD, ClientEndpoint: "127.0.0.1:1"}
	}
	if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: &pb.Hello{SupervisorId: "hostile", Version: "test",
		Boards: []*pb.BoardInfo{board("rpi4-ok", map[string]string{"device": "rpi4"}), board(name, labels)}}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("the coordinator did not welcome the supervisor: %v %v", m, err)
	}
}

// TestEscapeBoardNamesInStatus: a board name with an OSC title sequence, a BEL and a
// newline followed by a forged row, and a label with a colour sequence, a C1 CSI and a
// DEL, are printed by `boardvisor status` (table and wide) on one row,
// made visible; `status -o json` gives them exactly.
func TestEscapeBoardNamesInStatus(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	name := "evil\x1b]0;owned\x07\nrpi4-99  hostile  AVAILABLE"
	labels := map[string]string{"device": "x\x1b[31mred\u009b2J\x7f"} // (protobuf strings are UTF-8)
	hostileHello(t, coordAddr, name, labels)
	leases := leaseClient(t, coordAddr)
	var names []string
	eventually(t, "rpi4-ok listed", func() bool {
		lb, err := leases.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
		names = nil
		for _, b := range lb.GetBoards() {
			names = append(names, b.GetName())
		}
		return err == nil && slices.Contains(names, "rpi4-ok")
	})
	// A coordinator that checks Hello's names at its edge (issue 15 item 3) ignores the
	// hostile board: then nothing of it can be printed, and the table must be clean.
	stored := slices.Contains(names, name)
	if !stored {
		t.Logf("the coordinator did not keep the hostile board (it checks names): boards %q", names)
	}
	for _, args := range [][]string{{"status"}, {"status", "-o", "wide"}} {
		out, err := cliStdout(coordEnv(coordAddr, ""), args...)
		if err != nil {
			t.Fatalf("boardvisor %v: %v\n%s", args, err, out)
		}
		s := string(out)
		t.Logf("boardvisor %v:\n%s", args, s)
		if raw := rawTerminalBytes(s); raw != nil {
			t.Errorf("boardvisor %v printed terminal controls %q:\n%q", args, raw, s)
		}
		if lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n"); len(lines) != 1+len(names) {
			t.Errorf("boardvisor %v printed %d lines, want the header and one row a board:\n%s", args, len(lines), s)
		}
		if !stored {
			continue
		}
		if !strings.Contains(s, "evil^[]0;owned^G rpi4-99 hostile AVAILABLE") {
			t.Errorf("boardvisor %v does not show the name made visible:\n%s", args, s)
		}
		if args[len(args)-1] == "wide" && !strings.Contains(s, `device=x^[[31mred\u009b2J^?`) {
			t.Errorf("boardvisor status -o wide does not show the label made visible:\n%s", s)
		}
	}
	out, err := cliStdout(coordEnv(coordAddr, ""), "status", "-o", "json")
	if err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if !stored {
		return
	}
	var rows []struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	wantLabel := labels["device"]
	i := slices.IndexFunc(rows, func(r struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	}) bool {
		return r.Name != "rpi4-ok"
	})
	if len(rows) != 2 || i < 0 || rows[i].Name != name || rows[i].Labels["device"] != wantLabel {
		t.Errorf("status -o json: %+v, want the name %q and label %q exactly", rows, name, wantLabel)
	}
}

// TestEscapeHookLinesInShellAndLogs: a beforeLease hook prints a line with a screen
// clear, a window-title sequence and a C1 CSI; `boardvisor shell` (its dialogue),
// `boardvisor logs -f` in the lease's shell, and `boardvisor logs --lease ID` show it made
// visible, with no control character reaching the terminal.
func TestEscapeHookLinesInShellAndLogs(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := labConfig{dir: dir, id: "lab-esc", coordAddr: coordAddr, virtual: true,
		before: `printf 'boot \033[2J\033]0;owned\007 \302\2331mdone\n'`, boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	const shown = `boot ^[[2J^[]0;owned^G \u009b1mdone`
	logsOut := filepath.Join(dir, "logs.out")
	out, err := runShell(t, coordAddr, "shell", "-l", "device=virt", "--",
		"sh", "-c", "timeout 3 "+binary+" logs -f > "+logsOut+" 2>&1; echo lease=$BOARDVISOR_LEASE")
	t.Logf("shell:\n%s", out)
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	if raw := rawTerminalBytes(out); raw != nil || !strings.Contains(out, shown) {
		t.Errorf("the shell's dialogue has terminal controls %q, or not the line made visible %q:\n%q", raw, shown, out)
	}
	lf := readFile(t, logsOut)
	if raw := rawTerminalBytes(lf); raw != nil || !strings.Contains(lf, shown) {
		t.Errorf("logs -f has terminal controls %q, or not the line made visible %q:\n%q", raw, shown, lf)
	}
	_, id, ok := strings.Cut(out, "lease=")
	if !ok {
		t.Fatalf("no lease ID in the shell's output:\n%s", out)
	}
	id = strings.TrimSpace(strings.SplitN(id, "\n", 2)[0])
	ll, err := runCLI(coordEnv(coordAddr, ""), "logs", "--lease", id)
	if err != nil {
		t.Fatalf("logs --lease %s: %v\n%s", id, err, ll)
	}
	if raw := rawTerminalBytes(ll); raw != nil || !strings.Contains(ll, shown) {
		t.Errorf("logs --lease has terminal controls %q, or not the line made visible %q:\n%q", raw, shown, ll)
	}
}
