package grpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/internal/diskspace"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Queue is the supervisor's outbox on disk: numbered events kept until the coordinator
// acknowledges them, so that they survive a lost link and a daemon restart.
//
// # Layout
//
// One bbolt file. Bucket "events" maps a sequence number (8 bytes, big-endian) to the
// event's protobuf encoding; bucket "meta" holds "last" (the highest sequence number
// committed), "acked" (the highest acknowledged), "hook/<job>/<source>" (how far each
// hook's output is durably queued: the spool offset past its last line) and
// "step/<job>" (the Step of the last transition of each lease held), each written in the
// same transaction as the events they describe.
//
// # Writes
//
// Appends are group-committed by one writer goroutine: it takes everything pending (up
// to a batch bound), writes it in one transaction (one fsync), and only then counts it
// committed and releases the waiters (Append's channel, Synced). The writer also applies
// acknowledgements, in its own transactions (first in each one), so that an ack is never
// starved by appends and costs no fsync of its own. A failed transaction (a full disk, an
// I/O error) is retried with back-off: the batch stays pending at the head of the queue,
// later events wait behind it, so the sequence on disk never has a hole, and no waiter is
// released before its events are on disk. Readers (After) see committed events only.
//
// # Bound and shedding
//
// The events kept on disk are bounded (MaxBytes, from 64 KiB up): past the bound, console
// output is given up first — the oldest console event on disk has its bytes replaced by
// a ConsoleGap event saying how many bytes were dropped, under the same sequence number,
// so the stream stays gap-free. An in-memory index of the console events on disk (their
// sequence numbers and sizes, oldest first; rebuilt by one scan at open) makes that O(1)
// per event shed: no rescan. State transitions, errors, hook lines and board status are
// never dropped; the bound may be passed by them, by at most what they add.
//
// While the state directory is full (QueueOptions.Disk), new console events are stored
// as ConsoleGap events at once: the space left goes to what may not be dropped.
type Queue struct {
	path      string
	db        *bolt.DB
	maxBytes  int64
	disk      *diskspace.Monitor
	ownDisk   bool // disk was opened by the queue
	unreclaim func()
	log       hclog.Logger

	// txMu is held around each write transaction (flush), so that one is written at a
	// time: by the writer, or by a test that writes one itself.
	txMu sync.Mutex

	mu        sync.Mutex
	pending   []rec  // appended, not yet committed, in order
	pendBytes int64  // bytes of console data pending
	appended  uint64 // events appended since open
	committed uint64 // events of those committed
	waiters   []waiter
	forget    []string // jobs to forget (ForgetJobs), applied by the writer
	ackWant   uint64   // highest ack asked for (Ack)
	acked     uint64   // highest ack asked for or found on disk at open
	ackDone   uint64   // highest ack applied on disk
	changed   chan struct{}
	stored    int64 // bytes of events on disk (owned by the writer; read under mu)
	last      uint64
	index     consoleIndex // console events on disk, oldest first (owned by the writer)
	closed    bool
	failing   error // the last write error, nil once a write succeeded
	recovered bool  // a write succeeded after failing (for the writer's log)
	onEnded   func(job string)

	maxPending int64

	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	// claim is the highest sequence number the link's sender may have read: gap records
	// at or below it never change (see queue_gaps.go). serveMu orders claims with the
	// write transactions that merge gaps.
	serveMu sync.Mutex
	claim   uint64

	// recent are the last records committed as they are on disk, with consecutive
	// sequence numbers: afterRaw serves them from memory rather than reading the file
	// back (a copy of every byte, and page faults in the mapping). A transaction that
	// sheds or stores a gap changes records on disk, and empties it. Bounded by
	// maxRecentBytes; under mu.
	recent      []rawEvent
	recentBytes int

	// Counters for tests and metrics.
	shedVisits atomic.Uint64 // stored events read to shed them
	shedBytes  atomic.Uint64 // console bytes replaced by gaps
	retries    atomic.Uint64 // failed write transactions
	commits    atomic.Uint64

	// failNext, in tests, makes write transactions fail: it is called in each write
	// transaction with the number of events it writes, and a non-nil result aborts it.
	// (A test hook, for the cases a real full disk cannot produce deterministically; the
	// full-disk tests use a real tmpfs.)
	failNext func(events int) error
}

// rec is one pending event, encoded.
type rec struct {
	seq     uint64
	data    []byte
	console *pb.ConsoleLog // set for a console event still carrying its bytes
	ev      *pb.Event      // the event (for a console event, its gap once it is one)
	shed    uint64         // console bytes this queue replaced by the gap ev
}

type waiter struct {
	target uint64 // released once committed >= target
	ch     chan struct{}
}

// closedCh is a channel that is always closed.
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

var (
	bucketEvents = []byte("events")
	bucketMeta   = []byte("meta")
	keyAcked     = []byte("acked")
	keyLast      = []byte("last")
)

// ErrQueueClosed is returned by a closed Queue.
var ErrQueueClosed = errors.New("outbox queue closed")

