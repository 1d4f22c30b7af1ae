package journal

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/boardvisor/boardvisor/jobs"
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

func saveAsync(j *Journal, r jobs.Record) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- j.SaveLease(r.Spec, r.State, r.Deadlines, r.Reported...) }()
	return ch
}

func blocked(t *testing.T, ch <-chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s returned (%v) while its write could not be committed", what, err)
	case <-time.After(200 * time.Millisecond):
	}
}

func returned(t *testing.T, ch <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// A failed commit is retried with back-off; the caller of SaveLease waits until its write
// is durable, and the log says so once, not once per attempt. (The failures come from a
// test hook; TestJournalRidesOutAFullTmpfs uses a real full disk.)
func TestFailedCommitIsRetriedUntilDurable(t *testing.T) {
	var log lockedBuf
	path := dbPath(t)
	j := openT(t, path, Options{NoSync: true, Logger: hclog.New(&hclog.LoggerOptions{Output: &log})})
	var failing atomic.Bool
	failing.Store(true)
	j.failCommit = func() error {
		if failing.Load() {
			return errors.New("injected I/O error")
		}
		return nil
	}
	r := fullRecord(jobID(1))
	done := saveAsync(j, r)
	blocked(t, done, "SaveLease")
	for j.Stats().Retries < 3 {
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok, _ := j.Load(r.Spec.JobID); ok {
		t.Fatal("the record is readable before its commit succeeded")
	}
	failing.Store(false)
	if err := returned(t, done, "SaveLease"); err != nil {
		t.Fatalf("SaveLease after the retries: %v", err)
	}
	if _, ok, err := j.Load(r.Spec.JobID); !ok || err != nil {
		t.Fatalf("record after the retries: %v %v", ok, err)
	}
	if n := strings.Count(log.String(), "journal write failed"); n != 1 {
		t.Fatalf("%d log lines about the failing commit (%d retries), want 1:\n%s", n, j.Stats().Retries, log.String())
	}
	if !strings.Contains(log.String(), "journal writes again") {
		t.Fatalf("recovery not logged:\n%s", log.String())
	}
}

// Close gives up on a commit that keeps failing, after a bounded while, and the waiting
// caller gets an error (never a false success).
func TestCloseEndsTheRetriesWithAnError(t *testing.T) {
	j, err := Open(dbPath(t), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	j.failCommit = func() error { return errors.New("injected I/O error") }
	done := saveAsync(j, fullRecord(jobID(1)))
	blocked(t, done, "SaveLease")
	start := time.Now()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := returned(t, done, "SaveLease"); err == nil {
		t.Fatal("SaveLease reported success for a write that never reached the disk")
	}
	if d := time.Since(start); d > CloseFlush+5*time.Second {
		t.Fatalf("Close took %s", d)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory, or skips the test where
// that is not permitted (it fails under CI=true).
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

func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("ballast-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; n /= 2 {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				if !diskspace.IsFull(err) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	return path
}

// On a real full disk: SaveLease blocks until space returns, then returns nil, and the
// record is there after a reopen; a journal reopened while the disk is full opens.
func TestJournalRidesOutAFullTmpfs(t *testing.T) {
	dir := mountTmpfs(t, 2<<20)
	path := filepath.Join(dir, "journal.db")
	j := openT(t, path, Options{})
	ballast := fill(t, dir)
	var pending []<-chan error
	n := 0
	for len(pending) == 0 || n < 10000 {
		n++
		r := fullRecord(jobID(n))
		r.State.Failure = strings.Repeat("x", 2000) // big records need new pages soon
		ch := saveAsync(j, r)
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("SaveLease %d: %v", n, err)
			}
			continue
		case <-time.After(300 * time.Millisecond):
			pending = append(pending, ch)
		}
		break
	}
	if len(pending) == 0 {
		t.Fatal("10,000 records fit on a full 2 MiB tmpfs?")
	}
	if j.Stats().Retries == 0 {
		t.Fatal("blocked without a failed commit")
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	if err := returned(t, pending[0], "SaveLease"); err != nil {
		t.Fatalf("SaveLease once space returned: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	fill(t, dir)
	j = openT(t, path, Options{})
	recs, _, err := j.LoadAll()
	if err != nil || len(recs) != n {
		t.Fatalf("reopened on a full disk: %d records, %v; want %d", len(recs), err, n)
	}
}
