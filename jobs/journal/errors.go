package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"
)

// ErrClosed is returned (wrapped) by every call on a Journal after Close.
var ErrClosed = errors.New("journal is closed")

// ErrLocked is wrapped by the error Open returns when another process (another boardvisor
// daemon on the same state directory) holds the journal's file lock.
var ErrLocked = errors.New("locked by another boardvisor process")

// ErrUnknownVersion is wrapped by the *DamagedError Open returns when the file's format
// version is not the one this boardvisor reads (e.g. it was written by a newer one).
var ErrUnknownVersion = errors.New("unknown journal format version")

// DamagedError is returned by Open (and LoadAll) when the journal file cannot be read as a
// whole: it is not a bbolt file, it is truncated, its pages are inconsistent, or its format
// version is unknown. The daemon should Close the journal if it has one, move the file aside
// with Recover and Open a fresh one. The leases in the damaged file cannot be named from it,
// so they cannot be reported one by one as CannotResume; the coordinator learns of them as
// leases the restarted supervisor does not list as resumed.
type DamagedError struct {
	// Path is the journal file.
	Path string
	// Reason says what was wrong, e.g. "truncated: …".
	Reason string
	// Err is the underlying error, if any (ErrUnknownVersion for a version mismatch).
	Err error
}

// Error returns "journal <path>: <reason>".
func (e *DamagedError) Error() string { return fmt.Sprintf("journal %s: %s", e.Path, e.Reason) }

// Unwrap returns the underlying error.
func (e *DamagedError) Unwrap() error { return e.Err }

// Damaged names a lease whose record in the journal could not be decoded. LoadAll skips it
// and restores the others; the daemon reports the lease as CannotResume with the reason.
type Damaged struct {
	JobID  string
	Reason string
}

// Recover moves a damaged journal file aside, to path + ".damaged-<unix time>" (with a
// numeric suffix if that name is taken), so that a fresh journal can be opened at path. It
// returns where the file went. The file is kept for inspection, never deleted. Any Journal
// open on path must be closed first.
func Recover(path string) (moved string, err error) {
	base := fmt.Sprintf("%s.damaged-%d", path, time.Now().Unix())
	moved = base
	for i := 1; ; i++ {
		if _, err := os.Lstat(moved); os.IsNotExist(err) {
			break
		}
		moved = fmt.Sprintf("%s.%d", base, i)
	}
	if err := os.Rename(path, moved); err != nil {
		return "", fmt.Errorf("journal %s: move damaged file aside: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return moved, fmt.Errorf("journal %s: moved damaged file to %s: %w", path, moved, err)
	}
	return moved, nil
}

// syncDir makes a directory's entries (a created or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// panicError is a panic (or a memory fault in the mapped file) caught while reading the file.
type panicError struct{ v any }

func (p *panicError) Error() string { return fmt.Sprintf("reading the file panicked: %v", p.v) }

// guard runs f, turning a panic into an error. Memory faults (SIGBUS when a truncated
// file's mapping is read past its end, SIGSEGV on a wild page ID) become panics too while
// f runs, so a damaged file cannot crash the daemon.
func guard(f func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{r}
		}
	}()
	return f()
}
