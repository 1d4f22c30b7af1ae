package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/hashicorp/go-hclog"
)

// FormatVersion is the version of the file layout (buckets and keys) this package reads
// and writes. It is stored in the file's "meta" bucket under "version".
const FormatVersion = 1

// Defaults for Options.
const (
	// DefaultLockTimeout is how long Open waits for another process's file lock.
	DefaultLockTimeout = 2 * time.Second
	// DefaultMaxBatch is the most writes committed in one transaction.
	DefaultMaxBatch = 1024
)

var (
	bucketMeta   = []byte("meta")
	bucketLeases = []byte("leases")
	bucketHooks  = []byte("hooks")
	keyVersion   = []byte("version")
)

// Options tune a Journal. The zero value is what the daemon uses.
type Options struct {
	// LockTimeout bounds the wait for the file lock held by another process; Open then
	// fails with an error wrapping ErrLocked. Zero or less means DefaultLockTimeout.
	LockTimeout time.Duration
	// NoSync skips fsync on commit. For tests and benchmarks only: a write is then not
	// durable when it returns, and a crash of the host can lose or damage the journal.
	NoSync bool
	// MaxBatch bounds how many queued writes go into one transaction. Zero or less means
	// DefaultMaxBatch.
	MaxBatch int
	// Disk watches the state directory's space (shared with the outbox): a commit that
	// fails because the disk is full is reported to it (it releases its reserve and logs
	// that the state directory is full), and a retry waits no longer once space returns.
	// Nil: none.
	Disk *diskspace.Monitor
	// Logger gets failed commits (the first, then once per RetryLogEvery while they go on)
	// and the recovery. Nil: none.
	Logger hclog.Logger
}

// Retry of failed commits.
const (
	// RetryMin and RetryMax bound the wait before a failed commit is tried again.
	RetryMin = 20 * time.Millisecond
	RetryMax = 2 * time.Second
	// RetryLogEvery bounds how often a commit that keeps failing is logged.
	RetryLogEvery = time.Minute
	// CloseFlush bounds how long Close keeps retrying a failing commit.
	CloseFlush = 2 * time.Second
)

// Stats counts the journal's work since Open.
type Stats struct {
	// Commits is the number of write transactions committed (each is one fsync round).
	Commits uint64
	// Writes is the number of write calls (SaveLease, SaveHook, SetHookOffset, Delete)
	// that were committed.
	Writes uint64
	// Retries is the number of commits that failed and were tried again.
	Retries uint64
}

// Journal is a durable lease store (the actors.Store of the supervisor) in a bbolt file. It is safe for concurrent use.
// Create it with Open and release it with Close.
type Journal struct {
	path     string
	db       *bbolt.DB
	maxBatch int
	disk     *diskspace.Monitor
	log      hclog.Logger
	stop     chan struct{} // closed by Close: a retrying writer gives up after CloseFlush

	mu      sync.Mutex
	cond    sync.Cond // signalled when pending grows or closed is set; L is &mu
	pending []*op
	spare   []*op // the previous batch's slice, reused
	closed  bool
	stopped chan struct{} // closed when the writer goroutine has returned

	commits, writes, retries atomic.Uint64

	// failCommit, in tests, makes commits fail (called in each write transaction; a
	// non-nil result aborts it): a test hook for failures a real disk cannot produce on
	// demand. The full-disk tests use a real tmpfs.
	failCommit func() error
}

type opKind uint8

const (
	opSaveLease opKind = iota
	opSaveHook
	opSetOffset
	opDelete
)

// op is one queued write. data is the encoded record (nil for opSaveHook clears the hook).
type op struct {
	kind   opKind
	id     string
	data   []byte
	offset int64
	err    error      // set by the writer while applying
	done   chan error // receives the outcome once the transaction is over
}

func (o *op) what() string {
	switch o.kind {
	case opSaveLease:
		return "save lease " + o.id
	case opSaveHook:
		return "save hook of " + o.id
	case opSetOffset:
		return "set hook offset of " + o.id
	default:
		return "delete " + o.id
	}
}

