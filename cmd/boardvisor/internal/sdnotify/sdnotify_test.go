package sdnotify

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listen makes a datagram socket as systemd's and points NOTIFY_SOCKET at it.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

func TestNotifyReachesTheSocket(t *testing.T) {
	c := listen(t)
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != "READY=1" {
		t.Fatalf("got %q, want READY=1", got)
	}
	if err := Stopping(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, c); got != "STOPPING=1" {
		t.Fatalf("got %q, want STOPPING=1", got)
	}
}

func TestNoSocketNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if WatchdogInterval() != 0 {
		t.Fatal("a watchdog without WATCHDOG_USEC")
	}
}

// The watchdog is pinged while the probe answers, and not once it fails.
func TestWatchdogFollowsTheProbe(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "40000") // 40ms: pings every 20ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	var sick atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Watchdog(ctx, func(context.Context) error {
			if sick.Load() {
				return errors.New("stuck")
			}
			return nil
		})
	}()
	if got := read(t, c); !strings.HasPrefix(got, "WATCHDOG=1") {
		t.Fatalf("got %q, want WATCHDOG=1", got)
	}
	sick.Store(true)
	// Drain what was sent before the probe failed, then nothing more comes.
	time.Sleep(100 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	for {
		if _, err := c.Read(make([]byte, 64)); err != nil {
			break
		}
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("pinged (%d bytes) while the probe fails", n)
	}
	cancel()
	<-done
}

func TestWatchdogForAnotherPid(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "1000000")
	t.Setenv("WATCHDOG_PID", "1")
	if WatchdogInterval() != 0 {
		t.Fatal("a watchdog meant for pid 1 applies to this process")
	}
}
