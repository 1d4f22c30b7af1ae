package coordinator

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// LeaseLogOptions configure lease logs: the LeaseLog streams that serve them and the
// retention of ended leases' logs (retention.go). The zero value of each field selects
// its default.
type LeaseLogOptions struct {
	// MaxStreams bounds the LeaseLog streams open at once (default 256).
	MaxStreams int
	// MaxStreamsPerUser bounds one user's LeaseLog streams (default 16). It applies only
	// with client authentication (without it the coordinator cannot tell users apart).
	MaxStreamsPerUser int
	// ReadBatch is how many events one database read returns (default 256).
	ReadBatch int
	// Coalesce is how long a live reader waits after a wake-up before it reads, so that
	// a hook printing flat out costs one read per Coalesce, not one per line (default
	// 20ms).
	Coalesce time.Duration

	// Retention is how long an ended lease's log is kept (default 30 days; negative:
	// for ever).
	Retention time.Duration
	// MaxBytes bounds the stored logs of ended leases, in bytes of stored payload; past
	// it the logs of the leases that ended first are removed (default 8 GiB; negative:
	// no bound).
	MaxBytes int64
	// PruneInterval is how often retention runs (default 1 minute).
	PruneInterval time.Duration
	// PruneBatch is how many events one delete transaction removes (default 500).
	PruneBatch int
	// PrunePause is the pause between two delete transactions (default 10ms), which
	// leaves the supervisor link the database in between.
	PrunePause time.Duration
}

func (o LeaseLogOptions) withDefaults() LeaseLogOptions {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.MaxStreams, 256)
	def(&o.MaxStreamsPerUser, 16)
	def(&o.ReadBatch, 256)
	def(&o.PruneBatch, 500)
	if o.Coalesce <= 0 {
		o.Coalesce = 20 * time.Millisecond
	}
	if o.Retention == 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 8 << 30
	}
	if o.PruneInterval <= 0 {
		o.PruneInterval = time.Minute
	}
	if o.PrunePause <= 0 {
		o.PrunePause = 10 * time.Millisecond
	}
	return o
}

func init() {
	// lease_logs: what the coordinator knows of a lease's log beyond its events: who
	// released the lease (ReleaseLease), and for retention the log's size once the
	// lease ended and when the log was removed. Created with the rest of the schema
	// (CREATE ... IF NOT EXISTS, so an older database gains it at start-up).
	schema = append(schema,
		`CREATE TABLE IF NOT EXISTS lease_logs (
			lease_id    TEXT PRIMARY KEY,
			released_by TEXT NOT NULL DEFAULT '',
			ended_at    BIGINT NOT NULL DEFAULT 0,
			log_bytes   BIGINT NOT NULL DEFAULT -1,
			pruned_at   BIGINT NOT NULL DEFAULT 0
		)`,
		`CREATE INDEX IF NOT EXISTS lease_logs_kept ON lease_logs (pruned_at, ended_at)`,
	)
}

// The event kinds a lease log holds, and the console ones sent only when asked for.
const (
	kindTransition = "state_transition"
	kindHookLog    = "hook_log"
	kindError      = "error"
	kindConsole    = "console_log"
	kindConsoleGap = "console_gap"
)

// logHub knows the open LeaseLog streams by lease, wakes them when their lease's events
// are stored or the lease changes, and keeps the caps on how many are open.
type logHub struct {
	opts    LeaseLogOptions
	readers atomic.Int64 // streams open: the event path does nothing while it is 0

	mu      sync.Mutex
	byLease map[string]map[*logReader]struct{}
	perUser map[string]int
	total   int
}

// logReader is one LeaseLog stream as the hub sees it.
type logReader struct {
	lease, user string // user is "" when not counted per user
	sig         chan struct{}
	// leaseDirty says the lease's row changed since the stream last read it (set before
	// sig is poked, so a reader woken reads the new row).
	leaseDirty atomic.Bool
}

func (r *logReader) poke() {
	select {
	case r.sig <- struct{}{}:
	default:
	}
}

func newLogHub(opts LeaseLogOptions) *logHub {
	return &logHub{opts: opts.withDefaults(), byLease: map[string]map[*logReader]struct{}{}, perUser: map[string]int{}}
}

// errTooManyStreams is why join refused a stream.
type errTooManyStreams struct{ msg string }

func (e errTooManyStreams) Error() string { return e.msg }

