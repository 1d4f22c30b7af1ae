// Package client is the user's side of a lease: it asks the coordinator for a board,
// connects to the supervisor serving it, and prints the hook-visibility dialogue of the
// Jumpstarter proposal (DESIGN.md §9) while the hooks run:
//
//	Connecting to exporter...
//	Waiting for beforeLease hooks to complete...
//	[Hook INFO] Powering on device...
//	beforeLease hooks completed successfully!
//	Connected to device.
//	...
//	Releasing lease...
//	afterLease hooks running (press Ctrl+C to disconnect):
//	[Hook Output] Saving logs to archive...
//	afterLease hooks completed.
package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Client talks to a coordinator on behalf of a user.
type Client struct {
	Leases pb.LeaseServiceClient
	// Out receives the dialogue.
	Out io.Writer
	// Dial connects to a supervisor's client service (nil: plaintext gRPC).
	Dial func(endpoint string) (*grpc.ClientConn, error)

	scr   screen    // progress lines shown in place when Out is a terminal
	clock hookClock // a running hook's time against its timeout

	mu  sync.Mutex
	att *attachment // holds the lease Acquire created, until Detach
}

// ErrHookFailed is returned when the beforeLease hook failed the lease.
var ErrHookFailed = errors.New("beforeLease hook failed")

func (c *Client) say(format string, args ...any) {
	c.scr.mu.Lock()
	defer c.scr.mu.Unlock()
	c.clearProgress()
	fmt.Fprintf(c.Out, format+"\n", args...)
}

// started reports whether a supervisor took the lease on (it then knows its token).
func started(l *pb.Lease) bool {
	return l.GetBoard() != "" && l.GetExporterEndpoint() != "" && l.GetPhase() >= pb.LeasePhase_LEASE_PHASE_STARTING
}

// Session is a connection to the board of a lease.
type Session struct {
	c        *Client
	Lease    *pb.Lease
	conn     *grpc.ClientConn
	Exporter jpb.ExporterServiceClient
	lines    chan *jpb.LogStreamResponse
	errc     chan error
	cancel   context.CancelFunc
	phase    jobs.Phase
	// failure is the lease's SYSTEM line saying how its beforeLease hook failed: the
	// failure report says it once.
	failure string
}

// Context returns ctx with the metadata a call to the lease's board needs.
func (s *Session) Context(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, s.Lease.GetBoard(), "authorization", "Bearer "+s.Lease.GetToken())
}

