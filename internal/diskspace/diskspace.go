// Package diskspace keeps watch over the free space of the daemon's state directory, so
// that a full disk is a fault the daemon rides out rather than a state it dies in.
//
// A Monitor holds a reserve: a preallocated file (Options.ReserveBytes, a few MiB) in the
// state directory. The first write that fails for lack of space (ENOSPC, EDQUOT: see
// IsFull), reported with Failed, releases it, so that what must still be written
// (lease transitions, errors, hook lines) finds room, and puts the Monitor in the full
// state. Writers consult the state to shed what the written policy lets them shed
// (docs/full-disk.md): the console recording stops while the directory is Low or Full,
// and the outbox replaces console bytes by ConsoleGap events while it is Full. The
// Monitor looks at the file system's free space every Options.Poll; once there is room
// for the reserve again and Options.LowBytes besides, it recreates the reserve, leaves
// the full state and closes the channel Changed returned, so that writers waiting on it
// retry at once. (Writes go on meanwhile, in the reserve's space: only console output
// and the recordings wait for the full state to end.) Free space held inside the files
// (Reclaimable: the outbox's free pages) counts for leaving the full state; the reserve
// is made again once the file system itself has room for it.
//
// It logs the state dir being full when it happens, then at most once per
// Options.LogEvery while it lasts (with the number of failed writes meanwhile), and when
// space returns; a directory that fills up again and again is logged at most once per
// LogEvery each way: never once per failed write.
package diskspace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults of Options' zero fields.
const (
	DefaultReserveBytes = 4 << 20
	DefaultPoll         = time.Second
	DefaultLogEvery     = time.Minute
	// ReserveName is the reserve file's name in the state directory.
	ReserveName = "space.reserve"
)