// Open opens the journal at path, creating it (mode 0600) if it does not exist, and starts
// its writer goroutine. The whole file is read once to check it. Errors:
//   - another process holds the file: an error wrapping ErrLocked, "journal <path> is
//     locked by another boardvisor process", after Options.LockTimeout;
//   - the file is not a readable journal (not a bbolt file, truncated, inconsistent pages,
//     unknown format version): a *DamagedError naming the file and what was wrong; see
//     Recover;
//   - anything else (permissions, I/O): an error naming the file.
func Open(path string, opts Options) (*Journal, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = DefaultLockTimeout
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	info, statErr := os.Stat(path)
	created := errors.Is(statErr, fs.ErrNotExist)
	if statErr == nil && info.Size() > 0 {
		// First read the whole file through a read-only handle: damage found this way is
		// reported without leaving anything open.
		db, err := openBolt(path, opts, true)
		if err != nil {
			return nil, err
		}
		_, err = validate(path, db)
		_ = db.Close()
		if err != nil {
			return nil, err
		}
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	j := &Journal{path: path, maxBatch: opts.MaxBatch, disk: opts.Disk, log: opts.Logger, stopped: make(chan struct{}), stop: make(chan struct{})}
	j.cond.L = &j.mu
	// A new file needs a few KiB: on a full disk, the monitor's reserve is released and
	// the creation tried again (an existing journal opens without writing).
	delay := RetryMin
	deadline := time.Now().Add(30 * time.Second)
	for {
		fi, statErr := os.Stat(path)
		fresh := statErr != nil || fi.Size() == 0
		db, err := openBolt(path, opts, false)
		if err == nil {
			j.db = db
			if err = j.init(); err != nil {
				_ = db.Close()
			}
		}
		if err == nil {
			break
		}
		if !diskspace.IsFull(err) || !fresh {
			return nil, err
		}
		j.disk.Failed(err)
		_ = os.Remove(path) // not a database yet: start it again
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("journal %s cannot be created: the state directory is full; free some space there", path)
		}
		j.log.Warn("journal cannot be created while the state directory is full; retrying", "file", path, "retry_in", delay.String())
		time.Sleep(delay)
		delay = min(delay*2, RetryMax)
	}
	db := j.db
	if created && !opts.NoSync {
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("journal %s: sync directory: %w", path, err)
		}
	}
	go j.run()
	return j, nil
}

// openError turns an error of bbolt.Open into one that names the file and says what to do.
func openError(path string, err error, timeout time.Duration) error {
	var pe *panicError
	var pathErr *fs.PathError
	var errno syscall.Errno
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("journal %s is %w (gave up waiting for its lock after %s)", path, ErrLocked, timeout)
	case errors.As(err, &pe):
		return &DamagedError{Path: path, Reason: "unreadable: " + pe.Error(), Err: err}
	case errors.As(err, &pathErr), errors.As(err, &errno):
		return fmt.Errorf("journal %s: open: %w", path, err)
	default:
		// bbolt's own validation: invalid database, checksum error, version mismatch,
		// file size too small, ...
		return &DamagedError{Path: path, Reason: "not a readable journal: " + err.Error(), Err: err}
	}
}

// openBolt opens the bbolt file, read-only (shared lock) or for writing (exclusive lock).
// Panics and memory faults while bbolt reads the file become a *DamagedError.
func openBolt(path string, opts Options, readOnly bool) (*bbolt.DB, error) {
	var db *bbolt.DB
	var file *os.File // bbolt's, so that it can be closed (and its lock released) if bbolt panics
	err := guard(func() error {
		var err error
		db, err = bbolt.Open(path, 0o600, &bbolt.Options{
			Timeout: opts.LockTimeout, NoSync: opts.NoSync, ReadOnly: readOnly,
			OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
				f, err := os.OpenFile(name, flag, perm)
				file = f
				return f, err
			},
		})
		return err
	})
	if err != nil {
		var pe *panicError
		if errors.As(err, &pe) && file != nil {
			// If bbolt had mapped the file, the mapping keeps the lock until this process
			// exits; the read-only pass in Open makes that unlikely.
			_ = file.Close()
		}
		return nil, openError(path, err, opts.LockTimeout)
	}
	return db, nil
}

