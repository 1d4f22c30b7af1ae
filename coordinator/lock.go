package coordinator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// stateLock is the coordinator's lock on its state directory: an flock(2) on
// <dir>/coordinator.lock, which holds the owner's pid. The kernel drops it when the
// process dies, so a coordinator killed with -9 leaves nothing to clean up.
type stateLock struct{ f *os.File }

// lockStateDir takes the state directory's lock, or says which process holds it.
func lockStateDir(dir string) (*stateLock, error) {
	path := filepath.Join(dir, "coordinator.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("coordinator: lock the state directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = fmt.Sprintf("another coordinator (pid %d)", pid)
			}
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("coordinator: state directory %s is in use by %s: stop it first, or give this one another --state-dir", dir, holder)
		}
		return nil, fmt.Errorf("coordinator: lock the state directory %s: %w", dir, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("coordinator: write the state directory's lock: %w", err)
		}
	}
	return &stateLock{f: f}, nil
}

func (l *stateLock) release() {
	if l != nil && l.f != nil {
		_ = l.f.Close() // closing the descriptor drops the flock
	}
}
