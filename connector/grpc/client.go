package grpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// BoardInfo is what a supervisor says of a board in its Hello besides its status.
type BoardInfo struct {
	Name     string
	Labels   map[string]string
	Endpoint string // the supervisor's client-facing address
}

// ClientOptions configure a Client.
type ClientOptions struct {
	// Address is the coordinator's host:port.
	Address string
	// Addresses, if set, are several coordinators' (one active, the others standing
	// by): the client tries each in turn, and moves to the next when one refuses as a
	// standby (Unavailable) or the link drops. Address is then ignored.
	Addresses []string
	// Token authenticates this supervisor; it travels as "authorization: Bearer <token>".
	Token string
	// SupervisorID names this supervisor (stable across restarts).
	SupervisorID string
	// Boards are the boards this supervisor serves.
	Boards []BoardInfo
	// Queue holds events until they are acknowledged.
	Queue *Queue
	// Creds secure the connection (nil: plaintext, for loopback and tests).
	Creds credentials.TransportCredentials
	// CAFile is the file of the CA that Creds check the coordinator's certificate
	// against, named when that check fails.
	CAFile string
	// MinBackoff and MaxBackoff bound the wait between reconnects (defaults 100ms, 30s).
	// The wait doubles after each failed attempt and goes back to MinBackoff only after
	// a session that lived StableAfter (default 10s) or had events acknowledged.
	MinBackoff, MaxBackoff time.Duration
	// StableAfter is how long a session must live for the back-off to start over.
	StableAfter time.Duration
	// RefusedBackoff is the wait after a permanent refusal (the coordinator does not
	// accept the token, or it is another supervisor's): default 5 minutes. A refusal
	// because another live supervisor holds the ID waits MaxBackoff.
	RefusedBackoff time.Duration
	// Version is reported in Hello.
	Version string
	Logger  hclog.Logger
}

// Client is the supervisor's end of the link: a connector.SupervisorConnector that dials
// out to the coordinator and keeps every event until the coordinator acknowledges it.
type Client struct {
	opts ClientOptions
	log  hclog.Logger

	connects atomic.Uint64

	mu     sync.Mutex
	boards map[string]*pb.BoardInfo
	jobs   map[string]*liveJob
	order  []string // board names in config order
}

type liveJob struct {
	board    string
	phase    jobs.Phase
	endedSeq uint64 // the sequence number of its terminal transition, 0 while live
}

var (
	_ connector.SupervisorConnector = (*Client)(nil)
	_ connector.Batcher             = (*Client)(nil)
	_ connector.Syncer              = (*Client)(nil)
)

