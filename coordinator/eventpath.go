package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The event path: supervisors' events are stored by one writer goroutine, which takes
// every batch waiting (from all supervisors) into one transaction, and are acknowledged
// once it commits. The state-changing ones (transitions, job errors, board status) are
// then handed to the state loop, which applies them in order; if it falls behind by more
// than maxApplyBacklog events, it is handed only the range, and reads those events back
// from the store when their turn comes. Nothing is lost either way: what is stored is
// applied, because each supervisor's applied_seq moves in the transaction that applies.

const (
	// maxStoreEvents bounds the events stored in one transaction of the writer.
	maxStoreEvents = 4096
	// maxApplyBacklog bounds the events held in memory for the state loop.
	maxApplyBacklog = 20000
	// insertRows bounds the events of one INSERT (8 parameters each).
	insertRows = 250
)

// eventRow is an event as stored.
type eventRow struct {
	seq        int64
	at         int64
	job, board string
	kind       string
	payload    string
}

// storeReq is one batch of a supervisor's events waiting for the writer.
type storeReq struct {
	sup        string
	rows       []eventRow
	first, top uint64
	relevant   []*pb.Event
	done       chan error
}

type storeQueue struct {
	mu      sync.Mutex
	pending []*storeReq
	kick    chan struct{}
	done    chan struct{}
}

func (q *storeQueue) init() {
	q.kick = make(chan struct{}, 1)
	q.done = make(chan struct{})
}

// Events stores a batch of a supervisor's events and returns once they are durable (the
// link then acknowledges them). Their effects on leases and boards are applied by the
// state loop after that, in order.
func (c *Coordinator) Events(ctx context.Context, s *link.Session, evs []*pb.Event) error {
	return c.SubmitEvents(ctx, s, evs)()
}

// SubmitEvents queues a batch of a supervisor's events for the writer and returns at
// once; wait returns once they are durable (link.EventPipeliner). The link submits a
// session's batches in sequence order, and the writer stores them in that order and
// never above a hole (storeBatch), so a session may have several batches being stored
// while the next arrives: their commits are shared, which is what lets one supervisor
// stream faster than one commit per batch.
func (c *Coordinator) SubmitEvents(ctx context.Context, s *link.Session, evs []*pb.Event) (wait func() error) {
	if len(evs) == 0 {
		return func() error { return nil }
	}
	fail := func(err error) func() error { return func() error { return err } }
	if _, active := c.currentTerm(); !active {
		return fail(c.standbyError())
	}
	r := &storeReq{sup: s.ID, first: evs[0].GetSeq(), top: evs[len(evs)-1].GetSeq(), done: make(chan error, 1)}
	now := c.now()
	for _, ev := range evs {
		kind, job, board := eventKind(ev)
		payload, err := marshalPayload(ev)
		if err != nil {
			return fail(fmt.Errorf("event %d: encode: %w", ev.GetSeq(), err))
		}
		at := now
		if ev.GetTime() != nil {
			at = ev.GetTime().AsTime()
		}
		r.rows = append(r.rows, eventRow{seq: int64(ev.GetSeq()), at: at.UnixNano(), job: job, board: board, kind: kind, payload: string(payload)})
		if relevantKind(kind) {
			if ev.GetTime() == nil {
				ev = proto.CloneOf(ev)
				ev.Time = timestamppb.New(at)
			}
			r.relevant = append(r.relevant, ev)
		}
	}
	c.store.mu.Lock()
	c.store.pending = append(c.store.pending, r)
	c.store.mu.Unlock()
	select {
	case c.store.kick <- struct{}{}:
	default:
	}
	return func() error {
		select {
		case err := <-r.done:
			if err == nil {
				c.logs.stored(evs) // wake the LeaseLog streams of these leases (leaselog.go)
			}
			return err
		case <-ctx.Done():
			return ctx.Err() // the supervisor sends them again; storing them twice is harmless
		case <-c.done:
			return errClosed
		}
	}
}

// errAboveHole refuses a batch whose events do not follow what is stored of its
// supervisor: an earlier batch of the same stream was not stored.
var errAboveHole = errors.New("events follow a batch that was not stored; the supervisor sends them again")

// relevantKind tells which kinds of events change leases or boards.
func relevantKind(kind string) bool {
	return kind == "state_transition" || kind == "error" || kind == "board_status"
}

