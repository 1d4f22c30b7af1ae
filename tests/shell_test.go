package tests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// terminal runs a command on a pseudo-terminal, as a person at a shell would.
type terminal struct {
	t    *testing.T
	f    *os.File
	cmd  *exec.Cmd
	seen chan string
	done chan error
}

func openTerminal(t *testing.T, env []string, args ...string) *terminal {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	f, err := pty.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	term := &terminal{t: t, f: f, cmd: cmd, seen: make(chan string, 1000), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			term.seen <- strings.TrimRight(sc.Text(), "\r")
		}
		close(term.seen)
	}()
	go func() { term.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		f.Close()
	})
	return term
}

// expect reads lines until one equals want (lines before it are returned).
func (term *terminal) expect(want string) []string {
	term.t.Helper()
	var before []string
	deadline := time.After(wait)
	for {
		select {
		case l, ok := <-term.seen:
			if !ok {
				term.t.Fatalf("terminal closed before %q; saw:\n%s", want, strings.Join(before, "\n"))
			}
			if l == want || strings.HasSuffix(l, want) {
				return before
			}
			before = append(before, l)
		case <-deadline:
			term.t.Fatalf("no %q on the terminal; saw:\n%s", want, strings.Join(before, "\n"))
		}
	}
}

func (term *terminal) send(s string) {
	if _, err := term.f.WriteString(s); err != nil {
		term.t.Fatal(err)
	}
}

func TestShellDialogueThroughATerminal(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "after-done")
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	before := "echo 'JMP_INFO: Powering on device...'; sleep 0.2; echo 'JMP_WARN: slow flash'"
	after := "echo 'Saving logs to archive...'; read x < " + gate + "; echo done > " + marker
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, before, after, boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + coordAddr, "SHELL=/bin/sh", "PS1=board$ "}, "shell", "-l", "device=rpi4", "--duration", "5m")
	want := []string{"Connecting to exporter...", "Waiting for beforeLease hooks to complete...", "[Hook INFO] Powering on device...",
		"[Hook WARN] slow flash", "beforeLease hooks completed successfully!", "Connected to device."}
	for _, w := range want {
		if extra := term.expect(w); len(extra) > 0 {
			t.Fatalf("unexpected lines before %q: %q", w, extra)
		}
	}
	// The shell runs with the lease in its environment.
	term.send("echo board=$BOARDVISOR_BOARD\n")
	term.expect("board=rpi4-01")
	term.send("exit\n")
	term.expect("Releasing lease...")
	term.expect("afterLease hooks running (press Ctrl+C to disconnect):")
	term.expect("[Hook Output] Saving logs to archive...")
	// Ctrl+C: the client leaves, the hook goes on.
	term.send("\x03")
	term.expect("Disconnected; the afterLease hook goes on.")
	select {
	case err := <-term.done:
		if err != nil {
			t.Fatalf("shell exited with %v, want 0", err)
		}
	case <-time.After(wait):
		t.Fatal("shell did not exit after Ctrl+C")
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the afterLease hook finished before it was released: the test proves nothing")
	}
	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteString("go\n")
	g.Close()
	if err := waitExists(marker, wait); err != nil {
		t.Fatalf("the afterLease hook did not complete after the client left: %v", err)
	}
	waitBoards(t, leases, 1) // the board is AVAILABLE again
}

// The supervisor is killed (kill -9) while a user is in the lease's shell and comes back:
// the shell says so, reconnects on its own, and the lease is released as usual.
func TestShellReconnectsAfterSupervisorRestart(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	// A lab host keeps its client service on its configured address across restarts.
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, before: "echo 'JMP_INFO: up'", after: "echo 'Saving logs to archive...'",
		listen: freeAddr(t), boards: []boardSpec{{"rpi4-01", "device: rpi4"}}}.write(t)
	sup := startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + coordAddr, "SHELL=/bin/sh", "PS1=board$ "}, "shell", "-l", "device=rpi4", "--duration", "5m")
	term.expect("Connected to device.")
	sup.kill()
	term.expect("Reconnecting to exporter...")
	startSupervisor(t, "supervisor-restarted", cfg)
	term.expect("Reconnected to exporter.")
	term.send("exit\n")
	term.expect("Releasing lease...")
	term.expect("[Hook Output] Saving logs to archive...")
	term.expect("afterLease hooks completed.")
	select {
	case err := <-term.done:
		if err != nil {
			t.Fatalf("shell exited with %v, want 0", err)
		}
	case <-time.After(wait):
		t.Fatal("shell did not exit")
	}
	waitBoards(t, leases, 1)
}