// Connect connects to the lease's board and prints the beforeLease part of the dialogue,
// returning once the lease is READY. A failed beforeLease hook returns ErrHookFailed
// after printing the failure and the hook's last lines.
func (c *Client) Connect(ctx context.Context, lease *pb.Lease) (*Session, error) {
	c.say("Connecting to exporter...")
	dial := c.Dial
	if dial == nil {
		dial = func(ep string) (*grpc.ClientConn, error) {
			return grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
	}
	conn, err := dial(lease.GetExporterEndpoint())
	if err != nil {
		return nil, fmt.Errorf("connect to exporter %s: %w", lease.GetExporterEndpoint(), err)
	}
	s := &Session{c: c, Lease: lease, conn: conn, Exporter: jpb.NewExporterServiceClient(conn),
		lines: make(chan *jpb.LogStreamResponse, 64), errc: make(chan error, 1)}
	sctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	stream, err := s.Exporter.LogStream(s.Context(sctx), &emptypb.Empty{})
	if err != nil {
		s.Close()
		return nil, c.endedBefore(lease, fmt.Errorf("log stream: %s", statusText(err)))
	}
	go s.follow(sctx, stream)
	waiting := false
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	defer c.stopHookClock()
	for {
		r, err := s.nextOrTick(ctx, tick.C)
		if err != nil {
			s.Close()
			return nil, c.endedBefore(lease, err)
		}
		if r == nil {
			s.Close()
			return nil, fmt.Errorf("lease %s ended before it was ready", lease.GetId())
		}
		if r == ticked {
			c.tickHookClock()
			continue
		}
		phase, status := s.marker(r)
		switch {
		case phase == jobs.PhaseBeforeLease && status == jobs.StatusBeforeLeaseHook:
			c.say("Waiting for beforeLease hooks to complete...")
			c.startHookClock("beforeLease", r.GetMessage())
			waiting = true
		case phase == jobs.PhaseReady:
			c.stopHookClock()
			if waiting {
				c.say("beforeLease hooks completed successfully!")
			}
			c.say("Connected to device.")
			return s, nil
		case phase >= jobs.PhaseEnding && status == jobs.StatusBeforeLeaseHookFailed:
			// One line says the failure (the hook's lines were shown as they came).
			c.stopHookClock()
			why := s.failure
			if why == "" {
				why = strings.TrimPrefix(r.GetMessage(), "lease ENDING: lease ending: ")
			}
			c.say("beforeLease hook failed: %s", strings.TrimPrefix(why, "beforeLease hook failed: "))
			s.Close()
			return nil, ErrHookFailed
		case phase >= jobs.PhaseEnding:
			s.Close()
			return nil, fmt.Errorf("lease %s ended before it was ready: %s", lease.GetId(), strings.TrimPrefix(r.GetMessage(), "lease ENDING: lease ending: "))
		case phase == 0 && r.GetSource() != jpb.LogSource_LOG_SOURCE_MESSAGE: // the motd is GetReport's (upstream.go)
			s.print(r)
		}
	}
}

// ticked is what nextOrTick returns when the tick came first.
var ticked = &jpb.LogStreamResponse{}

// nextOrTick is next, or ticked when tick fires first.
func (s *Session) nextOrTick(ctx context.Context, tick <-chan time.Time) (*jpb.LogStreamResponse, error) {
	select {
	case <-tick:
		return ticked, nil
	default:
	}
	select {
	case r, ok := <-s.lines:
		if !ok {
			return s.next(ctx)
		}
		return r, nil
	case <-tick:
		return ticked, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReconnectTimeout bounds how long a session waits for a supervisor that went away
// (a restart) to come back.
var ReconnectTimeout = 2 * time.Minute

// follow reads the lease's log into s.lines until the lease ends. When the supervisor
// goes away mid-lease (a restart: the lease goes on there), it says so and follows the
// log again once the supervisor is back, with the same token.
func (s *Session) follow(ctx context.Context, stream grpc.ServerStreamingClient[jpb.LogStreamResponse]) {
	defer close(s.lines)
	for {
		r, err := stream.Recv()
		if err == nil {
			select {
			case s.lines <- r:
			case <-ctx.Done():
				return
			}
			continue
		}
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return
		}
		if status.Code(err) != codes.Unavailable {
			s.errc <- err
			return
		}
		s.c.say("Reconnecting to exporter...")
		if stream, err = s.reopen(ctx); err != nil {
			s.errc <- err
			return
		}
		s.c.say("Reconnected to exporter.")
	}
}

// reopen waits for the supervisor to answer again and opens the lease's log anew.
func (s *Session) reopen(ctx context.Context) (grpc.ServerStreamingClient[jpb.LogStreamResponse], error) {
	deadline := time.Now().Add(ReconnectTimeout)
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := s.Exporter.GetStatus(s.Context(attempt), &jpb.GetStatusRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			stream, err := s.Exporter.LogStream(s.Context(ctx), &emptypb.Empty{})
			if err == nil {
				return stream, nil
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the exporter did not come back within %s: %s", ReconnectTimeout, statusText(err))
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

// next returns the next log line, nil at the end of the stream.
func (s *Session) next(ctx context.Context) (*jpb.LogStreamResponse, error) {
	select {
	case r, ok := <-s.lines:
		if !ok {
			select {
			case err := <-s.errc:
				return nil, fmt.Errorf("log stream: %s", statusText(err))
			default:
				return nil, nil
			}
		}
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// marker returns the phase and status of a phase-marker line (0 for a plain line).
func (s *Session) marker(r *jpb.LogStreamResponse) (jobs.Phase, jobs.ExporterStatus) {
	f := r.GetStructuredFields()
	if f[exporter.FieldPhase] == "" {
		return 0, 0
	}
	p, _ := jobs.ParsePhase(f[exporter.FieldPhase])
	s.phase = p
	var st jobs.ExporterStatus
	for i := jobs.StatusUnspecified; i <= jobs.StatusAfterLeaseHookFailed; i++ {
		if i.String() == f[exporter.FieldStatus] {
			st = i
		}
	}
	return p, st
}

// print shows one log line the way the proposal does.
func (s *Session) print(r *jpb.LogStreamResponse) {
	if r.GetMissed() > 0 {
		s.c.say("[boardvisor] (%d lines missed: this client fell behind)", r.GetMissed())
	}
	sev := DisplaySeverity(r.GetSeverity())
	if r.GetSource() == jpb.LogSource_LOG_SOURCE_SYSTEM && sev == "ERROR" && strings.HasPrefix(r.GetMessage(), "beforeLease hook failed: ") {
		s.failure = Visible(r.GetMessage()) // said once, by the failure report
		return
	}
	s.c.hookLine(r.GetSource(), sev, r.GetMessage(), r.GetProgress())
}

// hookLine shows one line of a lease's log the way the proposal does: a hook's lines as
// "[Hook INFO] ..." (the afterLease hook's INFO lines as "[Hook Output] ..."), progress
// lines in place, the message of the day as it is, boardvisor's own lines only when
// they are warnings or errors. The text is untrusted: control characters in it are made
// visible, so a hook cannot move the cursor or retitle the terminal.
func (c *Client) hookLine(src jpb.LogSource, sev, msg string, progress bool) {
	if src == jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK && sev == "INFO" {
		sev = "Output"
	}
	if progress && (src == jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK || src == jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK) {
		c.progress(fmt.Sprintf("[Hook %s] %s", sev, msg))
		return
	}
	msg = Visible(msg)
	switch src {
	case jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK:
		c.say("[Hook %s] %s", sev, msg)
	case jpb.LogSource_LOG_SOURCE_MESSAGE:
		c.say("%s", msg)
	default:
		if sev != "INFO" {
			c.say("[boardvisor %s] %s", sev, msg)
		}
	}
}

// afterLease prints the afterLease part of the dialogue as the lease's phases change.
type afterLease struct {
	c       *Client
	running bool
}

// phase takes a phase change with the board's status from then on, and the phase's
// message (which names the hook's timeout, for the hook's clock).
func (a *afterLease) phase(p jobs.Phase, st jobs.ExporterStatus, msg string) {
	if p == jobs.PhaseReleasing {
		a.c.stopHookClock()
	}
	switch {
	case p == jobs.PhaseAfterLease && st == jobs.StatusAfterLeaseHook:
		a.c.say("afterLease hooks running (press Ctrl+C to disconnect):")
		a.c.startHookClock("afterLease", msg)
		a.running = true
	case p == jobs.PhaseReleasing && st == jobs.StatusAfterLeaseHookFailed:
		a.c.say("afterLease hook failed.")
		a.running = false
	}
}

// ended is the end of the lease's log.
func (a *afterLease) ended() {
	a.c.stopHookClock()
	if a.running {
		a.c.say("afterLease hooks completed.")
	}
}

// disconnected is the user leaving (Ctrl+C) before the end.
func (a *afterLease) disconnected() {
	a.c.stopHookClock()
	a.c.say("Disconnected; the afterLease hook goes on.")
}

// Release ends the lease and follows the afterLease hook until the lease is over. If
// ctx is cancelled (Ctrl+C) it disconnects at once: the hook goes on without us.
func (s *Session) Release(ctx context.Context) error {
	defer s.Close()
	s.c.say("Releasing lease...")
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := s.Exporter.EndSession(s.Context(rctx), &jpb.EndSessionRequest{}); err != nil {
		return fmt.Errorf("end session: %s", statusText(err))
	}
	al := &afterLease{c: s.c}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	defer s.c.stopHookClock()
	for {
		r, err := s.nextOrTick(ctx, tick.C)
		if errors.Is(err, context.Canceled) {
			al.disconnected()
			return nil
		}
		if err != nil {
			return err
		}
		if r == ticked {
			s.c.tickHookClock()
			continue
		}
		if r == nil {
			al.ended()
			return nil
		}
		if phase, status := s.marker(r); phase != 0 {
			al.phase(phase, status, r.GetMessage())
		} else {
			s.print(r)
		}
	}
}

// Close drops the connection.
func (s *Session) Close() {
	s.cancel()
	s.conn.Close()
}

// statusText is the message of a gRPC error, without its code's boilerplate.
func statusText(err error) string { return status.Convert(err).Message() }

// endedBefore explains a failure to follow a lease that may have ended before the
// client reached its board (an image that could not be fetched fails a lease in a
// moment, and its board forgets it at once): the coordinator's account of its end,
// awaited for a few seconds, else err.
func (c *Client) endedBefore(lease *pb.Lease, err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w, werr := c.Leases.WatchLease(ctx, &pb.WatchLeaseRequest{Id: lease.GetId()})
	if werr != nil {
		return err
	}
	for {
		l, rerr := w.Recv()
		if rerr != nil {
			return err
		}
		if p := l.GetPhase(); p == pb.LeasePhase_LEASE_PHASE_DONE || p == pb.LeasePhase_LEASE_PHASE_FAILED {
			return fmt.Errorf("lease %s ended before it was ready: %s", lease.GetId(), l.GetStatusMessage())
		}
	}
}