// IsFull reports whether err says the file system has no space left (ENOSPC) or the
// user's quota is exhausted (EDQUOT).
func IsFull(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// Options configure a Monitor.
type Options struct {
	// Dir is the state directory; the reserve file goes there.
	Dir string
	// ReserveBytes is the size of the reserve file (default DefaultReserveBytes); a
	// negative value means no reserve.
	ReserveBytes int64
	// LowBytes is the free space under which the directory counts as low (the console
	// recording stops); default: the reserve's size, at least 1 MiB. Leaving the full
	// state needs LowBytes free besides the reserve.
	LowBytes int64
	// Poll is how often the free space is looked at (default DefaultPoll).
	Poll time.Duration
	// LogEvery bounds how often "still full" is logged (default DefaultLogEvery).
	LogEvery time.Duration
	// Logger gets the state changes (default: none).
	Logger hclog.Logger
}

// Monitor watches a state directory's free space and keeps its reserve. Its methods are
// safe for concurrent use; a nil *Monitor is valid and never full.
type Monitor struct {
	opts    Options
	reserve string

	full, low atomic.Bool

	mu       sync.Mutex
	changed  chan struct{}
	since    time.Time // when the full state began
	lastLog  time.Time // of a "full" line
	lastBack time.Time // of a "space again" line
	failures uint64    // full-disk failures reported since the last log line
	total    uint64    // full-disk failures reported since Open
	fulls    uint64    // times the full state was entered
	reserved bool
	closed   bool

	reclaim map[int]func() int64 // Reclaimable's functions
	nextID  int

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

// Reclaimable registers fn, which tells how many bytes a file in the directory holds
// free for its own writes (a bbolt file's free pages: it never shrinks, but reuses
// them). That space counts when deciding whether the directory is still full (the
// writers that shed while it is full can use it), not for the low state (the console
// recordings cannot). The returned function unregisters fn; fn must not be called after.
func (m *Monitor) Reclaimable(fn func() int64) (unregister func()) {
	if m == nil {
		return func() {}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.reclaim == nil {
		m.reclaim = map[int]func() int64{}
	}
	id := m.nextID
	m.nextID++
	m.reclaim[id] = fn
	return func() {
		m.mu.Lock()
		delete(m.reclaim, id)
		m.mu.Unlock()
	}
}

// Open starts a Monitor of opts.Dir (which must exist) and creates its reserve if there
// is room for it. A reserve already there (from an earlier run) is kept as it is.
func Open(opts Options) (*Monitor, error) {
	if opts.Dir == "" {
		return nil, errors.New("disk space monitor: no directory")
	}
	if opts.ReserveBytes == 0 {
		opts.ReserveBytes = DefaultReserveBytes
	}
	if opts.ReserveBytes < 0 {
		opts.ReserveBytes = 0
	}
	if opts.LowBytes <= 0 {
		opts.LowBytes = max(opts.ReserveBytes, 1<<20)
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	if opts.LogEvery <= 0 {
		opts.LogEvery = DefaultLogEvery
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if _, err := Free(opts.Dir); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", opts.Dir, err)
	}
	m := &Monitor{opts: opts, reserve: filepath.Join(opts.Dir, ReserveName), changed: make(chan struct{}),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if opts.ReserveBytes > 0 {
		if fi, err := os.Stat(m.reserve); err == nil && fi.Size() >= opts.ReserveBytes {
			m.reserved = true
		} else if err := m.makeReserve(); err != nil && !IsFull(err) {
			return nil, fmt.Errorf("state directory %s: space reserve: %w", opts.Dir, err)
		}
	}
	m.check()
	go m.run()
	return m, nil
}

// Free returns the bytes available to this process in dir's file system.
func Free(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// Full reports whether the state directory is full: a write failed for lack of space and
// not enough space has come back since.
func (m *Monitor) Full() bool { return m != nil && m.full.Load() }

// Low reports whether the state directory is full, or its free space is under
// Options.LowBytes.
func (m *Monitor) Low() bool { return m != nil && (m.full.Load() || m.low.Load()) }

// Changed returns a channel closed at the next change of state (full, low or back to
// normal). A nil Monitor's channel is never closed.
func (m *Monitor) Changed() <-chan struct{} {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Stats tells how many times the directory became full and how many writes failed for
// lack of space since Open.
func (m *Monitor) Stats() (fulls, failures uint64) {
	if m == nil {
		return 0, 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fulls, m.total
}

// Failed reports a failed write: if err says the disk is full, the reserve is released,
// the Monitor enters the full state (logged once, then at most once per LogEvery) and
// Failed returns true. Any other error is left to the caller (false).
func (m *Monitor) Failed(err error) bool {
	if !IsFull(err) {
		return false
	}
	if m == nil {
		return true
	}
	m.mu.Lock()
	m.total++
	m.failures++
	entered := !m.full.Load()
	if entered {
		m.fulls++
		m.since = time.Now()
		released := m.releaseLocked()
		m.full.Store(true)
		m.notifyLocked()
		free, _ := Free(m.opts.Dir)
		log := m.opts.Logger.Warn
		if time.Since(m.lastLog) < m.opts.LogEvery {
			log = m.opts.Logger.Debug // full again soon after: said already
		}
		log("state directory full: console recording stopped, console output shed (counted in ConsoleGap events); transitions, errors and hook lines are kept and retried until space returns",
			"dir", m.opts.Dir, "free_bytes", free, "reserve_released_bytes", released, "error", err.Error())
		m.lastLog, m.failures = time.Now(), 0
	} else if time.Since(m.lastLog) >= m.opts.LogEvery {
		free, _ := Free(m.opts.Dir)
		m.opts.Logger.Warn("state directory still full", "dir", m.opts.Dir, "for", time.Since(m.since).Round(time.Second).String(),
			"failed_writes", m.failures, "free_bytes", free)
		m.lastLog, m.failures = time.Now(), 0
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return true
}

// Close stops the Monitor. The reserve file stays for the next run.
func (m *Monitor) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	close(m.stop)
	<-m.done
	return nil
}

func (m *Monitor) notifyLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

// releaseLocked deletes the reserve file and returns its size.
func (m *Monitor) releaseLocked() int64 {
	if !m.reserved {
		return 0
	}
	var size int64
	if fi, err := os.Stat(m.reserve); err == nil {
		size = fi.Size()
	}
	if err := os.Remove(m.reserve); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.opts.Logger.Warn("cannot release the state directory's space reserve", "file", m.reserve, "error", err.Error())
		return 0
	}
	m.reserved = false
	return size
}

// makeReserve creates the reserve file, all of its blocks allocated.
func (m *Monitor) makeReserve() error {
	f, err := os.OpenFile(m.reserve, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, m.opts.ReserveBytes)
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = writeZeros(f, m.opts.ReserveBytes)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(m.reserve)
		return err
	}
	m.reserved = true
	return nil
}

func writeZeros(f *os.File, n int64) error {
	buf := make([]byte, 64<<10)
	for n > 0 {
		w, err := f.Write(buf[:min(n, int64(len(buf)))])
		n -= int64(w)
		if err != nil {
			return err
		}
	}
	return nil
}

func (m *Monitor) run() {
	defer close(m.done)
	t := time.NewTicker(m.opts.Poll)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		case <-m.wake:
		}
		m.check()
	}
}

// check looks at the free space: it leaves the full state when there is room for the
// reserve and LowBytes besides, and updates the low state.
func (m *Monitor) check() {
	free, err := Free(m.opts.Dir)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.full.Load() {
		// The reserve's space does not count: space has returned once there is room for
		// the reserve and LowBytes besides, counting the free space the files hold for
		// their own writes.
		usable := free
		for _, fn := range m.reclaim {
			usable += fn()
		}
		if usable < m.opts.LowBytes+m.opts.ReserveBytes {
			return
		}
		if m.opts.ReserveBytes > 0 && !m.reserved && free >= m.opts.LowBytes+m.opts.ReserveBytes {
			if err := m.makeReserve(); err == nil {
				free, _ = Free(m.opts.Dir)
			}
		}
		m.full.Store(false)
		low := free < m.opts.LowBytes+m.opts.LowBytes/4
		m.low.Store(low)
		m.notifyLocked()
		log := m.opts.Logger.Info
		if time.Since(m.lastBack) < m.opts.LogEvery {
			log = m.opts.Logger.Debug
		}
		log("state directory has space again: console output resumes (and console recording once it is not low)",
			"dir", m.opts.Dir, "was_full_for", time.Since(m.since).Round(time.Second).String(), "free_bytes", free, "failed_writes", m.failures, "low", low)
		m.lastBack, m.failures = time.Now(), 0
		return
	}
	if m.opts.ReserveBytes > 0 && !m.reserved && free >= m.opts.LowBytes+m.opts.ReserveBytes {
		_ = m.makeReserve()
		free, _ = Free(m.opts.Dir)
	}
	// Hysteresis: low below LowBytes, back to normal above 1.25 LowBytes.
	wasLow := m.low.Load()
	low := free < m.opts.LowBytes || (wasLow && free < m.opts.LowBytes+m.opts.LowBytes/4)
	if low != wasLow {
		m.low.Store(low)
		m.notifyLocked()
		if low {
			m.opts.Logger.Warn("state directory low on space: console recording stopped until space returns", "dir", m.opts.Dir, "free_bytes", free)
		} else {
			m.opts.Logger.Info("state directory has space again: console recording resumes", "dir", m.opts.Dir, "free_bytes", free)
		}
	}
}
