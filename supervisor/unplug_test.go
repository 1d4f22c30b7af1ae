package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/creack/pty"
)

// A USB serial console unplugged and plugged back while the board is leased: a symlink
// to a pseudo-terminal stands in for /dev/ttyUSB0 (the node goes away, then comes back
// naming a new device).
func TestSerialUnplugDuringLease(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "ttyUSB0")
	plug := func() *os.File {
		m, s, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close(); s.Close() })
		os.Remove(link)
		if err := os.Symlink(s.Name(), link); err != nil {
			t.Fatal(err)
		}
		return m
	}
	master := plug()
	con, err := serial.New(serial.Config{Name: "console", Device: link, CheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, "unplug")
	h := start(t, board.Config{Name: "rpi", Drivers: []driver.Driver{con},
		Before:   hookCfg(fmt.Sprintf("echo 'JMP_INFO: waiting'; read x < %s", g), jobs.PolicyEndLease, wait),
		Strategy: board.Strategy{Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxFailures: 3, Window: time.Minute}})
	consoleHas := func(s string) func([]connector.Event) bool {
		return func(evs []connector.Event) bool {
			var b strings.Builder
			for _, ev := range evs {
				if ev.Console != nil {
					b.Write(ev.Console.Data)
				}
			}
			return strings.Contains(b.String(), s)
		}
	}
	healthIs := func(hl jobs.Health, after int) func([]connector.Event) bool {
		return func(evs []connector.Event) bool {
			for _, ev := range evs[min(after, len(evs)):] {
				if ev.BoardStatus != nil && ev.BoardStatus.Health == hl {
					return true
				}
			}
			return false
		}
	}
	job := h.startJob("rpi")
	h.waitFor("the hook", func(evs []connector.Event) bool { return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) > 0 })
	if _, err := master.WriteString("before-unplug\r\n"); err != nil {
		t.Fatal(err)
	}
	evs := h.waitFor("bytes before the unplug", consoleHas("before-unplug"))
	os.Remove(link) // unplugged
	n := len(evs)
	evs = h.waitFor("health unknown", healthIs(jobs.HealthUnknown, n))
	n = len(evs)
	master = plug() // plugged back (a new device node)
	h.waitFor("health good again", healthIs(jobs.HealthGood, n))
	if _, err := master.WriteString("after-replug\r\n"); err != nil {
		t.Fatal(err)
	}
	h.waitFor("bytes after the replug", consoleHas("after-replug"))
	g.open(t)
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	evs = h.waitPhase(job, jobs.PhaseDone)
	var console []string
	var offset uint64
	for _, ev := range evs {
		if ev.Console != nil {
			console = append(console, strings.TrimSpace(string(ev.Console.Data)))
			if ev.JobID != job || ev.Console.Offset != offset {
				t.Fatalf("console event %v: offset %d, want %d in lease %s", ev, ev.Console.Offset, offset, job)
			}
			offset += uint64(len(ev.Console.Data))
		}
		if ev.BoardStatus != nil && ev.BoardStatus.Health == jobs.HealthBad {
			t.Fatal("an unplugged console quarantined the board")
		}
	}
	if got := strings.Join(console, "|"); got != "before-unplug|after-replug" {
		t.Fatalf("console %q: bytes before and after the unplug mixed up or lost", got)
	}
}
