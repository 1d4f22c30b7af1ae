package grpc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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
	// MinBackoff and MaxBackoff bound the wait between reconnects (defaults 100ms, 30s).
	MinBackoff, MaxBackoff time.Duration
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

var _ connector.SupervisorConnector = (*Client)(nil)

// NewClient returns a client. Run connects it.
func NewClient(opts ClientOptions) *Client {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
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
	c.mu.Lock()
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
	c.mu.Unlock()
	c.opts.Queue.Append(ToProto(ev))
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
func (c *Client) Run(ctx context.Context, sup connector.Supervisor) error {
	backoff := c.opts.MinBackoff
	for {
		connected, err := c.session(ctx, sup)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if connected {
			backoff = c.opts.MinBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("coordinator link down; reconnecting", "coordinator", c.opts.Address, "error", oneLine(err), "retry_in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		backoff = min(backoff*2, c.opts.MaxBackoff)
	}
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

// session runs one connection. connected reports whether the coordinator welcomed us.
func (c *Client) session(ctx context.Context, sup connector.Supervisor) (connected bool, err error) {
	creds := c.opts.Creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := ggrpc.NewClient(c.opts.Address, ggrpc.WithTransportCredentials(creds))
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", c.opts.Address, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.opts.Token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.opts.Token)
	}
	stream, err := pb.NewSupervisorLinkClient(conn).Connect(ctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: c.hello()}}); err != nil {
		return false, err
	}
	first, err := stream.Recv()
	if err != nil {
		return false, err
	}
	w := first.GetWelcome()
	if w == nil {
		return false, errors.New("coordinator did not answer Hello with Welcome")
	}
	seen := w.GetLastSeqSeen()
	if last := c.opts.Queue.LastSeq(); seen > last {
		// The coordinator claims events this supervisor never numbered (its database is
		// from another supervisor, or this outbox was wiped): trust only what exists.
		c.log.Error("coordinator claims more events than this supervisor sent; acknowledging only those it has",
			"coordinator_seq", seen, "last_seq", last)
		seen = last
	}
	if err := c.ack(seen); err != nil {
		return true, err
	}
	c.connects.Add(1)
	cursor := max(seen, c.opts.Queue.Acked())
	c.log.Info("connected to coordinator", "coordinator", c.opts.Address, "resume_after", cursor)

	var sent atomic.Uint64 // the highest sequence number sent on this stream
	sent.Store(cursor)
	sendErr := make(chan error, 1)
	go func() { sendErr <- c.sendLoop(ctx, stream, cursor, &sent) }()
	recvErr := make(chan error, 1)
	go func() { recvErr <- c.recvLoop(ctx, stream, sup, &sent) }()
	select {
	case err = <-sendErr:
	case err = <-recvErr:
	}
	cancel()
	// Both loops end once ctx is cancelled; wait for the other so no goroutine outlives us.
	select {
	case <-sendErr:
	case <-recvErr:
	}
	return true, err
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

func (c *Client) sendLoop(ctx context.Context, stream pb.SupervisorLink_ConnectClient, cursor uint64, sent *atomic.Uint64) error {
	for {
		evs, changed, err := c.opts.Queue.After(cursor, 256)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
				return err
			}
			cursor = ev.GetSeq()
			sent.Store(cursor)
		}
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

func (c *Client) recvLoop(ctx context.Context, stream pb.SupervisorLink_ConnectClient, sup connector.Supervisor, sent *atomic.Uint64) error {
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
		case m.GetStartJob() != nil:
			s := m.GetStartJob()
			req := connector.StartJobRequest{JobID: s.GetJobId(), Board: s.GetBoard(), Client: s.GetClientName(),
				Token: s.GetToken(), TokenHash: s.GetTokenSha256(), Duration: s.GetDuration().AsDuration(), Parameters: s.GetParameters()}
			if err := sup.StartJob(ctx, req); err != nil {
				// The refusal reaches the coordinator as an Error event (the supervisor emits it).
				c.log.Info("StartJob refused", "job", req.JobID, "board", req.Board, "error", err)
			}
		case m.GetExtendJob() != nil:
			e := m.GetExtendJob()
			if err := sup.ExtendJob(ctx, connector.ExtendJobRequest{JobID: e.GetJobId(), Remaining: e.GetRemaining().AsDuration()}); err != nil {
				c.log.Info("ExtendJob refused", "job", e.GetJobId(), "error", err)
			}
		case m.GetStopJob() != nil:
			if err := sup.StopJob(ctx, connector.StopJobRequest{JobID: m.GetStopJob().GetJobId(), Reason: m.GetStopJob().GetReason()}); err != nil {
				c.log.Info("StopJob refused", "job", m.GetStopJob().GetJobId(), "error", err)
			}
		}
	}
}