// Queue bounds and timings.
const (
	// MinQueueBytes is the smallest MaxBytes accepted.
	MinQueueBytes = 64 << 10
	// maxBatchEvents and maxBatchBytes bound one write transaction.
	maxBatchEvents = 16384
	maxBatchBytes  = 8 << 20
	// retryMin and retryMax bound the wait before a failed write is tried again.
	retryMin = 20 * time.Millisecond
	retryMax = 2 * time.Second
	// maxRecentBytes bounds the committed records kept in memory for the sender: two
	// transactions' worth, a console tick of 1,000 boards at 115200 baud (11 MB) taking
	// two of them.
	maxRecentBytes = 2 * maxBatchBytes
	// closeFlush bounds how long Close keeps retrying a failing final write.
	closeFlush = 2 * time.Second
	// logEvery bounds how often a failing write is logged.
	logEvery = time.Minute
)

// QueueOptions configure OpenQueue.
type QueueOptions struct {
	// MaxBytes bounds the events kept on disk (default 256 MiB, at least MinQueueBytes).
	MaxBytes int64
	// MaxPendingBytes bounds the console bytes held in memory while writes fail; past
	// it new console events are kept as ConsoleGap events (default min(MaxBytes, 16 MiB)).
	MaxPendingBytes int64
	// NoSync skips fsync (tests and benchmarks only).
	NoSync bool
	// Disk watches the state directory's space (shared with the journal and the console
	// recording); nil: the queue watches its own directory, without a reserve.
	Disk *diskspace.Monitor
	// Logger gets write failures (rate-limited) and recoveries.
	Logger hclog.Logger
}

// OpenQueue opens (or creates) the queue file at path. An existing file is opened
// without writing to it, so that a restart on a full disk works; a new one needs a few
// KiB (a full disk is reported to opts.Disk, which releases its reserve, and retried).
func OpenQueue(path string, opts QueueOptions) (*Queue, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	opts.MaxBytes = max(opts.MaxBytes, MinQueueBytes)
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = min(opts.MaxBytes, 16<<20)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	q := &Queue{path: path, maxBytes: opts.MaxBytes, disk: opts.Disk, log: opts.Logger, kick: make(chan struct{}, 1),
		changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	if q.disk == nil {
		d, err := diskspace.Open(diskspace.Options{Dir: dirOf(path), ReserveBytes: -1})
		if err != nil {
			return nil, fmt.Errorf("outbox %s: %w", path, err)
		}
		q.disk, q.ownDisk = d, true
	}
	q.maxPending = opts.MaxPendingBytes
	db, err := q.open(path, opts)
	if err != nil {
		if q.ownDisk {
			q.disk.Close()
		}
		return nil, err
	}
	q.db = db
	// The file never shrinks, but its free pages take the next writes: for the state
	// dir's monitor, space the outbox can use.
	q.unreclaim = q.disk.Reclaimable(func() int64 { return int64(db.Stats().FreeAlloc) })
	q.log.Info("outbox opened", "file", path, "last_seq", q.last, "acked", q.acked, "stored_bytes", q.stored, "console_events", q.index.len())
	go q.writer()
	return q, nil
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			if i == 0 {
				return "/"
			}
			return path[:i]
		}
	}
	return "."
}

// open opens the bbolt file and reads what the queue keeps in memory, retrying while
// the disk is full (a new file must be written).
func (q *Queue) open(path string, opts QueueOptions) (*bolt.DB, error) {
	delay := retryMin
	deadline := time.Now().Add(30 * time.Second)
	for {
		fi, statErr := os.Stat(path)
		fresh := statErr != nil || fi.Size() == 0
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: opts.NoSync})
		if err == nil {
			err = q.load(db)
			if err != nil {
				db.Close()
			}
		}
		if err == nil {
			return db, nil
		}
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("outbox %s is locked by another boardvisor process", path)
		}
		if !q.disk.Failed(err) || time.Now().After(deadline) {
			if diskspace.IsFull(err) {
				return nil, fmt.Errorf("outbox %s cannot be created: the state directory is full (%v); free some space there", path, err)
			}
			return nil, fmt.Errorf("outbox %s: %w", path, err)
		}
		if fresh {
			// A file bbolt could not initialise is not a database: start it again.
			_ = os.Remove(path)
		}
		q.log.Warn("outbox cannot be created while the state directory is full; retrying", "file", path, "retry_in", delay.String())
		time.Sleep(delay)
		delay = min(delay*2, retryMax)
	}
}