// NewClient returns a client. Run connects it.
func NewClient(opts ClientOptions) *Client {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	if opts.StableAfter <= 0 {
		opts.StableAfter = 10 * time.Second
	}
	if opts.RefusedBackoff <= 0 {
		opts.RefusedBackoff = 5 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	c := &Client{opts: opts, log: opts.Logger, boards: map[string]*pb.BoardInfo{}, jobs: map[string]*liveJob{}}
	for _, b := range opts.Boards {
		c.boards[b.Name] = &pb.BoardInfo{Name: b.Name, Labels: b.Labels, ClientEndpoint: b.Endpoint}
		c.order = append(c.order, b.Name)
	}
	return c
}

// Connects counts the sessions the coordinator welcomed (the first connection and every
// reconnect).
func (c *Client) Connects() uint64 { return c.connects.Load() }

// LastSeq returns the highest sequence number already used; the outbox numbers on from it.
func (c *Client) LastSeq() uint64 { return c.opts.Queue.LastSeq() }

// UpdateJobState queues a state transition event.
func (c *Client) UpdateJobState(ev connector.Event) { c.append(ev) }

// ReportJobError queues an error event.
func (c *Client) ReportJobError(ev connector.Event) { c.append(ev) }

// SendJobConsoleLog queues a console event.
func (c *Client) SendJobConsoleLog(ev connector.Event) { c.append(ev) }

// UpdateEvent queues any other event.
func (c *Client) UpdateEvent(ev connector.Event) { c.append(ev) }

func (c *Client) append(ev connector.Event) {
	c.track(ev)
	c.opts.Queue.AppendBatch([]*pb.Event{ToProto(ev)})
}

// DeliverBatch queues events (numbered by the outbox, in order) in one step: no channel
// and no wake-up per event (connector.Batcher).
func (c *Client) DeliverBatch(evs []connector.Event) {
	pbs := make([]*pb.Event, len(evs))
	for i := range evs {
		c.track(evs[i])
		pbs[i] = ToProto(evs[i])
	}
	c.opts.Queue.AppendBatch(pbs)
}

// Synced returns a channel closed once every event delivered before the call is on the
// outbox's disk (connector.Syncer). A failed write is retried and never reported
// durable. When the client's Queue is closed, every channel still open is closed after
// the queue's last write attempt: then it means durable only if Queue.Durable says so
// (Close with a healthy disk writes everything; on a full disk, what is not written is
// lost with the process, as in a crash, and restored from the journal and the hook
// spools at the next start).
func (c *Client) Synced() <-chan struct{} { return c.opts.Queue.Synced() }

// track keeps what the Hello reports: each job's phase, each board's status.
func (c *Client) track(ev connector.Event) {
	if ev.Transition == nil && ev.BoardStatus == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case ev.Transition != nil:
		j := c.jobs[ev.JobID]
		if j == nil {
			j = &liveJob{board: ev.Board}
			c.jobs[ev.JobID] = j
		}
		j.phase = ev.Transition.To
		if ev.Transition.To.Terminal() {
			j.endedSeq = ev.Seq
		}
	case ev.BoardStatus != nil:
		if b := c.boards[ev.Board]; b != nil {
			b.Status, b.Health = Status(ev.BoardStatus.Status), Health(ev.BoardStatus.Health)
		}
	}
}

// hello describes this supervisor now.
func (c *Client) hello() *pb.Hello {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := &pb.Hello{SupervisorId: c.opts.SupervisorID, LastAckedSeq: c.opts.Queue.Acked(), Version: c.opts.Version}
	for _, name := range c.order {
		b := c.boards[name]
		h.Boards = append(h.Boards, &pb.BoardInfo{Name: b.Name, Labels: b.Labels, Status: b.Status, Health: b.Health, ClientEndpoint: b.ClientEndpoint})
	}
	for id, j := range c.jobs {
		h.LiveJobs = append(h.LiveJobs, &pb.LiveJob{JobId: id, Board: j.board, Phase: Phase(j.phase), Ended: j.endedSeq > 0})
	}
	return h
}