// join registers a stream on a lease's log, within the caps. user is "" for a stream
// that counts only against the total.
func (h *logHub) join(lease, user string) (*logReader, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.total >= h.opts.MaxStreams {
		return nil, errTooManyStreams{fmt.Sprintf("the coordinator serves %d lease logs at once, its limit: try again later", h.total)}
	}
	if user != "" && h.perUser[user] >= h.opts.MaxStreamsPerUser {
		return nil, errTooManyStreams{fmt.Sprintf("%s already reads %d lease logs, the limit per user: close one first", user, h.perUser[user])}
	}
	r := &logReader{lease: lease, user: user, sig: make(chan struct{}, 1)}
	r.leaseDirty.Store(true)
	if h.byLease[lease] == nil {
		h.byLease[lease] = map[*logReader]struct{}{}
	}
	h.byLease[lease][r] = struct{}{}
	h.total++
	if user != "" {
		h.perUser[user]++
	}
	h.readers.Add(1)
	return r, nil
}

func (h *logHub) leave(r *logReader) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.byLease[r.lease], r)
	if len(h.byLease[r.lease]) == 0 {
		delete(h.byLease, r.lease)
	}
	h.total--
	if r.user != "" {
		if h.perUser[r.user]--; h.perUser[r.user] <= 0 {
			delete(h.perUser, r.user)
		}
	}
	h.readers.Add(-1)
}

// stored wakes the streams of the leases a committed batch of events is about. It is
// the event path's only cost: nothing while no stream is open, else one map look-up
// per event; the reads are the streams' own.
func (h *logHub) stored(evs []*pb.Event) {
	if h.readers.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	last := ""
	for _, ev := range evs {
		_, job, _ := eventKind(ev)
		if job == "" || job == last {
			continue
		}
		last = job
		for r := range h.byLease[job] {
			r.poke()
		}
	}
}

// changed wakes the streams of a lease whose row changed (phase, end, assignment).
func (h *logHub) changed(id string) {
	if h.readers.Load() == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for r := range h.byLease[id] {
		r.leaseDirty.Store(true)
		r.poke()
	}
}

// LeaseLog streams a lease's stored log from a position on (see the proto). It reads
// the database in batches, only when woken by the event path (logHub) and at most once
// per Coalesce while live, and never holds a read open while it sends.
func (c *Coordinator) LeaseLog(req *pb.LeaseLogRequest, stream pb.LeaseService_LeaseLogServer) error {
	ctx := stream.Context()
	pos, err := decodeLogPos(req.GetAfter())
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "position %.40q: %v", req.GetAfter(), err)
	}
	l, err := c.lease(ctx, req.GetLeaseId())
	if err != nil {
		return err
	}
	u, authed := userOf(ctx)
	if authed && !u.Admin && u.Name != l.Client {
		c.refusedLog(ctx, u.Name, l, "read the log of a lease held by "+l.Client)
		return status.Errorf(codes.PermissionDenied, "lease %s is another user's; only its holder or an admin may read its log", l.ID)
	}
	if at, err := logPrunedAt(ctx, c.db, l.ID); err != nil {
		return rpcError(err)
	} else if at != 0 {
		return status.Errorf(codes.FailedPrecondition, "the log of lease %s was removed on %s by the coordinator's retention (the lease's record is kept: boardvisor lease list --all)",
			l.ID, time.Unix(0, at).UTC().Format(time.RFC3339))
	}
	who := ""
	if authed {
		who = u.Name
	}
	r, err := c.logs.join(l.ID, who)
	if err != nil {
		c.refusedLog(ctx, u.Name, l, err.Error())
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	defer c.logs.leave(r)
	s := &logStream{c: c, r: r, stream: stream, lease: l, pos: pos, console: req.GetConsole()}
	return s.run(ctx, req.GetFollow())
}

func (c *Coordinator) refusedLog(ctx context.Context, user string, l *leaseRow, reason string) {
	who := peerAddr(ctx)
	if user != "" {
		who = user + " at " + who
	}
	c.log.Warn("lease log refused", "who", who, "job", l.ID, "reason", reason)
	if c.opts.Audit != nil {
		c.opts.Audit.Refused(who, l.Board, l.ID, reason+" (LeaseLog)")
	}
}

// logStream is one LeaseLog call being served.
type logStream struct {
	c       *Coordinator
	r       *logReader
	stream  pb.LeaseService_LeaseLogServer
	lease   *leaseRow
	pos     logPos
	console bool
}