// load reads the meta values and indexes the events on disk (one scan), creating the
// buckets only if they are missing (an Update writes, which a full disk refuses).
func (q *Queue) load(db *bolt.DB) error {
	missing := false
	err := db.View(func(tx *bolt.Tx) error {
		missing = tx.Bucket(bucketEvents) == nil || tx.Bucket(bucketMeta) == nil
		return nil
	})
	if err == nil && missing {
		err = db.Update(func(tx *bolt.Tx) error {
			if _, err := tx.CreateBucketIfNotExists(bucketEvents); err != nil {
				return err
			}
			_, err := tx.CreateBucketIfNotExists(bucketMeta)
			return err
		})
	}
	if err != nil {
		return err
	}
	q.stored, q.index = 0, consoleIndex{}
	return db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		q.acked = getU64(meta.Get(keyAcked))
		q.ackWant, q.ackDone = q.acked, q.acked
		q.last = getU64(meta.Get(keyLast))
		// A process before this one may have sent everything on disk: no record
		// there changes (see Queue.claim).
		q.claim = q.last
		return tx.Bucket(bucketEvents).ForEach(func(k, v []byte) error {
			q.stored += int64(len(v))
			if isConsole(v) {
				q.index.push(indexEntry{seq: getU64(k), size: int64(len(v))})
			}
			return nil
		})
	})
}

// isConsole tells from an event's encoding whether it carries console bytes (field 5 of
// Event), without decoding it.
func isConsole(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		if num == 5 {
			return true
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return false
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func putU64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

// LastSeq returns the highest sequence number ever committed: numbering goes on from
// it after a restart, so events are never renumbered.
func (q *Queue) LastSeq() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.last
}

// Acked returns the highest sequence number the coordinator acknowledged.
func (q *Queue) Acked() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.acked
}

// Append queues ev (numbered by the caller, in order) for writing. The returned channel
// is closed once ev is on disk (or the queue is closed: see Close).
func (q *Queue) Append(ev *pb.Event) <-chan struct{} {
	q.AppendBatch([]*pb.Event{ev})
	return q.Synced()
}

// AppendBatch queues events (numbered by the caller, in order) for writing, without a
// channel per event: Synced tells when they are on disk. Events appended after Close
// are dropped.
func (q *Queue) AppendBatch(evs []*pb.Event) {
	if len(evs) == 0 {
		return
	}
	// Encode outside the lock, into one buffer for the batch.
	size := 0
	for _, ev := range evs {
		size += proto.Size(ev)
	}
	buf := make([]byte, 0, size)
	recs := make([]rec, len(evs))
	for i, ev := range evs {
		start := len(buf)
		buf, _ = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, ev)
		recs[i] = rec{seq: ev.GetSeq(), data: buf[start:len(buf):len(buf)], console: ev.GetConsoleLog(), ev: ev}
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	full := q.disk.Full()
	for i := range recs {
		r := &recs[i]
		if r.console == nil {
			continue
		}
		// Console bytes held in memory are bounded while the disk cannot take them.
		if full || q.pendBytes+int64(len(r.data)) > q.maxPending {
			r.toGap()
			continue
		}
		q.pendBytes += int64(len(r.data))
	}
	q.pending = append(q.pending, recs...)
	q.appended += uint64(len(recs))
	q.mu.Unlock()
	q.wake()
}

func (q *Queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// toGap turns a pending console event into its ConsoleGap event.
func (r *rec) toGap() {
	g := gapFor(r.ev)
	r.shed = g.GetConsoleGap().GetBytes()
	r.data, _ = proto.Marshal(g)
	r.ev, r.console = g, nil
}

// Synced returns a channel closed once every event appended before the call is
// committed to disk. A failed write is retried, never reported as committed: the channel
// stays open until then. At Close, every channel still open is closed once the final
// write has been tried: closed after Close means durable only if Durable() says so.
func (q *Queue) Synced() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed || q.committed >= q.appended {
		return closedCh
	}
	if n := len(q.waiters); n > 0 && q.waiters[n-1].target == q.appended {
		return q.waiters[n-1].ch
	}
	ch := make(chan struct{})
	q.waiters = append(q.waiters, waiter{target: q.appended, ch: ch})
	return ch
}

// Durable reports whether every event appended so far is on disk.
func (q *Queue) Durable() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.committed >= q.appended
}

// WriteError returns the error of the last write if it failed (the writer retries it),
// nil once a write succeeded.
func (q *Queue) WriteError() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failing
}

// OnEnded sets a function called (from the queue's writer) once a lease's last
// transition, to DONE or FAILED, is on disk: the lease's journal record may go then.
func (q *Queue) OnEnded(fn func(job string)) {
	q.mu.Lock()
	q.onEnded = fn
	q.mu.Unlock()
}

func stepKey(job string) []byte { return []byte("step/" + job) }

// TransitionStep returns the Step of the last transition of job durably queued (0 if
// none).
func (q *Queue) TransitionStep(job string) int {
	var step uint64
	q.db.View(func(tx *bolt.Tx) error {
		step = getU64(tx.Bucket(bucketMeta).Get(stepKey(job)))
		return nil
	})
	return int(step)
}