// forgetEnded drops ended jobs whose end the coordinator has acknowledged.
func (c *Client) forgetEnded(acked uint64) {
	c.mu.Lock()
	var gone []string
	for id, j := range c.jobs {
		if j.endedSeq > 0 && j.endedSeq <= acked {
			delete(c.jobs, id)
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	if err := c.opts.Queue.ForgetJobs(gone...); err != nil {
		c.log.Warn("forget ended jobs in outbox", "jobs", len(gone), "error", err)
	}
}

// Resume makes a lease resumed after a restart part of the Hello, before its next event.
// A lease that ended is reported as ended until the coordinator acknowledges the events
// queued so far.
func (c *Client) Resume(job, board string, phase jobs.Phase) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jobs[job] == nil {
		j := &liveJob{board: board, phase: phase}
		if phase.Terminal() {
			j.endedSeq = max(c.opts.Queue.LastSeq(), 1)
		}
		c.jobs[job] = j
	}
}

// OnEnded sets what to do once an ended lease's last transition is on the outbox's disk
// (see Queue.OnEnded).
func (c *Client) OnEnded(fn func(job string)) { c.opts.Queue.OnEnded(fn) }

// TransitionStep returns the Step of the last transition of job durably queued.
func (c *Client) TransitionStep(job string) int { return c.opts.Queue.TransitionStep(job) }

// HookOffset returns how far a hook's output was durably queued (see Queue.HookOffset).
func (c *Client) HookOffset(job string, source jobs.LogSource) (int64, bool) {
	return c.opts.Queue.HookOffset(job, int32(source))
}

// Run connects to the coordinator and keeps reconnecting, with jittered exponential
// back-off, until ctx is done. Requests are handed to sup.
//
// The back-off starts over only after a session that lived StableAfter or had events
// acknowledged: a coordinator that drops the link right after its Welcome is not
// hammered. Permanent refusals wait RefusedBackoff (the token is unknown, or is another
// supervisor's) or MaxBackoff (another live supervisor holds the ID), and their log line
// names the config key to fix. A failure that repeats the previous one is logged at
// most once a minute, with how many times it happened.
func (c *Client) Run(ctx context.Context, sup connector.Supervisor) error {
	backoff := c.opts.MinBackoff
	var lastErr string
	var lastLogged time.Time
	repeats := 0
	addrs := c.opts.Addresses
	if len(addrs) == 0 {
		addrs = []string{c.opts.Address}
	}
	at, failed := 0, 0 // the address tried; consecutive failures since a connection
	for {
		began := time.Now()
		addr := addrs[at]
		res, err := c.session(ctx, sup, addr)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if res.connected && (res.progressed || time.Since(began) >= c.opts.StableAfter) {
			backoff = c.opts.MinBackoff
		}
		if res.connected {
			failed = 0
		}
		failed++
		// With several coordinators, the next one is tried: the active one may be
		// another (a standby answers Unavailable, naming it).
		at = (at + 1) % len(addrs)
		msg := oneLine(err)
		if why, ok := tlsFailure(err); ok {
			msg = fmt.Sprintf("the coordinator's TLS certificate at %s does not verify against the CA file %s (coordinator.caFile): %s", c.opts.Address, c.opts.CAFile, why)
		}
		refusal, key := refusalOf(err)
		var wait time.Duration
		switch status.Code(err) {
		case codes.Unavailable, codes.Canceled, codes.Internal:
			if len(addrs) > 1 && failed < len(addrs) {
				// Not every coordinator tried since the last connection: no back-off.
				wait = jitter(c.opts.MinBackoff)
				break
			}
			wait = jitter(backoff)
			backoff = min(backoff*2, c.opts.MaxBackoff)
		case codes.Unauthenticated, codes.PermissionDenied:
			wait = jitter(c.opts.RefusedBackoff)
		case codes.AlreadyExists:
			wait = jitter(c.opts.MaxBackoff)
		default:
			wait = jitter(backoff)
			backoff = min(backoff*2, c.opts.MaxBackoff)
		}
		switch {
		case refusal != "":
			// Once per attempt: attempts are minutes apart.
			c.log.Error(refusal, "coordinator", addr, "config_key", key, "error", msg, "retry_in", wait.String())
		case msg != lastErr || time.Since(lastLogged) >= time.Minute:
			args := []any{"coordinator", addr, "error", msg, "retry_in", wait.String()}
			if repeats > 0 {
				args = append(args, "repeated", repeats)
			}
			c.log.Warn("coordinator link down; reconnecting", args...)
			lastErr, lastLogged, repeats = msg, time.Now(), 0
		default:
			repeats++
			c.log.Debug("coordinator link down; reconnecting", "coordinator", addr, "error", msg, "retry_in", wait.String())
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// jitter returns a wait between d/2 and d.
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// refusalOf says what an error means when the coordinator refused this supervisor for
// good (its config must change), and the config key to fix; "" otherwise.
func refusalOf(err error) (msg, key string) {
	if strings.Contains(status.Convert(err).Message(), CertificateRefusal) {
		return "the coordinator refused this supervisor's client certificate: set coordinator.certFile and coordinator.keyFile to a certificate signed by the coordinator's supervisors' CA (its --tls-client-ca) that names coordinator.supervisorId; retrying in minutes", "coordinator.certFile"
	}
	switch status.Code(err) {
	case codes.Unauthenticated:
		return "the coordinator does not accept this supervisor's token: check coordinator.tokenFile (it must hold a token the coordinator knows); retrying in minutes", "coordinator.tokenFile"
	case codes.PermissionDenied:
		return "the coordinator refused this supervisor: its token belongs to another supervisor ID; set coordinator.supervisorId to the token's ID (or coordinator.tokenFile to this supervisor's token); retrying in minutes", "coordinator.supervisorId"
	case codes.AlreadyExists:
		return "the coordinator refused this supervisor: another live supervisor holds this ID; give each supervisor its own coordinator.supervisorId", "coordinator.supervisorId"
	}
	return "", ""
}

// tlsFailure reports whether a session failed in the TLS handshake on this side (the
// coordinator's certificate did not verify), and why, in x509's words.
func tlsFailure(err error) (string, bool) {
	if status.Code(err) != codes.Unavailable {
		return "", false
	}
	msg := status.Convert(err).Message()
	i := strings.Index(msg, "x509: ")
	if i < 0 {
		return "", false
	}
	return strings.TrimRight(msg[i+len("x509: "):], `"`), true
}

func oneLine(err error) string {
	if err == nil {
		return "stream closed"
	}
	if s, ok := status.FromError(err); ok {
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}

// sessionResult says how a session went.
type sessionResult struct {
	connected  bool // the coordinator welcomed us
	progressed bool // the coordinator acknowledged events sent on this session
}

// linkCodec is the protobuf codec, except that a *rawFrame (an event as the outbox
// stores it, with the SupervisorMessage framing around it) is sent as it is: an event is
// encoded once, when it is queued, never again per send.
type linkCodec struct{ proto encoding.CodecV2 }

func (l linkCodec) Marshal(v any) (mem.BufferSlice, error) {
	if f, ok := v.(*rawFrame); ok {
		return mem.BufferSlice{mem.SliceBuffer(f.head), mem.SliceBuffer(f.body)}, nil
	}
	return l.proto.Marshal(v)
}

func (l linkCodec) Unmarshal(data mem.BufferSlice, v any) error { return l.proto.Unmarshal(data, v) }

func (linkCodec) Name() string { return "proto" }

// rawFrame is a SupervisorMessage holding an encoded event: head is the tag and length
// of field 2 (event), body the event's encoding.
type rawFrame struct {
	head, body []byte
}

var codec = linkCodec{proto: encoding.GetCodecV2(gproto.Name)}

// session runs one connection.
func (c *Client) session(ctx context.Context, sup connector.Supervisor, addr string) (res sessionResult, err error) {
	creds := c.opts.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := ggrpc.NewClient(addr, ggrpc.WithTransportCredentials(creds))
	if err != nil {
		return res, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.opts.Token)
	}
	stream, err := pb.NewSupervisorLinkClient(conn).Connect(ctx, ggrpc.ForceCodecV2(codec))
	if err != nil {
		return res, err
	}
	if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: c.hello()}}); err != nil {
		if errors.Is(err, io.EOF) {
			// The coordinator ended the stream (refused us): its status comes with Recv.
			_, err = stream.Recv()
		}
		return res, err
	}
	first, err := stream.Recv()
	if err != nil {
		return res, err
	}
	w := first.GetWelcome()
	if w == nil {
		return res, errors.New("coordinator did not answer Hello with Welcome")
	}
	res.connected = true
	seen := w.GetLastSeqSeen()
	if last := c.opts.Queue.LastSeq(); seen > last {
		// The coordinator claims events this supervisor never numbered (its database is
		// from another supervisor, or this outbox was wiped): trust only what exists.
		c.log.Error("coordinator claims more events than this supervisor sent; acknowledging only those it has",
			"coordinator_seq", seen, "last_seq", last)
		seen = last
	}
	if err := c.ack(seen); err != nil {
		return res, err
	}
	c.connects.Add(1)
	cursor := max(seen, c.opts.Queue.Acked())
	c.log.Info("connected to coordinator", "coordinator", addr, "resume_after", cursor)

	var sent atomic.Uint64 // the highest sequence number sent on this stream
	sent.Store(cursor)
	var progressed atomic.Bool
	sendErr := make(chan error, 1)
	go func() { sendErr <- c.sendLoop(ctx, stream, cursor, &sent) }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- c.recvLoop(ctx, stream, sup, &sent, cursor, &progressed) }()
	select {
	case err = <-sendErr:
		if errors.Is(err, io.EOF) {
			// The coordinator ended the stream: why comes with Recv.
			select {
			case err = <-recvErr:
				recvErr <- err
			case <-time.After(5 * time.Second):
			}
		}
	case err = <-recvErr:
	}
	cancel()
	// Both loops end once ctx is cancelled; wait for the other so no goroutine outlives us.
	select {
	case <-sendErr:
	case <-recvErr:
	}
	res.progressed = progressed.Load()
	return res, err
}

