package grpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"
)

// Queue is the supervisor's outbox on disk: numbered events kept until the coordinator
// acknowledges them, so that they survive a lost link and a daemon restart.
//
// Its size is bounded (MaxBytes): past the bound, console output is given up first —
// a console event's bytes are replaced by a ConsoleGap event saying how many bytes were
// dropped, under the same sequence number, so the stream stays gap-free. State
// transitions, errors, hook lines and board status are never dropped.
//
// Appends are group-committed: a writer goroutine writes everything queued in one
// transaction. An event is durable once Append's returned channel is closed.
type Queue struct {
	path     string
	db       *bolt.DB
	maxBytes int64

	mu      sync.Mutex
	pending []*pb.Event
	waiters []chan struct{}
	kick    chan struct{}
	changed chan struct{} // closed and replaced when events were committed or acked
	stored  int64         // bytes of events on disk
	last    uint64        // highest sequence number committed
	acked   uint64        // highest sequence number acknowledged
	closed  bool
	stop    chan struct{}
	done    chan struct{}
	err     error // a write error: the queue is broken
	onEnded func(job string)
}

var (
	bucketEvents = []byte("events")
	bucketMeta   = []byte("meta")
	keyAcked     = []byte("acked")
	keyLast      = []byte("last")
)

// ErrQueueClosed is returned by a closed Queue.
var ErrQueueClosed = errors.New("outbox queue closed")

// QueueOptions configure OpenQueue.
type QueueOptions struct {
	// MaxBytes bounds the events kept on disk (default 256 MiB).
	MaxBytes int64
	// NoSync skips fsync (tests and benchmarks only).
	NoSync bool
}

// OpenQueue opens (or creates) the queue file at path.
func OpenQueue(path string, opts QueueOptions) (*Queue, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = 256 << 20
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: opts.NoSync})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("outbox %s is locked by another boardvisor process", path)
		}
		return nil, fmt.Errorf("outbox %s: %w", path, err)
	}
	q := &Queue{path: path, db: db, maxBytes: opts.MaxBytes, kick: make(chan struct{}, 1),
		changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		ev, err := tx.CreateBucketIfNotExists(bucketEvents)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		q.acked = getU64(meta.Get(keyAcked))
		q.last = getU64(meta.Get(keyLast))
		return ev.ForEach(func(k, v []byte) error {
			q.stored += int64(len(v))
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("outbox %s: %w", path, err)
	}
	go q.writer()
	return q, nil
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
// is closed once ev is on disk.
func (q *Queue) Append(ev *pb.Event) <-chan struct{} {
	ch := make(chan struct{})
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		close(ch)
		return ch
	}
	q.pending = append(q.pending, ev)
	q.waiters = append(q.waiters, ch)
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
	return ch
}

func (q *Queue) writer() {
	defer close(q.done)
	for {
		select {
		case <-q.kick:
		case <-q.stop:
			q.flush()
			return
		}
		q.flush()
	}
}

func (q *Queue) flush() {
	q.mu.Lock()
	evs, waiters := q.pending, q.waiters
	q.pending, q.waiters = nil, nil
	q.mu.Unlock()
	if len(evs) == 0 {
		return
	}
	var stored, start int64
	var last uint64
	var ended []string
	err := q.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		q.mu.Lock()
		stored = q.stored
		q.mu.Unlock()
		start = stored
		for _, ev := range evs {
			data, err := proto.Marshal(ev)
			if err != nil {
				return err
			}
			if stored+int64(len(data)) > q.maxBytes {
				var freed int64
				if ev.GetConsoleLog() != nil {
					data, err = proto.Marshal(gapFor(ev))
					if err != nil {
						return err
					}
				}
				freed, err = shedConsole(b, stored+int64(len(data))-q.maxBytes)
				if err != nil {
					return err
				}
				stored -= freed
			}
			if err := b.Put(putU64(ev.GetSeq()), data); err != nil {
				return err
			}
			// How far each hook's output is durably reported, in the same transaction as
			// its lines: after a crash the hook is read on from exactly here.
			if h := ev.GetHookLog(); h != nil && h.GetOffset() > 0 {
				if err := tx.Bucket(bucketMeta).Put(hookKey(h.GetJobId(), int32(h.GetSource())), putU64(h.GetOffset())); err != nil {
					return err
				}
			}
			// Likewise the last transition of each lease held: after a crash the lease's
			// journalled transitions past it are sent again.
			if st := ev.GetStateTransition(); st != nil && st.GetStep() > 0 {
				if err := tx.Bucket(bucketMeta).Put(stepKey(st.GetJobId()), putU64(uint64(st.GetStep()))); err != nil {
					return err
				}
				if to := st.GetTo(); to == pb.LeasePhase_LEASE_PHASE_DONE || to == pb.LeasePhase_LEASE_PHASE_FAILED {
					ended = append(ended, st.GetJobId())
				}
			}
			stored += int64(len(data))
			last = max(last, ev.GetSeq())
		}
		return tx.Bucket(bucketMeta).Put(keyLast, putU64(last))
	})
	q.mu.Lock()
	if err != nil {
		q.err = fmt.Errorf("outbox %s: write: %w", q.path, err)
	} else {
		// An Ack may have run meanwhile: apply this flush's change, not its total.
		q.stored += stored - start
		q.last = max(q.last, last)
	}
	close(q.changed)
	q.changed = make(chan struct{})
	onEnded := q.onEnded
	q.mu.Unlock()
	for _, w := range waiters {
		close(w)
	}
	if err == nil && onEnded != nil {
		for _, job := range ended {
			onEnded(job)
		}
	}
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