// gapFor turns a console event into a ConsoleGap event with the same sequence number.
func gapFor(ev *pb.Event) *pb.Event {
	cl := ev.GetConsoleLog()
	return &pb.Event{Seq: ev.GetSeq(), Time: ev.GetTime(), Body: &pb.Event_ConsoleGap{ConsoleGap: &pb.ConsoleGap{
		JobId: cl.GetJobId(), Board: cl.GetBoard(), Bytes: uint64(len(cl.GetData()))}}}
}

// Ack forgets every event up to seq. It does not wait: the writer deletes them in its
// next transaction (first thing in it, before any append).
func (q *Queue) Ack(seq uint64) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrQueueClosed
	}
	if seq > q.ackWant {
		q.ackWant = seq
		q.acked = max(q.acked, seq)
	}
	q.mu.Unlock()
	q.wake()
	return nil
}

// After returns up to n committed events with sequence numbers above seq, in order, and
// a channel closed when more may be available.
func (q *Queue) After(seq uint64, n int) ([]*pb.Event, <-chan struct{}, error) {
	raws, changed, err := q.afterRaw(seq, n, nil, false)
	if err != nil {
		return nil, changed, err
	}
	evs := make([]*pb.Event, 0, len(raws))
	for _, r := range raws {
		ev := &pb.Event{}
		if err := proto.Unmarshal(r.data, ev); err != nil {
			return nil, changed, fmt.Errorf("outbox %s: event %d: %w", q.path, r.seq, err)
		}
		evs = append(evs, ev)
	}
	return evs, changed, nil
}

// rawEvent is a committed event, encoded.
type rawEvent struct {
	seq  uint64
	data []byte
}

// afterRaw returns up to n committed events above seq, encoded (runs of gaps expanded),
// copied into one buffer (reusing dst's slice), and a channel closed when more may be
// available. claim marks them as read by the link's sender (see Queue.claim).
func (q *Queue) afterRaw(seq uint64, n int, dst []rawEvent, claim bool) ([]rawEvent, <-chan struct{}, error) {
	if claim {
		q.serveMu.Lock()
	}
	dst = dst[:0]
	q.mu.Lock()
	changed, last := q.changed, q.last
	dst, served := q.fromRecent(seq, n, dst, claim)
	q.mu.Unlock()
	if claim {
		q.claim = max(q.claim, last)
		q.serveMu.Unlock()
	}
	if served || seq >= last {
		return dst, changed, nil
	}
	dst, err := q.readFile(seq, n, dst, last)
	if err != nil {
		return nil, changed, err
	}
	return dst, changed, nil
}

// readFile appends to dst up to n records above seq and at most last, read from the
// file (runs of gaps expanded) and copied into one buffer.
func (q *Queue) readFile(seq uint64, n int, dst []rawEvent, last uint64) ([]rawEvent, error) {
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		size := 0
		k, v := c.Seek(putU64(seq + 1))
		if k == nil || getU64(k) > seq+1 {
			// A run may hold seq+1 without starting at it.
			var pk, pv []byte
			if k == nil {
				pk, pv = lastRecord(c)
			} else {
				pk, pv = c.Prev()
			}
			if r, ok := decodeRun(pv); ok && pk != nil && getU64(pk)+r.n > seq+1 {
				k, v = pk, pv
			} else {
				k, v = c.Seek(putU64(seq + 1))
			}
		}
	scan:
		for ; k != nil && len(dst) < n && size < maxBatchBytes; k, v = c.Next() {
			first := getU64(k)
			if first > last {
				break // never above what was committed when asked
			}
			r, ok := decodeRun(v)
			if !ok {
				dst = append(dst, rawEvent{seq: first, data: v})
				size += len(v)
				continue
			}
			for i := max(first, seq+1) - first; i < r.n; i++ {
				if first+i > last || len(dst) >= n {
					break scan
				}
				b, err := proto.Marshal(r.event(first+i, i))
				if err != nil {
					return err
				}
				dst = append(dst, rawEvent{seq: first + i, data: b})
				size += len(b)
			}
		}
		// The values live in the file's mapping only while the transaction is open.
		buf := make([]byte, 0, size)
		for i := range dst {
			start := len(buf)
			buf = append(buf, dst[i].data...)
			dst[i].data = buf[start:len(buf):len(buf)]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox %s: read: %w", q.path, err)
	}
	return dst, nil
}

// fromRecent appends to dst up to n committed records above seq from q.recent, if it
// holds seq+1, and reports whether it did. With sender set, the records up to seq are
// forgotten: the sender is past them. Called with mu held.
func (q *Queue) fromRecent(seq uint64, n int, dst []rawEvent, sender bool) ([]rawEvent, bool) {
	if len(q.recent) == 0 || seq+1 < q.recent[0].seq {
		return dst, false
	}
	i := int(min(seq+1-q.recent[0].seq, uint64(len(q.recent))))
	if sender {
		q.dropRecent(i)
		i = 0
	}
	if i >= len(q.recent) {
		return dst, false
	}
	size := 0
	for _, r := range q.recent[i:] {
		if len(dst) >= n || size >= maxBatchBytes {
			break
		}
		dst = append(dst, r)
		size += len(r.data)
	}
	return dst, true
}