func (c *Client) ack(seq uint64) error {
	if seq <= c.opts.Queue.Acked() {
		return nil
	}
	if err := c.opts.Queue.Ack(seq); err != nil {
		return err
	}
	c.forgetEnded(seq)
	return nil
}

// sendLoop sends committed events in order, in batches read from the outbox as stored.
func (c *Client) sendLoop(ctx context.Context, stream pb.SupervisorLink_ConnectClient, cursor uint64, sent *atomic.Uint64) error {
	var buf []rawEvent
	var frame rawFrame
	for {
		evs, changed, err := c.opts.Queue.afterRaw(cursor, 1024, buf, true)
		if err != nil {
			return err
		}
		var heads []byte
		for _, ev := range evs {
			start := len(heads)
			heads = protowire.AppendTag(heads, 2, protowire.BytesType)
			heads = protowire.AppendVarint(heads, uint64(len(ev.data)))
			frame.head, frame.body = heads[start:len(heads):len(heads)], ev.data
			if err := stream.SendMsg(&frame); err != nil {
				return err
			}
			cursor = ev.seq
			sent.Store(cursor)
		}
		buf = evs
		if len(evs) > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *Client) recvLoop(ctx context.Context, stream pb.SupervisorLink_ConnectClient, sup connector.Supervisor, sent *atomic.Uint64, start uint64, progressed *atomic.Bool) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch {
		case m.GetAck() != nil:
			// An ack beyond what was sent would make the outbox forget events the
			// coordinator never had: the session ends instead.
			if up := m.GetAck().GetUpToSeq(); up > sent.Load() {
				return fmt.Errorf("coordinator acknowledged event %d, but only %d were sent", up, sent.Load())
			}
			if err := c.ack(m.GetAck().GetUpToSeq()); err != nil {
				return err
			}
			if m.GetAck().GetUpToSeq() > start {
				progressed.Store(true)
			}
		case m.GetStartJob() != nil:
			s := m.GetStartJob()
			req := StartJobFromProto(s)
			if err := sup.StartJob(ctx, req); err != nil {
				// The refusal reaches the coordinator as an Error event (the supervisor emits it).
				c.log.Info("StartJob refused", "job", req.JobID, "board", req.Board, "error", err)
			}
		case m.GetExtendJob() != nil:
			e := m.GetExtendJob()
			if err := sup.ExtendJob(ctx, connector.ExtendJobRequest{JobID: e.GetJobId(), Remaining: e.GetRemaining().AsDuration()}); err != nil {
				c.log.Info("ExtendJob refused", "job", e.GetJobId(), "error", err)
			}
		case m.GetClearQuarantine() != nil:
			q := m.GetClearQuarantine()
			qc, ok := sup.(connector.QuarantineClearer)
			if !ok {
				c.log.Warn("ClearQuarantine ignored: this supervisor cannot clear quarantines", "board", q.GetBoard())
				break
			}
			req := connector.ClearQuarantineRequest{Board: q.GetBoard(), Reason: q.GetReason(), By: q.GetBy()}
			if err := qc.ClearQuarantine(ctx, req); err != nil {
				c.log.Warn("ClearQuarantine refused", "board", req.Board, "by", req.By, "error", err)
			}
		case m.GetStopJob() != nil:
			if err := sup.StopJob(ctx, connector.StopJobRequest{JobID: m.GetStopJob().GetJobId(), Reason: m.GetStopJob().GetReason()}); err != nil {
				c.log.Info("StopJob refused", "job", m.GetStopJob().GetJobId(), "error", err)
			}
		}
	}
}