// shedConsole replaces the oldest stored console events by gaps until at least need
// bytes are freed or no console event is left. It returns the bytes freed.
func shedConsole(b *bolt.Bucket, need int64) (int64, error) {
	var freed int64
	c := b.Cursor()
	type repl struct {
		k, v []byte
	}
	var repls []repl
	for k, v := c.First(); k != nil && freed < need; k, v = c.Next() {
		ev := &pb.Event{}
		if err := proto.Unmarshal(v, ev); err != nil || ev.GetConsoleLog() == nil {
			continue
		}
		g, err := proto.Marshal(gapFor(ev))
		if err != nil {
			return freed, err
		}
		freed += int64(len(v) - len(g))
		repls = append(repls, repl{append([]byte(nil), k...), g})
	}
	for _, r := range repls {
		if err := b.Put(r.k, r.v); err != nil {
			return freed, err
		}
	}
	return freed, nil
}

// Ack forgets every event up to seq.
func (q *Queue) Ack(seq uint64) error {
	var freed int64
	err := q.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		c := b.Cursor()
		for k, v := c.First(); k != nil && getU64(k) <= seq; k, v = c.First() {
			freed += int64(len(v))
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if getU64(meta.Get(keyAcked)) < seq {
			return meta.Put(keyAcked, putU64(seq))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("outbox %s: ack %d: %w", q.path, seq, err)
	}
	q.mu.Lock()
	q.stored -= freed
	q.acked = max(q.acked, seq)
	close(q.changed)
	q.changed = make(chan struct{})
	q.mu.Unlock()
	return nil
}

// After returns up to n committed events with sequence numbers above seq, in order, and
// a channel closed when more may be available.
func (q *Queue) After(seq uint64, n int) ([]*pb.Event, <-chan struct{}, error) {
	q.mu.Lock()
	changed, err := q.changed, q.err
	q.mu.Unlock()
	if err != nil {
		return nil, changed, err
	}
	var evs []*pb.Event
	err = q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(putU64(seq + 1)); k != nil && len(evs) < n; k, v = c.Next() {
			ev := &pb.Event{}
			if err := proto.Unmarshal(v, ev); err != nil {
				return fmt.Errorf("event %d: %w", getU64(k), err)
			}
			evs = append(evs, ev)
		}
		return nil
	})
	if err != nil {
		return nil, changed, fmt.Errorf("outbox %s: read: %w", q.path, err)
	}
	return evs, changed, nil
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

// ForgetJobs drops what the queue remembers of jobs that are over, in one transaction.
func (q *Queue) ForgetJobs(jobs ...string) error {
	if len(jobs) == 0 {
		return nil
	}
	return q.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		for _, job := range jobs {
			c := meta.Cursor()
			prefix := []byte("hook/" + job + "/")
			for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
				if err := c.Delete(); err != nil {
					return err
				}
			}
			if err := meta.Delete(stepKey(job)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Stats reports what the queue holds.
func (q *Queue) Stats() (stored int64, last, acked uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stored, q.last, q.acked
}

// Close writes what is pending and closes the file.
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
	return q.db.Close()
}
