package devices

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// A console watcher is fed as the console is read, not through the outbox's sinks: what
// the board prints reaches a client attached to its console with no Sink call at all,
// and only what was read after the client attached.
func TestWatchersAreFedAsTheConsoleIsRead(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close(); slave.Close() })
	// Raw, so that what the board prints reaches the console as written.
	if tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS); err == nil {
		tio.Lflag &^= unix.ECHO | unix.ICANON
		tio.Oflag &^= unix.OPOST
		unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, tio)
	}
	m := buildBoards(t, fmt.Sprintf("  - name: b1\n    drivers: {serial: {device: %s}}\n", slave.Name()))
	b := m.Board("b1")
	if len(b.Drivers) != 1 {
		t.Fatalf("board has %d drivers, want its console", len(b.Drivers))
	}
	// The board actor's side of the console: what it reads, in order.
	var mu sync.Mutex
	var read strings.Builder
	readCh := make(chan struct{}, 64)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() {
		runDone <- b.Drivers[0].Run(ctx, func(p []byte) {
			mu.Lock()
			read.Write(p)
			mu.Unlock()
			readCh <- struct{}{}
		})
	}()
	t.Cleanup(func() { cancel(); <-runDone })
	readUpTo := func(s string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			mu.Lock()
			ok := strings.Contains(read.String(), s)
			mu.Unlock()
			if ok {
				return
			}
			select {
			case <-readCh:
			case <-deadline:
				t.Fatalf("the console never read %q", s)
			}
		}
	}
	// Printed and read before anyone attached.
	for {
		if _, err := master.Write([]byte("before\n")); err != nil {
			t.Fatal(err)
		}
		// The console may open the device after the first write: write until it reads.
		select {
		case <-readCh:
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	readUpTo("before")
	got := make(chan []byte, 64)
	attachCtx, detach := context.WithCancel(context.Background())
	attached := make(chan error, 1)
	go func() {
		attached <- m.AttachConsole(attachCtx, "b1", func(p []byte) error { got <- append([]byte(nil), p...); return nil })
	}()
	t.Cleanup(func() { detach(); <-attached })
	deadline := time.Now().Add(30 * time.Second)
	for {
		b.mu.Lock()
		n := len(b.subs)
		b.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("AttachConsole never attached")
		}
		time.Sleep(time.Millisecond) // AttachConsole gives no sign that it is attached
	}
	if _, err := master.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	timeout := time.After(30 * time.Second)
	for !strings.Contains(seen.String(), "after\n") {
		select {
		case p := <-got:
			seen.Write(p)
		case <-timeout:
			t.Fatalf("the watcher got %q, never %q (Sink was never called: only the tap feeds it)", seen.String(), "after\n")
		}
	}
	if strings.Contains(seen.String(), "before") {
		t.Fatalf("the watcher got %q, read before it attached", seen.String())
	}
}