// writer is the event writer goroutine.
func (c *Coordinator) writer() {
	defer close(c.store.done)
	for {
		select {
		case <-c.done:
			c.failStores(errClosed)
			return
		case <-c.store.kick:
		}
		for {
			c.store.mu.Lock()
			var batch []*storeReq
			n := 0
			for len(c.store.pending) > 0 && (n == 0 || n+len(c.store.pending[0].rows) <= maxStoreEvents) {
				r := c.store.pending[0]
				c.store.pending = c.store.pending[1:]
				batch = append(batch, r)
				n += len(r.rows)
			}
			c.store.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			refused, err := c.storeBatch(batch)
			if err == nil {
				for _, r := range batch {
					if !refused[r] {
						c.applyQ.push(&eventBatch{sup: r.sup, first: r.first, top: r.top, events: r.relevant})
					}
				}
				c.kickLoop()
			} else if !isStandby(err) {
				c.log.Error("events not stored: the supervisors will send them again", "error", err, "batches", len(batch))
			}
			for _, r := range batch {
				switch {
				case err != nil:
					r.done <- err
				case refused[r]:
					r.done <- fmt.Errorf("events %d to %d of %s: %w", r.first, r.top, r.sup, errAboveHole)
				default:
					r.done <- nil
				}
			}
		}
	}
}

func (c *Coordinator) failStores(err error) {
	c.store.mu.Lock()
	pending := c.store.pending
	c.store.pending = nil
	c.store.mu.Unlock()
	for _, r := range pending {
		r.done <- err
	}
}

// storeBatch stores batches in one transaction: the events (a replay of one stored
// before changes nothing) and each supervisor's last stored seq and contact time. A
// request whose first event is above its supervisor's last stored seq + 1 (an earlier
// request of its stream failed while it waited) is refused, with every later one of
// that supervisor in the batch, so that a supervisor's events are stored without a
// hole: its last_seq is where its replay starts.
func (c *Coordinator) storeBatch(batch []*storeReq) (refused map[*storeReq]bool, err error) {
	term, active := c.currentTerm()
	if !active {
		return nil, c.standbyError()
	}
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	tx, err := c.wdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()
	if err := c.fence(ctx, tx, term); err != nil {
		return nil, err
	}
	stored, err := lastStored(ctx, tx, batch)
	if err != nil {
		return nil, fmt.Errorf("read the supervisors' stored seqs: %w", err)
	}
	// top is, per supervisor, the highest seq stored once this transaction commits.
	top := stored
	changed := map[string]bool{}
	refused = map[*storeReq]bool{}
	broken := map[string]bool{}
	// Many rows an INSERT: one round trip for up to insertRows events (PostgreSQL's
	// statements go over the network), through a statement prepared once, as parsing
	// a 2,000-parameter statement was a third of the writer's time; the rest of a batch
	// gets a statement of its own.
	full := tx.StmtContext(ctx, c.stmts.get(c.insertEvents))
	args := make([]any, 0, 8*insertRows)
	insert := func() error {
		if len(args) == 0 {
			return nil
		}
		var err error
		if len(args) == 8*insertRows {
			_, err = full.ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, insertEventsSQL(len(args)/8, isSQLite(c.opts.Driver)), args...)
		}
		args = args[:0]
		return err
	}
	for _, r := range batch {
		if broken[r.sup] || r.first > top[r.sup]+1 {
			broken[r.sup] = true
			refused[r] = true
			continue
		}
		for _, e := range r.rows {
			if uint64(e.seq) <= top[r.sup] {
				continue // stored before: a replay
			}
			args = append(args, r.sup, e.seq, e.at, e.job, e.board, e.kind, e.payload, term)
			if len(args) == 8*insertRows {
				if err := insert(); err != nil {
					return nil, fmt.Errorf("store events of %s: %w", r.sup, err)
				}
			}
		}
		top[r.sup] = max(top[r.sup], r.top)
		changed[r.sup] = true
	}
	if err := insert(); err != nil {
		return nil, fmt.Errorf("store events: %w", err)
	}
	now := c.now().UnixNano()
	for sup := range changed {
		if _, err := tx.ExecContext(ctx, `UPDATE supervisors SET last_seq = CASE WHEN last_seq < $2 THEN $2 ELSE last_seq END,
			last_contact = $3 WHERE id = $1`, sup, int64(top[sup]), now); err != nil {
			return nil, err
		}
	}
	return refused, tx.Commit()
}