// dropRecent forgets the first n records of q.recent. Called with mu held.
func (q *Queue) dropRecent(n int) {
	for _, r := range q.recent[:n] {
		q.recentBytes -= len(r.data)
	}
	clear(q.recent[:n])
	q.recent = q.recent[n:]
	if len(q.recent) == 0 {
		q.recent = nil
	}
}

// keepRecent updates q.recent after a committed transaction: verbatim are the batch's
// records it stored as they are, in order; altered, that it changed records on disk
// (this batch's included: a shed may take what it stored). Called with mu held.
func (q *Queue) keepRecent(batch []rec, verbatim []int, altered bool) {
	if altered {
		q.dropRecent(len(q.recent))
		return
	}
	i := 0
	for i < len(q.recent) && q.recent[i].seq <= q.ackDone {
		i++
	}
	q.dropRecent(i)
	for _, b := range verbatim {
		r := &batch[b]
		if n := len(q.recent); n > 0 && q.recent[n-1].seq+1 != r.seq {
			q.dropRecent(n)
		}
		q.recent = append(q.recent, rawEvent{seq: r.seq, data: r.data})
		q.recentBytes += len(r.data)
	}
	i, over := 0, q.recentBytes-maxRecentBytes
	for ; i < len(q.recent) && over > 0; i++ {
		over -= len(q.recent[i].data)
	}
	q.dropRecent(i)
}

func hookKey(job string, source int32) []byte {
	return fmt.Appendf(nil, "hook/%s/%d", job, source)
}

// HookOffset returns how far a hook's output (job, log source number) was durably
// queued: the offset just past its last line, and false if no line was queued.
func (q *Queue) HookOffset(job string, source int32) (int64, bool) {
	var off uint64
	var found bool
	q.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(hookKey(job, source)); v != nil {
			off, found = getU64(v), true
		}
		return nil
	})
	return int64(off), found
}

// ForgetJobs drops what the queue remembers of jobs that are over. It does not wait: the
// writer applies it in its next transaction.
func (q *Queue) ForgetJobs(jobs ...string) error {
	if len(jobs) == 0 {
		return nil
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrQueueClosed
	}
	q.forget = append(q.forget, jobs...)
	q.mu.Unlock()
	q.wake()
	return nil
}

// Stats reports what the queue holds: the bytes of events on disk, the highest sequence
// number committed and the highest acknowledged.
func (q *Queue) Stats() (stored int64, last, acked uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stored, q.last, q.acked
}

// ShedBytes is how many console bytes the queue replaced by ConsoleGap events, on disk,
// since it was opened (counted when the gaps are committed).
func (q *Queue) ShedBytes() uint64 { return q.shedBytes.Load() }

// WriteStats tells how many write transactions the queue committed, and how many failed
// and were tried again, since it was opened.
func (q *Queue) WriteStats() (commits, retries uint64) { return q.commits.Load(), q.retries.Load() }

// OldestUnacked returns the time of the oldest event not yet acknowledged.
func (q *Queue) OldestUnacked() (time.Time, bool) {
	q.mu.Lock()
	acked := q.acked
	q.mu.Unlock()
	evs, _, err := q.After(acked, 1)
	if err != nil || len(evs) == 0 || evs[0].GetTime() == nil {
		return time.Time{}, false
	}
	return evs[0].GetTime().AsTime(), true
}

// Close writes what is pending (retrying a failing write for a short while) and closes
// the file. Every channel of Append and Synced still open is closed then; events not
// written by then are lost with the process, as in a crash (see Durable).
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.mu.Unlock()
	close(q.stop)
	<-q.done
	q.mu.Lock()
	ws := q.waiters
	q.waiters = nil
	lost := q.appended - q.committed
	q.mu.Unlock()
	for _, w := range ws {
		close(w.ch)
	}
	if lost > 0 {
		q.log.Error("outbox closed with events not written to disk", "file", q.path, "events", lost, "error", fmt.Sprint(q.failing))
	}
	if shed := q.shedBytes.Load(); shed > 0 {
		q.log.Info("outbox closed", "file", q.path, "shed_console_bytes", shed)
	}
	q.unreclaim()
	err := q.db.Close()
	if q.ownDisk {
		q.disk.Close()
	}
	return err
}

