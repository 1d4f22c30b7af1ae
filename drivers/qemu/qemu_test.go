package qemu_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/internal/procgroup"
	"github.com/boardvisor/boardvisor/drivers/qemu"
	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/boardvisor/boardvisor/drivers/serial"
)

// QEMU boots as a board: its firmware's output arrives through the serial console
// driver and in the recording; Off and Close leave no QEMU behind; Cycle boots again
// on the same console.
func TestQEMUBoardFirmwareOnTheConsole(t *testing.T) {
	if _, err := exec.LookPath(qemu.DefaultBinary); err != nil {
		t.Skipf("%s not installed: %v (CI installs it through .ci/run)", qemu.DefaultBinary, err)
	}
	before := runtime.NumGoroutine()
	b, err := qemu.New(qemu.Config{Name: "qemu-01"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	state := t.TempDir()
	rec, err := recording.New(recording.Options{StateDir: state, Board: "qemu-01"})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	if err := rec.StartLease("lease-q"); err != nil {
		t.Fatal(err)
	}

	d, err := serial.New(serial.Config{Device: b.Path()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var console bytes.Buffer
	out := func(p []byte) {
		mu.Lock()
		console.Write(p)
		mu.Unlock()
		if _, err := rec.Write(p); err != nil {
			t.Error(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- d.Run(ctx, out) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("console Run: %v", err)
		}
	}()
	waitFor := func(what string, count int, timeout time.Duration) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			mu.Lock()
			n := strings.Count(console.String(), what)
			text := console.String()
			mu.Unlock()
			if n >= count {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%q did not appear (%d times) on the console within %s; it shows %q", what, count, timeout, text)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	start := time.Now()
	if err := b.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !b.Running() {
		t.Fatal("not running after On")
	}
	waitFor("SeaBIOS (version ", 1, 60*time.Second)
	waitFor("No bootable device.", 1, 60*time.Second)
	t.Logf("SeaBIOS booted to %q in %s", "No bootable device.", time.Since(start).Round(time.Millisecond))

	pgid := b.Pgid()
	if err := b.Off(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := procgroup.Members(pgid); len(m) > 0 {
		t.Fatalf("QEMU's process group %d lives on after Off: %v", pgid, m)
	}
	if b.Running() {
		t.Error("running after Off")
	}

	// The console survives the power cycle: the same Run sees the second boot.
	if err := b.Cycle(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor("SeaBIOS (version ", 2, 60*time.Second)
	pgid = b.Pgid()
	select {
	case err := <-runDone:
		t.Fatalf("the console driver stopped across a power cycle: %v", err)
	default:
	}

	if err := rec.EndLease("lease-q"); err != nil {
		t.Fatal(err)
	}
	rc, err := recording.ReadLease(state, "qemu-01", "lease-q")
	if err != nil {
		t.Fatal(err)
	}
	recorded, _ := io.ReadAll(rc)
	rc.Close()
	if bytes.Count(recorded, []byte("SeaBIOS (version ")) != 2 {
		t.Errorf("the recording has %d SeaBIOS banners, want 2: %q", bytes.Count(recorded, []byte("SeaBIOS (version ")), recorded)
	}

	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("console Run: %v", err)
	}
	runDone <- nil
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if m := procgroup.Members(pgid); len(m) > 0 {
		t.Fatalf("QEMU's process group %d lives on after Close: %v", pgid, m)
	}
	if err := b.On(context.Background()); !errors.Is(err, qemu.ErrClosed) {
		t.Errorf("On after Close: %v", err)
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

// An emulator that never connects its serial port is stopped, with its whole group, at
// the start timeout or when On's context ends; one that exits at once is reported with
// its output. (A stand-in script: this runs without QEMU.)
func TestStartFailuresLeaveNothingBehind(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	hang := filepath.Join(dir, "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\necho $$ > "+pidFile+"\nsleep 1000 &\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	fail := filepath.Join(dir, "fail")
	if err := os.WriteFile(fail, []byte("#!/bin/sh\necho 'qemu-system-x86_64: -machine pc: unsupported machine type' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	check := func(err error, want string) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("On = %v, want it to contain %q", err, want)
		}
		b, rerr := os.ReadFile(pidFile)
		if rerr != nil {
			t.Fatal(rerr)
		}
		pgid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if m := procgroup.Members(pgid); len(m) > 0 {
			t.Fatalf("group %d lives on: %v", pgid, m)
		}
		os.Remove(pidFile)
	}

	b, err := qemu.New(qemu.Config{Name: "q", Binary: hang, StartTimeout: 300 * time.Millisecond, StopGrace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	check(b.On(context.Background()), "qemu board q: start: qemu did not connect its serial port within 300ms")

	b2, err := qemu.New(qemu.Config{Name: "q", Binary: hang, StartTimeout: time.Minute, StopGrace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	check(b2.On(ctx), "qemu board q: start: context deadline exceeded")

	b3, err := qemu.New(qemu.Config{Name: "q", Binary: fail})
	if err != nil {
		t.Fatal(err)
	}
	defer b3.Close()
	err = b3.On(context.Background())
	want := "qemu board q: start: qemu exited before connecting its serial port: exit status 1: qemu-system-x86_64: -machine pc: unsupported machine type"
	if err == nil || err.Error() != want {
		t.Fatalf("On = %v\nwant %s", err, want)
	}

	if _, err := qemu.New(qemu.Config{Name: "q", Binary: "/nonexistent/qemu"}); err == nil {
		t.Error("New with a missing binary succeeded")
	}
}
