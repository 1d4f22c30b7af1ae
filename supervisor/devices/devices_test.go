package devices

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/hashicorp/go-hclog"
)

// The recording follows the console events' own lease tags, whatever order the
// transitions reach the outbox in: the board actor tags a chunk by the phase it last
// heard, and a chunk read just before a lease's transition can reach the outbox just
// after it. Cut on transitions (as before), the recording put such a chunk in another
// file than the event named, and the lease's recording and its console at the
// coordinator differed.
func TestRecordingFollowsTheConsoleEventsLease(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, "stateDir: %s\nboards:\n  - name: b1\n    drivers: {virtual: {}}\n", dir))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Build(cfg, hclog.NewNullLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	const job = "5f0c2a8e-1d1b-4d4e-9c8f-1a2b3c4d5e6f"
	console := func(job, data string) connector.Event {
		return connector.Event{Board: "b1", JobID: job, Console: &connector.Console{Source: jobs.SourceDriver, Data: []byte(data)}}
	}
	transition := func(from, to jobs.Phase) connector.Event {
		return connector.Event{Board: "b1", JobID: job, Transition: &connector.Transition{From: from, To: to}}
	}
	var want []byte
	for _, ev := range []connector.Event{
		console("", "board-before "),
		transition(jobs.PhaseStarting, jobs.PhaseBeforeLease),
		console("", "late-board "), // read before the board heard of BEFORE_LEASE
		console(job, "lease-1 "),
		console(job, "lease-2 "),
		transition(jobs.PhaseAfterLease, jobs.PhaseReleasing),
		console(job, "late-lease "), // read before the board heard of RELEASING
		console("", "board-after"),
	} {
		if ev.Console != nil && ev.JobID == job {
			want = append(want, ev.Console.Data...)
		}
		m.Sink(ev)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	rc, err := recording.ReadLease(dir, "b1", job)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("lease recording %q, want the bytes its events carried %q", got, want)
	}
}

// Emulated boards keep their run directories under the state directory, and what an
// earlier process left there is removed when the devices are built.
func TestQEMURunDirectoriesLiveUnderTheStateDir(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("qemu-system-x86_64 is missing: .ci/run should have installed qemu-system-x86")
		}
		t.Skip("qemu-system-x86_64 is not installed")
	}
	dir := t.TempDir()
	stale := filepath.Join(dir, QEMURunDir, "old-board")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, "stateDir: %s\nboards:\n  - name: q1\n    drivers: {qemu: {}}\n  - name: a-board-with-a-rather-long-name-of-forty-five\n    drivers: {qemu: {}}\n", dir))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Build(cfg, hclog.NewNullLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale run directory %s is still there (%v)", stale, err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, QEMURunDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("run directories %v, want one per emulated board", entries)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, QEMURunDir)); len(entries) != 0 {
		t.Errorf("run directories left after Close: %v", entries)
	}
}

// fakeConsole records what a board tells its console about being attended.
type fakeConsole struct{ attended []bool }

func (f *fakeConsole) SetAttended(on bool) { f.attended = append(f.attended, on) }

// A console is attended while a client follows it, and for AttendAfterWrite after each
// write; then it is not.
func TestAttendedRules(t *testing.T) {
	f := &fakeConsole{}
	b := &Board{Name: "b1", subs: map[chan []byte]struct{}{}, attend: f}
	t.Cleanup(func() {
		b.mu.Lock()
		b.closed = true
		if b.attendTimer != nil {
			b.attendTimer.Stop()
		}
		b.mu.Unlock()
	})
	last := func() bool { return f.attended[len(f.attended)-1] }
	t0 := time.Now()
	b.mu.Lock()
	b.decideAttended(t0)
	if last() {
		t.Error("attended with nobody following or typing")
	}
	ch := make(chan []byte)
	b.subs[ch] = struct{}{}
	b.decideAttended(t0)
	if !last() {
		t.Error("not attended while followed")
	}
	delete(b.subs, ch)
	b.decideAttended(t0)
	if last() {
		t.Error("attended after the follower left")
	}
	b.lastWrite = t0
	b.decideAttended(t0.Add(AttendAfterWrite - time.Millisecond))
	if !last() {
		t.Error("not attended just after a write")
	}
	b.decideAttended(t0.Add(AttendAfterWrite))
	if last() {
		t.Errorf("still attended %s after the last write", AttendAfterWrite)
	}
	if b.attendTimer == nil {
		t.Error("no timer to end the attended time after a write")
	}
	b.mu.Unlock()
}

// The exporter's console (what `boardvisor console` uses) makes a console attended
// like console.stream and console.write do: while a client is attached, and after each
// key it types, so that the echo is read and forwarded at once.
func TestExporterConsoleIsAttended(t *testing.T) {
	m := buildBoards(t, "  - name: b1\n    drivers: {virtual: {}}\n")
	b := m.Board("b1")
	d, ok := b.attend.(interface{ Attended() bool })
	if !ok {
		t.Fatalf("the board's console %T cannot say whether it is attended", b.attend)
	}
	if d.Attended() {
		t.Fatal("attended before anyone attached or typed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.AttachConsole(ctx, "b1", func([]byte) error { return nil }) }()
	deadline := time.Now().Add(30 * time.Second)
	for !d.Attended() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // AttachConsole gives no sign that it is attached
	}
	if !d.Attended() {
		t.Error("not attended while a client is attached")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("AttachConsole: %v", err)
	}
	if d.Attended() {
		t.Error("still attended after the client left (and typed nothing)")
	}
	// The console is not open (no driver actor runs it): the write fails, but the key
	// was typed, so the answer is awaited at once.
	_, _ = m.WriteConsole("b1", []byte("x"))
	if !d.Attended() {
		t.Error("not attended after a key was typed through the exporter")
	}
}

// buildBoards builds the devices of a config with these boards (YAML list items) and a
// state directory of the test's, closed when the test ends.
func buildBoards(t *testing.T, boards string) *Manager {
	t.Helper()
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, "stateDir: %s\nboards:\n%s", t.TempDir(), boards))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Build(cfg, hclog.NewNullLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}