// insertEventsSQL is the INSERT of rows events. SQLite gets anonymous "?" parameters:
// it finds a "$n" one by a linear search of the statement's names, which made the
// search most of the coordinator's CPU when events streamed in.
func insertEventsSQL(rows int, sqlite bool) string {
	var q strings.Builder
	q.WriteString(`INSERT INTO events (supervisor_id, seq, at_ns, job_id, board, kind, payload, term) VALUES `)
	for i := 0; i < rows; i++ {
		if i > 0 {
			q.WriteString(", ")
		}
		if sqlite {
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
		} else {
			n := 8 * i
			fmt.Fprintf(&q, "($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4, n+5, n+6, n+7, n+8)
		}
	}
	q.WriteString(` ON CONFLICT (supervisor_id, seq) DO NOTHING`)
	return q.String()
}

// lastStored returns, for each supervisor of the batch, the highest seq of its events
// stored (supervisors.last_seq), read in the writer's transaction.
func lastStored(ctx context.Context, tx *sql.Tx, batch []*storeReq) (map[string]uint64, error) {
	out := map[string]uint64{}
	var q strings.Builder
	var args []any
	for _, r := range batch {
		if _, ok := out[r.sup]; ok {
			continue
		}
		out[r.sup] = 0
		if len(args) > 0 {
			q.WriteString(", ")
		}
		args = append(args, r.sup)
		fmt.Fprintf(&q, "$%d", len(args))
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, last_seq FROM supervisors WHERE id IN (`+q.String()+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var seq int64
		if err := rows.Scan(&id, &seq); err != nil {
			return nil, err
		}
		out[id] = uint64(max(seq, 0))
	}
	return out, rows.Err()
}

// eventBatch is stored events waiting to be applied: events holds the state-changing
// ones of seqs first..top, or, with catchUp, they are to be read from the store.
type eventBatch struct {
	sup        string
	first, top uint64
	events     []*pb.Event
	catchUp    bool
}

// applyQueue holds stored batches for the state loop, bounded in events.
type applyQueue struct {
	mu      sync.Mutex
	batches []*eventBatch
	events  int
	limit   int // maxApplyBacklog; tests lower it
}

func (q *applyQueue) push(b *eventBatch) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.limit == 0 {
		q.limit = maxApplyBacklog
	}
	if q.events+len(b.events) > q.limit {
		b = &eventBatch{sup: b.sup, first: b.first, top: b.top, catchUp: true}
	}
	if n := len(q.batches); n > 0 && b.catchUp {
		if last := q.batches[n-1]; last.catchUp && last.sup == b.sup {
			last.top = max(last.top, b.top)
			return
		}
	}
	q.batches = append(q.batches, b)
	q.events += len(b.events)
}

// take returns batches holding up to about max events, oldest first.
func (q *applyQueue) take(max int) []*eventBatch {
	q.mu.Lock()
	defer q.mu.Unlock()
	n, i := 0, 0
	for i < len(q.batches) && (i == 0 || n+len(q.batches[i].events) <= max) {
		n += len(q.batches[i].events)
		i++
	}
	out := q.batches[:i:i]
	q.batches = q.batches[i:]
	q.events -= n
	return out
}

func (q *applyQueue) reset() {
	q.mu.Lock()
	q.batches, q.events = nil, 0
	q.mu.Unlock()
}

// applyBatches applies stored events to leases and boards, in order, each once: a
// supervisor's events at or below its applied_seq are skipped, and a gap (events stored
// but not handed over in memory) is read back from the store first.
func (c *Coordinator) applyBatches(ctx context.Context, tx *sql.Tx, fx *effects, batches []*eventBatch) error {
	moved := map[string]bool{}
	for _, b := range batches {
		if err := c.applyUpTo(ctx, tx, fx, b); err != nil {
			return err
		}
		moved[b.sup] = true
	}
	for sup := range moved {
		if _, err := tx.ExecContext(ctx, `UPDATE supervisors SET applied_seq = $1 WHERE id = $2 AND applied_seq < $1`,
			int64(c.applied[sup]), sup); err != nil {
			return err
		}
	}
	return nil
}

func (c *Coordinator) applyUpTo(ctx context.Context, tx *sql.Tx, fx *effects, b *eventBatch) error {
	applied := c.applied[b.sup]
	if b.top <= applied {
		return nil
	}
	events := b.events
	if b.catchUp || b.first > applied+1 {
		var err error
		if events, err = c.storedEvents(ctx, tx, b.sup, applied, b.top); err != nil {
			return err
		}
	}
	for _, ev := range events {
		if ev.GetSeq() <= applied || ev.GetSeq() > b.top {
			continue
		}
		if err := c.applyEvent(ctx, tx, fx, b.sup, ev); err != nil {
			return fmt.Errorf("event %d of %s: %w", ev.GetSeq(), b.sup, err)
		}
	}
	c.applied[b.sup] = b.top
	return nil
}

// catchUp applies a supervisor's events stored but not applied yet (before a Hello is
// reconciled, so that it meets the state its events made).
func (c *Coordinator) catchUp(ctx context.Context, tx *sql.Tx, fx *effects, sup string, stored uint64) error {
	if stored <= c.applied[sup] {
		return nil
	}
	if err := c.applyUpTo(ctx, tx, fx, &eventBatch{sup: sup, first: c.applied[sup] + 1, top: stored, catchUp: true}); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE supervisors SET applied_seq = $1 WHERE id = $2`, int64(c.applied[sup]), sup)
	return err
}

// storedEvents reads back a supervisor's state-changing events with seqs in (after, upTo].
func (c *Coordinator) storedEvents(ctx context.Context, tx *sql.Tx, sup string, after, upTo uint64) ([]*pb.Event, error) {
	rows, err := tx.QueryContext(ctx, `SELECT seq, at_ns, kind, payload FROM events
		WHERE supervisor_id = $1 AND seq > $2 AND seq <= $3 AND kind IN ($4, $5, $6) ORDER BY seq`,
		sup, int64(after), int64(upTo), "state_transition", "error", "board_status")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*pb.Event
	for rows.Next() {
		var seq, at int64
		var kind, payload string
		if err := rows.Scan(&seq, &at, &kind, &payload); err != nil {
			return nil, err
		}
		ev, err := decodeStored(kind, payload)
		if err != nil {
			return nil, fmt.Errorf("stored event %d of %s: %w", seq, sup, err)
		}
		ev.Seq, ev.Time = uint64(seq), timestamppb.New(time.Unix(0, at))
		out = append(out, ev)
	}
	return out, rows.Err()
}

// decodeStored rebuilds a state-changing event from its stored kind and payload.
func decodeStored(kind, payload string) (*pb.Event, error) {
	ev := &pb.Event{}
	var body proto.Message
	switch kind {
	case "state_transition":
		m := &pb.StateTransition{}
		ev.Body, body = &pb.Event_StateTransition{StateTransition: m}, m
	case "error":
		m := &pb.JobErrorEvent{}
		ev.Body, body = &pb.Event_Error{Error: m}, m
	case "board_status":
		m := &pb.BoardStatus{}
		ev.Body, body = &pb.Event_BoardStatus{BoardStatus: m}, m
	default:
		return nil, errors.New("not a state-changing kind: " + kind)
	}
	if err := protojson.Unmarshal([]byte(payload), body); err != nil {
		return nil, err
	}
	return ev, nil
}

func eventBody(ev *pb.Event) proto.Message {
	switch b := ev.GetBody().(type) {
	case *pb.Event_StateTransition:
		return b.StateTransition
	case *pb.Event_Error:
		return b.Error
	case *pb.Event_ConsoleLog:
		return b.ConsoleLog
	case *pb.Event_ConsoleGap:
		return b.ConsoleGap
	case *pb.Event_BoardStatus:
		return b.BoardStatus
	case *pb.Event_HookLog:
		return b.HookLog
	}
	return ev
}

// eventKind names an event's kind and the job and board it is about.
func eventKind(ev *pb.Event) (kind, job, board string) {
	switch b := ev.GetBody().(type) {
	case *pb.Event_StateTransition:
		return "state_transition", b.StateTransition.GetJobId(), b.StateTransition.GetBoard()
	case *pb.Event_Error:
		return "error", b.Error.GetJobId(), ""
	case *pb.Event_ConsoleLog:
		return "console_log", b.ConsoleLog.GetJobId(), b.ConsoleLog.GetBoard()
	case *pb.Event_ConsoleGap:
		return "console_gap", b.ConsoleGap.GetJobId(), b.ConsoleGap.GetBoard()
	case *pb.Event_BoardStatus:
		return "board_status", b.BoardStatus.GetCurrentJobId(), b.BoardStatus.GetBoard()
	case *pb.Event_HookLog:
		return "hook_log", b.HookLog.GetJobId(), b.HookLog.GetBoard()
	}
	return "unknown", "", ""
}