// validate reads the whole file once: its size against its pages, its format version,
// and every key and value, so that a fault in the mapping shows now and not in the middle
// of a restore. fresh reports a file without any bucket (just created).
func validate(path string, db *bbolt.DB) (fresh bool, err error) {
	damaged := func(reason string, err error) error {
		return &DamagedError{Path: path, Reason: reason, Err: err}
	}
	var touched byte
	err = guard(func() error {
		return db.View(func(tx *bbolt.Tx) error {
			info, err := os.Stat(path)
			if err != nil {
				return fmt.Errorf("journal %s: %w", path, err)
			}
			if need := tx.Size(); info.Size() < need {
				return damaged(fmt.Sprintf("truncated: the file is %d bytes, its pages need %d", info.Size(), need), nil)
			}
			if reason := checkFreelist(path, tx); reason != "" {
				return damaged(reason, nil)
			}
			meta := tx.Bucket(bucketMeta)
			if meta == nil {
				var names []string
				_ = tx.ForEach(func(name []byte, _ *bbolt.Bucket) error {
					if len(name) > 32 {
						name = append(name[:32:32], "..."...)
					}
					names = append(names, strconv.Quote(string(name)))
					return nil
				})
				if len(names) > 0 {
					if len(names) > 4 {
						names = append(names[:4], "...")
					}
					return damaged("no format version (it has buckets "+strings.Join(names, ", ")+"): not a boardvisor journal?", nil)
				}
				fresh = true
				return nil
			}
			v := meta.Get(keyVersion)
			if v == nil {
				return damaged("no format version in its meta bucket", nil)
			}
			if n, err := strconv.Atoi(string(v)); err != nil || n != FormatVersion {
				return damaged(fmt.Sprintf("format version %q is unknown (this boardvisor reads version %d)", v, FormatVersion), ErrUnknownVersion)
			}
			for _, name := range [][]byte{bucketLeases, bucketHooks} {
				b := tx.Bucket(name)
				if b == nil {
					return damaged(fmt.Sprintf("bucket %q is missing", name), nil)
				}
				if err := b.ForEach(func(k, v []byte) error {
					for _, c := range v {
						touched ^= c
					}
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		})
	})
	var pe *panicError
	if errors.As(err, &pe) {
		return false, damaged("unreadable: "+pe.Error(), err)
	}
	sink.Store(uint32(touched)) // keep the reads
	return fresh, err
}

// checkFreelist checks the header of the file's freelist page, which bbolt reads (and
// panics on, leaving the file mapped and locked) when it opens the file for writing. The
// page is found from bbolt's meta page (on-disk format 2) whose transaction ID is tx's;
// if none is, the check is skipped. It returns what is wrong, or "".
func checkFreelist(path string, tx *bbolt.Tx) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	pageSize := uint64(tx.DB().Info().PageSize)
	read := func(off uint64, n int) []byte {
		b := make([]byte, n)
		if _, err := f.ReadAt(b, int64(off)); err != nil {
			return nil
		}
		return b
	}
	// A page starts with a 16-byte header: id u64, flags u16, count u16, overflow u32.
	// A meta page's body: magic, version, page size, flags (u32 each), root bucket (16
	// bytes), freelist page u64, high-water mark u64, txid u64, checksum u64.
	const header = 16
	hwm := uint64(tx.Size()) / pageSize
	for i := uint64(0); i < 2; i++ {
		m := read(i*pageSize+header, 64)
		if m == nil || binary.LittleEndian.Uint64(m[48:]) != uint64(tx.ID()) {
			continue
		}
		freelist := binary.LittleEndian.Uint64(m[32:])
		if freelist == math.MaxUint64 {
			return "" // not synced: bbolt rebuilds the freelist
		}
		if freelist < 2 || freelist >= hwm {
			return fmt.Sprintf("freelist page %d is out of range [2, %d)", freelist, hwm)
		}
		h := read(freelist*pageSize, header+8)
		if h == nil {
			return fmt.Sprintf("freelist page %d cannot be read", freelist)
		}
		const freelistPageFlag = 0x10
		if flags := binary.LittleEndian.Uint16(h[8:]); flags&freelistPageFlag == 0 {
			return fmt.Sprintf("freelist page %d is not a freelist page (flags %#x)", freelist, flags)
		}
		count, slots := uint64(binary.LittleEndian.Uint16(h[10:])), uint64(0)
		overflow := uint64(binary.LittleEndian.Uint32(h[12:]))
		if count == 0xFFFF { // the real count is the first entry
			count, slots = binary.LittleEndian.Uint64(h[header:]), 1
		}
		span := overflow + 1
		if overflow >= hwm || freelist+span > hwm || count > (span*pageSize-header)/8-slots {
			return fmt.Sprintf("freelist page %d claims %d entries in %d pages", freelist, count, span)
		}
	}
	return ""
}

// sink receives a value computed from every byte validate reads, so that the reads are
// not optimised away.
var sink atomic.Uint32

// init checks the file (opened for writing) and gives a fresh one its buckets and version.
func (j *Journal) init() error {
	fresh, err := validate(j.path, j.db)
	if err != nil || !fresh {
		return err
	}
	err = guard(func() error {
		return j.db.Update(func(tx *bbolt.Tx) error {
			meta, err := tx.CreateBucket(bucketMeta)
			if err != nil {
				return err
			}
			if err := meta.Put(keyVersion, []byte(strconv.Itoa(FormatVersion))); err != nil {
				return err
			}
			for _, name := range [][]byte{bucketLeases, bucketHooks} {
				if _, err := tx.CreateBucket(name); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("journal %s: initialise: %w", j.path, err)
	}
	return nil
}

// Path returns the journal's file.
func (j *Journal) Path() string { return j.path }

// Stats returns how many transactions and writes were committed since Open.
func (j *Journal) Stats() Stats {
	return Stats{Commits: j.commits.Load(), Writes: j.writes.Load(), Retries: j.retries.Load()}
}

func (j *Journal) wrap(what string, err error) error {
	return fmt.Errorf("journal %s: %s: %w", j.path, what, err)
}

// submit queues a write and waits until its transaction is over.
func (j *Journal) submit(o *op) error {
	o.done = make(chan error, 1)
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return j.wrap(o.what(), ErrClosed)
	}
	j.pending = append(j.pending, o)
	j.mu.Unlock()
	j.cond.Signal()
	return <-o.done
}

// run is the writer goroutine: it commits whatever is queued in one transaction, wakes the
// writers, and starts over. Once closed it commits what is still queued and returns.
func (j *Journal) run() {
	defer close(j.stopped)
	debug.SetPanicOnFault(true) // this goroutine's own setting; see guard
	for {
		j.mu.Lock()
		for len(j.pending) == 0 && !j.closed {
			j.cond.Wait()
		}
		if len(j.pending) == 0 {
			j.mu.Unlock()
			return
		}
		batch := j.pending
		j.pending, j.spare = j.spare[:0], nil
		if len(batch) > j.maxBatch {
			j.pending = append(j.pending, batch[j.maxBatch:]...)
			batch = batch[:j.maxBatch]
		}
		j.mu.Unlock()

		j.commit(batch)

		clear(batch[:cap(batch)])
		j.mu.Lock()
		j.spare = batch[:0]
		j.mu.Unlock()
	}
}

// commit applies a batch in one transaction. A write that fails on its own (a damaged hook
// record under SetHookOffset) fails alone. A failed commit (a full disk, an I/O error) is
// retried with back-off until it succeeds: the writers of the batch wait, since what a
// lease actor writes must be durable before it acts. Only Close ends the retries (after
// CloseFlush): the batch's writers then get the error.
func (j *Journal) commit(batch []*op) {
	var err error
	delay := time.Duration(0)
	var lastLog, giveUp time.Time
	for attempt := 0; ; attempt++ {
		err = guard(func() error {
			return j.db.Update(func(tx *bbolt.Tx) error {
				if j.failCommit != nil {
					if err := j.failCommit(); err != nil {
						return err
					}
				}
				leases, hooks := tx.Bucket(bucketLeases), tx.Bucket(bucketHooks)
				for _, o := range batch {
					o.err = apply(leases, hooks, o)
				}
				return nil
			})
		})
		if err == nil {
			if attempt > 0 && !lastLog.IsZero() {
				j.log.Info("journal writes again", "file", j.path, "failed_commits", attempt)
			}
			break
		}
		j.retries.Add(1)
		full := j.disk.Failed(err)
		if lastLog.IsZero() || time.Since(lastLog) >= RetryLogEvery {
			msg := "journal write failed; lease actors wait until it is on disk, retrying"
			if full {
				msg = "journal write failed: the state directory is full; lease actors wait until it is on disk, retrying"
			}
			j.log.Warn(msg, "file", j.path, "writes", len(batch), "attempts", attempt+1, "error", err.Error())
			lastLog = time.Now()
		}
		delay = min(max(delay*2, RetryMin), RetryMax)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-j.disk.Changed():
		case <-j.stop:
			if giveUp.IsZero() {
				giveUp = time.Now().Add(CloseFlush)
			}
			<-t.C
		}
		t.Stop()
		if !giveUp.IsZero() && time.Now().After(giveUp) {
			j.log.Error("journal closed with writes not on disk", "file", j.path, "writes", len(batch), "error", err.Error())
			break
		}
	}
	if err == nil {
		// Count before waking anyone, so that Stats after a write returned includes it.
		var n uint64
		for _, o := range batch {
			if o.err == nil {
				n++
			}
		}
		j.writes.Add(n)
		j.commits.Add(1)
	}
	for _, o := range batch {
		switch {
		case err != nil:
			o.done <- j.wrap(o.what(), err)
		case o.err != nil:
			o.done <- j.wrap(o.what(), o.err)
		default:
			o.done <- nil
		}
	}
}

func apply(leases, hooks *bbolt.Bucket, o *op) error {
	key := []byte(o.id)
	switch o.kind {
	case opSaveLease:
		return leases.Put(key, o.data)
	case opSaveHook:
		if o.data == nil {
			return hooks.Delete(key)
		}
		return hooks.Put(key, o.data)
	case opSetOffset:
		v := hooks.Get(key)
		if v == nil {
			return nil // no hook run: nothing to update
		}
		run, err := decodeHook(v)
		if err != nil {
			return err
		}
		run.Offset = o.offset
		data, err := encodeHook(run)
		if err != nil {
			return err
		}
		return hooks.Put(key, data)
	case opDelete:
		if err := leases.Delete(key); err != nil {
			return err
		}
		return hooks.Delete(key)
	}
	return fmt.Errorf("unknown write %d", o.kind)
}

// SaveLease implements the actors.Store method: it writes the lease's spec, state and timer deadlines,
// leaving its hook run as it is. It returns once the write is durable.
func (j *Journal) SaveLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported ...jobs.Transition) error {
	data, err := encodeLease(spec, st, deadlines, reported)
	if err != nil {
		return j.wrap("save lease "+spec.JobID, err)
	}
	return j.submit(&op{kind: opSaveLease, id: spec.JobID, data: data})
}

// SaveHook implements the actors.Store method: it writes the lease's hook run (nil clears it), leaving
// the rest of the record as it is. It returns once the write is durable.
func (j *Journal) SaveHook(jobID string, run *jobs.HookRun) error {
	if jobID == "" {
		return j.wrap("save hook", errors.New("no job ID"))
	}
	data, err := encodeHook(run)
	if err != nil {
		return j.wrap("save hook of "+jobID, err)
	}
	return j.submit(&op{kind: opSaveHook, id: jobID, data: data})
}

// SetHookOffset implements the actors.Store method: it updates the offset of the lease's hook run
// (nothing happens if it has none). Unlike a lazy update it returns only once the offset is
// durable, like the other writes: the output up to offset may be treated as delivered
// only then, so that after a crash no line is read and reported twice. Group commit keeps
// this cheap for many boards; a watcher should call it once per chunk of output it
// reported, not once per line.
func (j *Journal) SetHookOffset(jobID string, offset int64) error {
	if jobID == "" {
		return j.wrap("set hook offset", errors.New("no job ID"))
	}
	return j.submit(&op{kind: opSetOffset, id: jobID, offset: offset})
}

// Delete implements the actors.Store method: it forgets the lease, its hook run included. It returns
// once the deletion is durable.
func (j *Journal) Delete(jobID string) error {
	if jobID == "" {
		return j.wrap("delete", errors.New("no job ID"))
	}
	return j.submit(&op{kind: opDelete, id: jobID})
}

// view runs a read transaction, with faults in the mapping turned into a *DamagedError.
func (j *Journal) view(what string, fn func(tx *bbolt.Tx) error) error {
	j.mu.Lock()
	closed := j.closed
	j.mu.Unlock()
	if closed {
		return j.wrap(what, ErrClosed)
	}
	err := guard(func() error { return j.db.View(fn) })
	var pe *panicError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, berrors.ErrDatabaseNotOpen):
		return j.wrap(what, ErrClosed)
	case errors.As(err, &pe):
		return &DamagedError{Path: j.path, Reason: what + ": unreadable: " + pe.Error(), Err: err}
	}
	return j.wrap(what, err)
}

// Load implements the actors.Store method: it returns the lease's record, and false if there is none.
// A record that cannot be decoded is an error naming the lease.
func (j *Journal) Load(jobID string) (jobs.Record, bool, error) {
	var rec jobs.Record
	var found bool
	err := j.view("load "+jobID, func(tx *bbolt.Tx) error {
		key := []byte(jobID)
		lv := tx.Bucket(bucketLeases).Get(key)
		if lv == nil {
			return nil
		}
		var err error
		rec, err = decodeKeyed(jobID, lv, tx.Bucket(bucketHooks).Get(key))
		found = err == nil
		return err
	})
	if err != nil {
		return jobs.Record{}, false, err
	}
	return rec, found, nil
}

// decodeKeyed decodes the record stored under jobID and checks that it is that job's.
func decodeKeyed(jobID string, lease, hook []byte) (jobs.Record, error) {
	rec, err := decodeRecord(lease, hook)
	if err == nil && rec.Spec.JobID != jobID {
		err = fmt.Errorf("lease record is for job %q", rec.Spec.JobID)
	}
	return rec, err
}

// LoadAll returns every lease record, sorted by job ID, for the restore at start-up.
// Records that cannot be decoded are skipped and listed in damaged (sorted by job ID), so
// that those leases are reported as CannotResume while the others are restored; a hook run
// without a lease record is listed there too. err is a *DamagedError if the file itself
// turns out unreadable, and wraps ErrClosed after Close.
func (j *Journal) LoadAll() (records []jobs.Record, damaged []Damaged, err error) {
	err = j.view("load all", func(tx *bbolt.Tx) error {
		records, damaged = nil, nil
		leases, hooks := tx.Bucket(bucketLeases), tx.Bucket(bucketHooks)
		c := leases.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			id := string(k)
			if v == nil {
				damaged = append(damaged, Damaged{JobID: id, Reason: "lease record is a bucket, not a value"})
				continue
			}
			rec, err := decodeKeyed(id, v, hooks.Get(k))
			if err != nil {
				damaged = append(damaged, Damaged{JobID: id, Reason: err.Error()})
				continue
			}
			records = append(records, rec)
		}
		return hooks.ForEach(func(k, _ []byte) error {
			if leases.Get(k) == nil && !slices.ContainsFunc(damaged, func(d Damaged) bool { return d.JobID == string(k) }) {
				damaged = append(damaged, Damaged{JobID: string(k), Reason: "hook run recorded without a lease record"})
			}
			return nil
		})
	})
	if err != nil {
		return nil, nil, err
	}
	slices.SortFunc(damaged, func(a, b Damaged) int { return strings.Compare(a.JobID, b.JobID) })
	return records, damaged, nil
}

// Close commits the writes still queued, stops the writer goroutine and closes the file.
// Every call after Close returns an error wrapping ErrClosed (Close too).
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return j.wrap("close", ErrClosed)
	}
	j.closed = true
	j.mu.Unlock()
	close(j.stop)
	j.cond.Signal()
	<-j.stopped
	if err := j.db.Close(); err != nil {
		return j.wrap("close", err)
	}
	return nil
}
