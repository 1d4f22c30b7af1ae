package power_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/internal/procgroup"
	"github.com/boardvisor/boardvisor/drivers/power"
)

func newController(t *testing.T, cfg power.Config) *power.Controller {
	t.Helper()
	c, err := power.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readPid waits for the command to write its shell's pid (= its process group) to file.
func readPid(t *testing.T, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// A command that hangs, and ignores SIGTERM, is killed with everything it started at its
// timeout, and the error says so.
func TestHangingCommandIsKilledAtItsTimeout(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	c := newController(t, power.Config{
		Board:     "rpi4-01",
		On:        `echo $$ > ` + pidFile + `; trap "" TERM; sleep 1000 & sleep 1000`,
		Timeout:   300 * time.Millisecond,
		KillGrace: 200 * time.Millisecond,
	})
	start := time.Now()
	err := c.On(context.Background())
	elapsed := time.Since(start)
	want := `power on for board rpi4-01: command "echo $$ > ` + pidFile + `; trap \"\" TERM; sleep 1000 & sleep 1000" timed out after 300ms (killed)`
	if err == nil || err.Error() != want {
		t.Fatalf("On = %v\nwant %s", err, want)
	}
	var cerr *power.CommandError
	if !errors.As(err, &cerr) || !cerr.TimedOut || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %#v: want a timed-out *CommandError wrapping context.DeadlineExceeded", err)
	}
	if elapsed < 300*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("On took %s, want the 300ms timeout + 200ms grace", elapsed)
	}
	pgid := readPid(t, pidFile)
	if m := procgroup.Members(pgid); len(m) > 0 {
		t.Fatalf("process group %d still has live members %v", pgid, m)
	}
	if err := syscall.Kill(-pgid, 0); err == nil {
		// Zombies waiting for init to reap them still count for kill(2); members does not.
		t.Logf("process group %d: only zombies left", pgid)
	}
}

func TestCancelKillsTheCommand(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	c := newController(t, power.Config{Board: "b", Off: `echo $$ > ` + pidFile + `; exec sleep 1000`, Timeout: time.Minute, KillGrace: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := c.Off(ctx)
	if err == nil || !strings.Contains(err.Error(), "interrupted (killed): context deadline exceeded") {
		t.Fatalf("Off = %v", err)
	}
	if m := procgroup.Members(readPid(t, pidFile)); len(m) > 0 {
		t.Fatalf("live members %v after the cancel", m)
	}
}

// A failing command's error carries its exit status and the end of its output, on one
// line, bounded.
func TestFailureCarriesExitStatusAndOutputTail(t *testing.T) {
	c := newController(t, power.Config{
		Board: "rpi4-01",
		On:    `for i in $(seq 1 500); do echo "pdu: line $i"; done; echo "pdu: outlet 3: no such outlet" >&2; exit 3`,
	})
	err := c.On(context.Background())
	if err == nil {
		t.Fatal("On succeeded")
	}
	msg := err.Error()
	prefix := `power on for board rpi4-01: command "for i in`
	if !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, `" failed: exit status 3: ...`) {
		t.Errorf("error %q: want %q... failed: exit status 3: ...", msg, prefix)
	}
	if !strings.HasSuffix(msg, "pdu: line 499 | pdu: line 500 | pdu: outlet 3: no such outlet") {
		t.Errorf("error %q does not end with the output's last lines", msg)
	}
	if strings.Contains(msg, "pdu: line 1 ") || len(msg) > power.OutputTail+300 {
		t.Errorf("error is %d bytes: the output is not bounded", len(msg))
	}
	if strings.ContainsAny(msg, "\n\r") {
		t.Errorf("error %q is not one line", msg)
	}
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("error does not carry exit code 3: %#v", err)
	}
}

func TestEnvironmentAndSuccess(t *testing.T) {
	c := newController(t, power.Config{Board: "b1", On: `test "$BOARD_NAME" = b1 && test "$POWER_ACTION" = on && test "$EXTRA" = 1`, Env: []string{"EXTRA=1"}})
	if err := c.On(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Cycle without a cycle command: off, a pause, on.
func TestCycleFallsBackToOffThenOn(t *testing.T) {
	log := filepath.Join(t.TempDir(), "log")
	c := newController(t, power.Config{Board: "b", On: "echo on >> " + log, Off: "echo off >> " + log, CycleDelay: 100 * time.Millisecond})
	start := time.Now()
	if err := c.Cycle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("Cycle took %s, want at least the 100ms cycle delay", d)
	}
	if b, _ := os.ReadFile(log); string(b) != "off\non\n" {
		t.Errorf("commands run: %q, want off then on", b)
	}

	only := newController(t, power.Config{Board: "b", On: "true"})
	if err := only.Cycle(context.Background()); !errors.Is(err, power.ErrNotConfigured) {
		t.Errorf("Cycle with only an on command: %v", err)
	}
	if err := only.Off(context.Background()); err == nil || err.Error() != "power off for board b: not configured" {
		t.Errorf("Off without an off command: %v", err)
	}
	if _, err := power.New(power.Config{Board: "b"}); err == nil {
		t.Error("New without commands succeeded")
	}
}

// What a command leaves running in its group dies with it, and no goroutine is left.
func TestNothingOutlivesACommand(t *testing.T) {
	before := runtime.NumGoroutine()
	pidFile := filepath.Join(t.TempDir(), "pid")
	c := newController(t, power.Config{Board: "b", On: `echo $$ > ` + pidFile + `; sleep 1000 >/dev/null 2>&1 &`})
	for range 3 {
		if err := c.On(context.Background()); err != nil {
			t.Fatal(err)
		}
		pgid := readPid(t, pidFile)
		deadline := time.Now().Add(2 * time.Second)
		for procgroup.Alive(pgid) {
			if time.Now().After(deadline) {
				t.Fatalf("the background sleep of group %d outlived its command", pgid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// A hung command whose descendant escaped into a session of its own and keeps the
	// output pipe open: the command still ends at its timeout (the test then kills the
	// escaped process itself, by its pid).
	escaped := filepath.Join(t.TempDir(), "escaped")
	h := newController(t, power.Config{Board: "b", On: `setsid sh -c 'echo $$ > ` + escaped + `; exec sleep 1000' & sleep 1000`, Timeout: 200 * time.Millisecond, KillGrace: 50 * time.Millisecond})
	start := time.Now()
	err := h.On(context.Background())
	if pid, rerr := os.ReadFile(escaped); rerr == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
			defer syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err == nil {
		t.Fatal("want a timeout")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("On took %s: an escaped descendant holding the output pipe must not hang it", d)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