// writer is the goroutine that writes: appends, acks and forgotten jobs, group-committed,
// retried with back-off while writes fail. After Close it writes what is pending and
// returns, or gives up once a failing write has been retried for closeFlush.
func (q *Queue) writer() {
	defer close(q.done)
	var delay time.Duration
	var stopAt time.Time // set once Close was called
	var lastLog time.Time
	for {
		switch {
		case stopAt.IsZero() && delay > 0:
			// Back-off: new appends do not cut it short; space coming back does.
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-q.disk.Changed():
			case <-q.stop:
				stopAt = time.Now().Add(closeFlush)
			}
			t.Stop()
		case stopAt.IsZero():
			select {
			case <-q.kick:
			case <-q.stop:
				stopAt = time.Now().Add(closeFlush)
			}
		case delay > 0:
			if time.Now().After(stopAt) {
				return
			}
			t := time.NewTimer(min(delay, time.Until(stopAt)))
			select {
			case <-t.C:
			case <-q.disk.Changed():
			}
			t.Stop()
		}
		q.txMu.Lock()
		err, more := q.flush()
		q.txMu.Unlock()
		if err != nil {
			q.retries.Add(1)
			full := q.disk.Failed(err)
			q.mu.Lock()
			first := q.failing == nil
			q.failing = err
			q.mu.Unlock()
			if !full && (first || time.Since(lastLog) >= logEvery) {
				q.log.Error("outbox write failed; retrying (the events stay pending, in order)", "file", q.path, "error", err.Error())
				lastLog = time.Now()
			}
			delay = min(max(delay*2, retryMin), retryMax)
			continue
		}
		q.mu.Lock()
		recovered := q.recovered || q.failing != nil
		q.failing, q.recovered = nil, false
		q.mu.Unlock()
		if recovered && !lastLog.IsZero() {
			q.log.Info("outbox writes again", "file", q.path)
			lastLog = time.Time{}
		}
		delay = 0
		if more {
			q.wake()
		} else if !stopAt.IsZero() {
			return
		}
	}
}