func (s *logStream) run(ctx context.Context, follow bool) error {
	c, opts := s.c, s.c.logs.opts
	for {
		if s.r.leaseDirty.Swap(false) {
			l, err := getLease(ctx, c.db, s.lease.ID)
			if err != nil {
				return rpcError(err)
			}
			if l == nil {
				return status.Errorf(codes.NotFound, "lease %s no longer exists", s.lease.ID)
			}
			s.lease = l
		}
		// Read after the lease's row: the events committed with its end are all there.
		ended := s.lease.State == stateEnded
		for {
			n, err := s.sendBatch(ctx, opts.ReadBatch)
			if err != nil {
				return err
			}
			if n < opts.ReadBatch {
				break
			}
		}
		if ended {
			end, err := c.leaseEnd(ctx, s.lease)
			if err != nil {
				return rpcError(err)
			}
			return s.stream.Send(&pb.LeaseLogEntry{Position: s.pos.encode(), Time: end.GetEndedAt(), Body: &pb.LeaseLogEntry_End{End: end}})
		}
		if !follow {
			return nil
		}
		read := time.Now()
		if err := waitOn(ctx, c.done, s.r.sig); err != nil {
			return err
		}
		// Let a burst of events gather: one read for all of them.
		if d := opts.Coalesce - time.Since(read); d > 0 {
			t := time.NewTimer(d)
			err := waitOn(ctx, c.done, t.C)
			t.Stop()
			if err != nil {
				return err
			}
		}
	}
}

// waitOn waits for ch, the caller going away or the coordinator closing.
func waitOn[T any](ctx context.Context, closed <-chan struct{}, ch <-chan T) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-closed:
		return status.Error(codes.Unavailable, "the coordinator is shutting down")
	}
}

// logRow is one event of a lease's log as read from the database.
type logRow struct {
	seq, at       int64
	kind, payload string
}

// sendBatch reads up to n events after s.pos and sends them; it returns how many it
// read. The rows are read whole before anything is sent, so a slow client never holds a
// database read open.
func (s *logStream) sendBatch(ctx context.Context, n int) (int, error) {
	l := s.lease
	if l.SupervisorID == "" {
		return 0, nil // not assigned yet: no events
	}
	if s.pos.sup != l.SupervisorID {
		// A position from before the lease moved (or none): the log of the supervisor
		// serving it, from its start.
		s.pos = logPos{sup: l.SupervisorID}
	}
	con, gap := kindTransition, kindTransition // IN with repeats when console is not asked for
	if s.console {
		con, gap = kindConsole, kindConsoleGap
	}
	// Only the events of the lease's supervisor about the lease's board (or no board):
	// an event a supervisor sent about another's board is stored as evidence, not shown.
	rows, err := s.c.db.QueryContext(ctx, `SELECT seq, at_ns, kind, payload FROM events
		WHERE job_id = $1 AND supervisor_id = $2 AND seq > $3 AND kind IN ($4, $5, $6, $7, $8) AND (board = '' OR board = $9)
		ORDER BY seq LIMIT $10`,
		l.ID, s.pos.sup, s.pos.seq, kindTransition, kindHookLog, kindError, con, gap, l.Board, n)
	if err != nil {
		return 0, rpcError(err)
	}
	var batch []logRow
	for rows.Next() {
		var r logRow
		if err := rows.Scan(&r.seq, &r.at, &r.kind, &r.payload); err != nil {
			rows.Close()
			return 0, rpcError(err)
		}
		batch = append(batch, r)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return 0, rpcError(err)
	}
	for _, r := range batch {
		pos := logPos{sup: s.pos.sup, seq: r.seq}
		e, err := logEntry(r)
		if err != nil {
			s.c.log.Warn("lease log: a stored event does not decode: skipped", "job", l.ID, "supervisor", pos.sup, "seq", r.seq, "error", err)
			s.pos = pos
			continue
		}
		e.Position = pos.encode()
		if err := s.stream.Send(e); err != nil {
			return 0, err
		}
		s.pos = pos
	}
	return len(batch), nil
}

var payloadJSON = protojson.UnmarshalOptions{DiscardUnknown: true}

