package diskspace_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs to fill (%v): run as root, or in a container with CAP_SYS_ADMIN", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func fill(t *testing.T, dir string) (string, error) {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("ballast-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var last error
	for n := len(buf); n > 0; n /= 2 {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				last = err
				break
			}
		}
	}
	return path, last
}

func waitFor(t *testing.T, m *diskspace.Monitor, what string, ok func() bool) {
	t.Helper()
	for {
		ch := m.Changed()
		if ok() {
			return
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("the monitor never says %s", what)
		}
	}
}

func TestIsFull(t *testing.T) {
	for err, want := range map[error]bool{
		&fs.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}:       true,
		fmt.Errorf("outbox: %w", &fs.PathError{Err: syscall.EDQUOT}):     true,
		&fs.PathError{Op: "write", Path: "x", Err: syscall.EIO}:          false,
		errors.New("no space left on device (a string is not an errno)"): false,
		nil: false,
	} {
		if got := diskspace.IsFull(err); got != want {
			t.Errorf("IsFull(%v) = %v, want %v", err, got, want)
		}
	}
}

// The reserve is made at Open, released by the first full-disk failure (the space it
// frees lets writes go on), and made again once space returns; the state changes are
// logged once each, and a failure that goes on is logged at most once per LogEvery.
func TestReserveReleasedOnENOSPCAndRecreated(t *testing.T) {
	dir := mountTmpfs(t, 4<<20)
	var log lockedBuf
	m, err := diskspace.Open(diskspace.Options{Dir: dir, ReserveBytes: 512 << 10, LowBytes: 256 << 10, Poll: 10 * time.Millisecond,
		LogEvery: 300 * time.Millisecond, Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	reserve := filepath.Join(dir, diskspace.ReserveName)
	var st unix.Stat_t
	if err := unix.Stat(reserve, &st); err != nil || st.Blocks*512 < 512<<10 {
		t.Fatalf("reserve: %v, %d bytes allocated", err, st.Blocks*512)
	}
	ballast, werr := fill(t, dir)
	if !diskspace.IsFull(werr) {
		t.Fatalf("filling: %v", werr)
	}
	waitFor(t, m, "low", m.Low)
	if m.Full() {
		t.Fatal("full before any write failed")
	}
	if m.Failed(errors.New("some I/O error")) || m.Full() {
		t.Fatal("an I/O error taken for a full disk")
	}
	if !m.Failed(werr) || !m.Full() {
		t.Fatal("ENOSPC not taken for a full disk")
	}
	if _, err := os.Stat(reserve); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reserve still there after the first ENOSPC: %v", err)
	}
	if free, _ := diskspace.Free(dir); free < 512<<10 {
		t.Fatalf("%d bytes free after releasing a 512 KiB reserve", free)
	}
	for i := 0; i < 1000; i++ {
		m.Failed(werr)
	}
	time.Sleep(400 * time.Millisecond) // past LogEvery: nothing to await
	m.Failed(werr)
	if n := strings.Count(log.String(), "state directory full"); n != 1 {
		t.Fatalf("%d lines saying the directory is full, want 1:\n%s", n, log.String())
	}
	if n := strings.Count(log.String(), "state directory still full"); n != 1 {
		t.Fatalf("%d lines saying it is still full after LogEvery, want 1:\n%s", n, log.String())
	}
	os.Remove(ballast)
	waitFor(t, m, "space again", func() bool { return !m.Full() && !m.Low() })
	if err := unix.Stat(reserve, &st); err != nil || st.Blocks*512 < 512<<10 {
		t.Fatalf("reserve not made again: %v, %d bytes allocated", err, st.Blocks*512)
	}
	if !strings.Contains(log.String(), "state directory has space again") {
		t.Fatalf("recovery not logged:\n%s", log.String())
	}
	if fulls, failures := m.Stats(); fulls != 1 || failures != 1002 {
		t.Fatalf("stats %d %d", fulls, failures)
	}
}

// A nil Monitor is never full and takes reports.
func TestNilMonitor(t *testing.T) {
	var m *diskspace.Monitor
	if m.Full() || m.Low() || !m.Failed(syscall.ENOSPC) || m.Changed() != nil || m.Close() != nil {
		t.Fatal("nil monitor")
	}
}

// Free space held inside a file (an outbox's free pages) counts for leaving the full
// state, not for the reserve nor for the low state.
func TestReclaimableSpaceEndsTheFullState(t *testing.T) {
	dir := mountTmpfs(t, 4<<20)
	m, err := diskspace.Open(diskspace.Options{Dir: dir, ReserveBytes: 512 << 10, LowBytes: 256 << 10, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	_, werr := fill(t, dir)
	fill(t, dir) // the reserve's space too, once released
	m.Failed(werr)
	fill(t, dir)
	time.Sleep(50 * time.Millisecond) // a few polls: nothing to await
	if !m.Full() {
		t.Fatal("not full on a full disk")
	}
	var held atomic.Int64
	unregister := m.Reclaimable(func() int64 { return held.Load() })
	held.Store(2 << 20)
	waitFor(t, m, "no longer full", func() bool { return !m.Full() })
	if !m.Low() {
		t.Fatal("not low: the space inside a file counted for the recordings")
	}
	if _, err := os.Stat(filepath.Join(dir, diskspace.ReserveName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("reserve made without room on the file system: %v", err)
	}
	unregister()
}