// flush writes one transaction: the acks asked for, the jobs to forget and a batch of
// pending events. more reports that work is left after it.
func (q *Queue) flush() (err error, more bool) {
	q.mu.Lock()
	ackTo := min(q.ackWant, q.last)
	forget := q.forget[:len(q.forget):len(q.forget)]
	n, size := 0, 0
	for n < len(q.pending) && n < maxBatchEvents && size < maxBatchBytes {
		size += len(q.pending[n].data)
		n++
	}
	batch := q.pending[:n:n]
	full := q.disk.Full()
	stored := q.stored
	failing := q.failing != nil
	q.mu.Unlock()
	doAck := ackTo > q.ackDone
	if !doAck && len(forget) == 0 && n == 0 {
		return nil, false
	}
	if failing && doAck && n > 0 {
		// While writes fail (a full disk), acks go alone first: deleting frees pages.
		batch = nil
	}
	if err := q.write(ackTo, forget, batch, full, stored); err != nil {
		return err, true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return nil, len(q.pending) > 0 || len(q.forget) > 0 || min(q.ackWant, q.last) > q.ackDone
}

// write runs one write transaction and, once it is committed, applies it in memory.
func (q *Queue) write(ackTo uint64, forget []string, batch []rec, full bool, stored int64) error {
	doAck := ackTo > q.ackDone
	// A transaction that stores gaps may merge them with gaps already committed: while it
	// runs, the sender may not claim more (see Queue.claim). Others merge nothing.
	t := &txw{q: q, claim: math.MaxUint64, stored: stored}
	if mayMerge(batch, full, stored, q.maxBytes) {
		q.serveMu.Lock()
		defer q.serveMu.Unlock()
		t.claim = q.claim
	}
	var (
		ackPop int
		last   uint64
		ended  []string
	)
	err := q.db.Update(func(tx *bolt.Tx) error {
		if q.failNext != nil {
			if err := q.failNext(len(batch)); err != nil {
				return err
			}
		}
		t.events, t.meta = tx.Bucket(bucketEvents), tx.Bucket(bucketMeta)
		t.events.FillPercent = 0.95 // keys only grow: fill pages
		if doAck {
			if err := t.ack(ackTo); err != nil {
				return err
			}
			for ackPop < q.index.len() && q.index.at(ackPop).seq <= ackTo {
				ackPop++
			}
			if err := t.meta.Put(keyAcked, putU64(ackTo)); err != nil {
				return err
			}
		}
		for _, job := range forget {
			c := t.meta.Cursor()
			prefix := []byte("hook/" + job + "/")
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
			if err := t.meta.Delete(stepKey(job)); err != nil {
				return err
			}
		}
		t.shedIdx = ackPop
		if len(batch) == 0 {
			return nil
		}
		keys := make([]byte, 8*len(batch))
		type hookAt struct {
			job string
			src int32
		}
		hooks := map[hookAt]uint64{}
		steps := map[string]uint32{}
		for i := range batch {
			r := &batch[i]
			last = max(last, r.seq)
			console := r.console != nil
			if console && !full {
				if over := t.stored + int64(len(r.data)) - q.maxBytes; over > 0 {
					if err := t.shed(over); err != nil {
						return err
					}
				}
			}
			if console && (full || t.stored+int64(len(r.data)) > q.maxBytes) {
				// No room for these bytes: the event is kept as its gap.
				cl := r.console
				t.shedBytes += uint64(len(cl.GetData()))
				if err := t.placeGap(r.seq, gapPair{cl.GetJobId(), cl.GetBoard(), uint64(len(cl.GetData()))}, r.ev.GetTime().AsTime().UnixNano(), 0); err != nil {
					return err
				}
				continue
			}
			if g := r.ev.GetConsoleGap(); g != nil {
				t.shedBytes += r.shed
				if err := t.placeGap(r.seq, gapPair{g.GetJobId(), g.GetBoard(), g.GetBytes()}, r.ev.GetTime().AsTime().UnixNano(), 0); err != nil {
					return err
				}
				continue
			}
			key := keys[8*i : 8*i+8 : 8*i+8]
			binary.BigEndian.PutUint64(key, r.seq)
			if err := t.events.Put(key, r.data); err != nil {
				return err
			}
			t.verbatim = append(t.verbatim, i)
			t.stored += int64(len(r.data))
			if console {
				t.newConsole = append(t.newConsole, indexEntry{seq: r.seq, size: int64(len(r.data))})
				continue
			}
			// How far each hook's output is durably reported, and the last transition of
			// each lease held: in the same transaction as the events.
			if h := r.ev.GetHookLog(); h != nil && h.GetOffset() > 0 {
				hooks[hookAt{h.GetJobId(), int32(h.GetSource())}] = h.GetOffset()
			}
			if st := r.ev.GetStateTransition(); st != nil && st.GetStep() > 0 {
				steps[st.GetJobId()] = st.GetStep()
				if to := st.GetTo(); to == pb.LeasePhase_LEASE_PHASE_DONE || to == pb.LeasePhase_LEASE_PHASE_FAILED {
					ended = append(ended, st.GetJobId())
				}
			}
		}
		for h, off := range hooks {
			if err := t.meta.Put(hookKey(h.job, h.src), putU64(off)); err != nil {
				return err
			}
		}
		for job, step := range steps {
			if err := t.meta.Put(stepKey(job), putU64(uint64(step))); err != nil {
				return err
			}
		}
		return t.meta.Put(keyLast, putU64(max(last, q.last)))
	})
	if err != nil {
		return fmt.Errorf("outbox %s: write: %w", q.path, err)
	}
	q.commits.Add(1)
	q.shedVisits.Add(t.visited)
	q.shedBytes.Add(t.shedBytes)
	// Committed: apply in memory. The write error clears here, before any waiter is
	// released, so that nobody told its events are durable still reads it.
	q.mu.Lock()
	if q.failing != nil {
		q.failing, q.recovered = nil, true
	}
	if doAck {
		q.ackDone = ackTo
	}
	q.stored = t.stored
	q.keepRecent(batch, t.verbatim, t.altered)
	q.index.pop(t.shedIdx)
	for _, e := range t.newConsole[t.shedNew:] {
		if !t.gone[e.seq] {
			q.index.push(e)
		}
	}
	q.forget = q.forget[len(forget):]
	var waiters []waiter
	onEnded := q.onEnded
	if len(batch) > 0 {
		for i := range batch {
			if batch[i].console != nil {
				q.pendBytes -= int64(len(batch[i].data))
			}
		}
		// Compact rather than reslice, so that the committed events can be collected.
		rest := len(q.pending) - len(batch)
		if rest == 0 {
			q.pending = q.pending[:0:0]
		} else {
			q.pending = append(make([]rec, 0, rest), q.pending[len(batch):]...)
		}
		q.committed += uint64(len(batch))
		q.last = max(q.last, last)
		i := 0
		for i < len(q.waiters) && q.waiters[i].target <= q.committed {
			i++
		}
		waiters = q.waiters[:i]
		q.waiters = append(q.waiters[:0:0], q.waiters[i:]...)
	}
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
	for _, w := range waiters {
		close(w.ch)
	}
	if onEnded != nil {
		for _, job := range ended {
			onEnded(job)
		}
	}
	return nil
}

// mayMerge tells whether a write transaction may store gaps: the disk is full, the batch
// holds gaps, or it may pass the bound.
func mayMerge(batch []rec, full bool, stored, maxBytes int64) bool {
	if len(batch) == 0 {
		return false
	}
	if full {
		return true
	}
	size := stored
	for i := range batch {
		if batch[i].ev.GetConsoleGap() != nil {
			return true
		}
		size += int64(len(batch[i].data))
	}
	return size > maxBytes
}

// txw is the state of one write transaction.
type txw struct {
	q            *Queue
	events, meta *bolt.Bucket
	claim        uint64 // records starting at or below it may have been read by the sender
	stored       int64
	shedIdx      int          // index entries shed (or acknowledged)
	newConsole   []indexEntry // console events stored by this transaction
	shedNew      int          // of newConsole, those shed by it
	gone         map[uint64]bool
	visited      uint64
	shedBytes    uint64
	verbatim     []int // of the batch, the records stored as they are
	altered      bool  // records on disk were shed or gaps stored
}

// ack deletes the records up to seq; a run that goes on past seq keeps its rest.
func (t *txw) ack(seq uint64) error {
	c := t.events.Cursor()
	for k, v := c.First(); k != nil && getU64(k) <= seq; k, v = c.Next() {
		first := getU64(k)
		if r, ok := decodeRun(v); ok && first+r.n-1 > seq {
			rest := r.trim(seq + 1 - first)
			data := storedGap(seq+1, rest)
			t.stored -= int64(len(v))
			if err := c.Delete(); err != nil {
				return err
			}
			if err := t.events.Put(putU64(seq+1), data); err != nil {
				return err
			}
			t.stored += int64(len(data))
			return nil
		}
		t.stored -= int64(len(v))
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// shed replaces console events on disk by their gaps, oldest first, until need bytes
// are freed or no console event is left.
func (t *txw) shed(need int64) error {
	t.altered = true
	for need > 0 {
		var e *indexEntry
		switch {
		case t.shedIdx < t.q.index.len():
			e = t.q.index.atp(t.shedIdx)
			t.shedIdx++
		case t.shedNew < len(t.newConsole):
			e = &t.newConsole[t.shedNew]
			t.shedNew++
		default:
			return nil
		}
		key := putU64(e.seq)
		v := t.events.Get(key)
		t.visited++
		if v == nil || isRunValue(v) || field(v, 5) == nil {
			continue
		}
		ev := &pb.Event{}
		if err := proto.Unmarshal(v, ev); err != nil || ev.GetConsoleLog() == nil {
			continue
		}
		cl := ev.GetConsoleLog()
		before := t.stored
		t.shedBytes += uint64(len(cl.GetData()))
		if err := t.placeGap(e.seq, gapPair{cl.GetJobId(), cl.GetBoard(), uint64(len(cl.GetData()))}, ev.GetTime().AsTime().UnixNano(), len(v)); err != nil {
			return err
		}
		need -= before - t.stored
	}
	return nil
}

// placeGap stores the gap of seq, merged with the gap records next to it that the
// sender has not claimed. replaced is the size of the record seq holds now (the console
// event it replaces), 0 if none.
func (t *txw) placeGap(seq uint64, g gapPair, at int64, replaced int) error {
	t.altered = true
	merged := gapRun{n: 1, at: at, pairs: []gapPair{g}}
	start := seq
	removed := int64(replaced)
	var drop []uint64 // keys merged into start, to delete
	if replaced > 0 {
		drop = append(drop, seq)
	}
	if seq > t.claim {
		key := putU64(seq)
		c := t.events.Cursor()
		k, _ := c.Seek(key)
		var pk, pv []byte
		if k == nil {
			pk, pv = lastRecord(c)
		} else {
			pk, pv = c.Prev()
		}
		if pk != nil && getU64(pk) > t.claim {
			if r, ok := asGapRun(pv); ok && getU64(pk)+r.n == seq && r.pairsWith(merged) <= maxRunPairs {
				start = getU64(pk)
				merged = r.plus(merged)
				removed += int64(len(pv))
			}
		}
		nk := putU64(seq + 1)
		if v := t.events.Get(nk); v != nil {
			if r, ok := asGapRun(v); ok && merged.pairsWith(r) <= maxRunPairs {
				merged = merged.plus(r)
				removed += int64(len(v))
				drop = append(drop, seq+1)
			}
		}
	}
	for _, k := range drop {
		if k == start {
			continue
		}
		if err := t.events.Delete(putU64(k)); err != nil {
			return err
		}
		if t.gone == nil {
			t.gone = map[uint64]bool{}
		}
		t.gone[k] = true
	}
	data := storedGap(start, merged)
	if err := t.events.Put(putU64(start), data); err != nil {
		return err
	}
	t.stored += int64(len(data)) - removed
	return nil
}

// lastRecord returns the last record of c's bucket, nil if it has none. bbolt's
// Cursor.Last (v1.5.0) never returns on a bucket of more than one page whose every key
// was deleted in the same write transaction (an ack of everything, then a gap placed
// while the disk is full): its loop over empty pages and Cursor.prev's stop at the
// first key call each other. First does return, so it tells an empty bucket first.
func lastRecord(c *bolt.Cursor) (k, v []byte) {
	if k, _ := c.First(); k == nil {
		return nil, nil
	}
	return c.Last()
}

// indexEntry is a console event on disk.
type indexEntry struct {
	seq  uint64
	size int64
}

// consoleIndex is a FIFO of the console events on disk, oldest first.
type consoleIndex struct {
	items []indexEntry
	head  int
}

func (x *consoleIndex) len() int              { return len(x.items) - x.head }
func (x *consoleIndex) at(i int) indexEntry   { return x.items[x.head+i] }
func (x *consoleIndex) atp(i int) *indexEntry { return &x.items[x.head+i] }
func (x *consoleIndex) push(e indexEntry)     { x.items = append(x.items, e) }
func (x *consoleIndex) pop(n int) {
	x.head += n
	if x.head > 1024 && x.head > len(x.items)/2 {
		x.items = append(x.items[:0:0], x.items[x.head:]...)
		x.head = 0
	}
}