// logEntry turns a stored event into a log entry (without its position).
func logEntry(r logRow) (*pb.LeaseLogEntry, error) {
	e := &pb.LeaseLogEntry{Time: timestamppb.New(time.Unix(0, r.at))}
	var m proto.Message
	switch r.kind {
	case kindTransition:
		m = &pb.StateTransition{}
	case kindHookLog:
		m = &pb.HookLog{}
	case kindError:
		m = &pb.JobErrorEvent{}
	case kindConsole:
		m = &pb.ConsoleLog{}
	case kindConsoleGap:
		m = &pb.ConsoleGap{}
	default:
		return nil, fmt.Errorf("kind %q is not part of a lease log", r.kind)
	}
	if err := payloadJSON.Unmarshal([]byte(r.payload), m); err != nil {
		return nil, err
	}
	switch v := m.(type) {
	case *pb.StateTransition:
		e.Body = &pb.LeaseLogEntry_Phase{Phase: &pb.LeaseLogPhase{From: v.GetFrom(), To: v.GetTo(),
			StatusMessage: v.GetStatusMessage(), ExporterStatus: v.GetExporterStatus()}}
	case *pb.HookLog:
		e.Body = &pb.LeaseLogEntry_HookLine{HookLine: &pb.LeaseLogHookLine{Source: v.GetSource(), Severity: v.GetSeverity(),
			Text: v.GetText(), Progress: v.GetProgress(), Cut: v.GetCut()}}
	case *pb.JobErrorEvent:
		e.Body = &pb.LeaseLogEntry_Error{Error: v.GetError()}
	case *pb.ConsoleLog:
		e.Body = &pb.LeaseLogEntry_Console{Console: v.GetData()}
	case *pb.ConsoleGap:
		e.Body = &pb.LeaseLogEntry_ConsoleGap{ConsoleGap: v.GetBytes()}
	}
	return e, nil
}

// logPrunedAt returns when retention removed a lease's log, 0 if it did not.
func logPrunedAt(ctx context.Context, q querier, id string) (int64, error) {
	var at int64
	err := q.QueryRowContext(ctx, `SELECT pruned_at FROM lease_logs WHERE lease_id = $1`, id).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return at, err
}

// releasedByClient is who noteRelease records for a client without authentication.
const releasedByClient = "client"

// noteRelease records, in ReleaseLease's transaction, who released a lease (the first
// release counts): the authenticated user, or "client" without client authentication.
func noteRelease(ctx context.Context, tx *sql.Tx, id string) error {
	who := releasedByClient
	if u, ok := userOf(ctx); ok {
		who = u.Name
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO lease_logs (lease_id, released_by) VALUES ($1, $2)
		ON CONFLICT (lease_id) DO UPDATE SET released_by = excluded.released_by WHERE lease_logs.released_by = ''`, id, who)
	return err
}

// leaseEnd says how an ended lease ended: who asked (the user who released it, the
// coordinator when its time was up, its holder ending the session at the supervisor, or
// the supervisor) and why.
func (c *Coordinator) leaseEnd(ctx context.Context, l *leaseRow) (*pb.LeaseLogEnd, error) {
	end := &pb.LeaseLogEnd{Phase: pb.LeasePhase(l.Phase), EndedAt: tsProto(l.EndedAt), StatusMessage: l.StatusMessage}
	var by string
	err := c.db.QueryRowContext(ctx, `SELECT released_by FROM lease_logs WHERE lease_id = $1`, l.ID).Scan(&by)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	switch {
	case by != "":
		end.EndedBy, end.Reason = by, cmp.Or(l.StopReason, l.StatusMessage)
		return end, nil
	case l.StopReason != "":
		end.EndedBy, end.Reason = "coordinator", l.StopReason
		return end, nil
	}
	// Ended at the supervisor: its ENDING transition says why.
	ending, err := c.endingMessage(ctx, l)
	if err != nil {
		return nil, err
	}
	why, _ := strings.CutPrefix(ending, "lease ending: ")
	switch {
	case why == "requested by the client":
		end.EndedBy, end.Reason = l.Client, "ended the session at the board's supervisor"
	case ending != "" && why != ending:
		end.EndedBy, end.Reason = "supervisor", why
	default:
		end.EndedBy, end.Reason = "supervisor", l.StatusMessage
	}
	return end, nil
}

// endingMessage returns the status message of the lease's transition to ENDING, "" if
// there was none.
func (c *Coordinator) endingMessage(ctx context.Context, l *leaseRow) (string, error) {
	if l.SupervisorID == "" {
		return "", nil
	}
	rows, err := c.db.QueryContext(ctx, `SELECT payload FROM events WHERE job_id = $1 AND supervisor_id = $2 AND kind = $3 ORDER BY seq`,
		l.ID, l.SupervisorID, kindTransition)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	msg := ""
	for rows.Next() {
		var payload string
		if err := rows.Scan(&payload); err != nil {
			return "", err
		}
		var st pb.StateTransition
		if payloadJSON.Unmarshal([]byte(payload), &st) == nil && st.GetTo() == pb.LeasePhase_LEASE_PHASE_ENDING {
			msg = st.GetStatusMessage()
		}
	}
	return msg, rows.Err()
}
