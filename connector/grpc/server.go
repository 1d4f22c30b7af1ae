package grpc

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Handler is the coordinator's side of the link: what it does with supervisors.
type Handler interface {
	// Connected is called when an authenticated supervisor says Hello. It returns the
	// highest event sequence number the coordinator has already stored from this
	// supervisor: events up to it are acknowledged at once and not delivered again.
	// An error refuses the supervisor (the stream ends with it).
	Connected(ctx context.Context, s *Session, hello *pb.Hello) (lastSeen uint64, err error)
	// Events delivers new events of a supervisor, in sequence order, each at most once
	// per coordinator process (the link drops duplicates). When it returns nil they are
	// acknowledged to the supervisor, which may then forget them; an error ends the
	// stream and the supervisor sends them again after it reconnects.
	Events(ctx context.Context, s *Session, evs []*pb.Event) error
	// Disconnected is called once when a session's stream ends, with why.
	Disconnected(s *Session, err error)
}

// EventPipeliner is implemented by a Handler that can take a session's next batch of
// events before the previous one is durable. SubmitEvents queues evs and returns at
// once; wait returns nil once they are durable, or why they are not (the stream then
// ends and the supervisor sends them again). The server submits a session's batches in
// sequence order; the handler must store them in that order and never store a batch
// whose predecessor failed (nor anything after it). With it, the server keeps up to
// MaxInFlight batches of a session being stored at once, so that one supervisor's
// stream is not bound to one commit per batch.
type EventPipeliner interface {
	SubmitEvents(ctx context.Context, s *Session, evs []*pb.Event) (wait func() error)
}

// Authenticator maps a supervisor's token (from the "authorization: Bearer <token>"
// metadata) to the supervisor ID it may use. It returns an error for an unknown token.
type Authenticator func(token string) (supervisorID string, err error)

// StaticTokens returns an Authenticator for a fixed token -> supervisor ID table. Tokens
// are compared in constant time: the SHA-256 of the token presented is compared with
// that of every known token, all of them, so that neither the time taken nor an early
// exit tells anything about a token's bytes or its length. An empty supervisor ID means
// any ID is allowed.
func StaticTokens(tokens map[string]string) Authenticator {
	type entry struct {
		sum [sha256.Size]byte
		id  string
	}
	table := make([]entry, 0, len(tokens))
	for t, id := range tokens {
		table = append(table, entry{sha256.Sum256([]byte(t)), id})
	}
	return func(token string) (string, error) {
		sum := sha256.Sum256([]byte(token))
		found, id := 0, ""
		for _, e := range table {
			if subtle.ConstantTimeCompare(e.sum[:], sum[:]) == 1 {
				found, id = 1, e.id
			}
		}
		if found == 0 {
			return "", errors.New("unknown supervisor token")
		}
		return id, nil
	}
}

// Session is one connected supervisor.
type Session struct {
	// ID is the supervisor's ID from its Hello.
	ID string
	// Peer is the supervisor's network address, for logs.
	Peer string
	// Instance is the Hello's instance_id: the same for every session of one run of the
	// supervisor process.
	Instance string
	// Since is when the session began.
	Since time.Time

	ctx    context.Context // the stream's
	out    chan *pb.CoordinatorMessage
	closed chan struct{}
	once   sync.Once
}

// ErrSessionClosed is returned when sending to a supervisor whose stream has ended.
var ErrSessionClosed = errors.New("supervisor session closed")

// SendQueue is how many messages may wait to be sent to one supervisor.
const SendQueue = 1024

func (s *Session) send(m *pb.CoordinatorMessage) error {
	select {
	case <-s.closed:
		return ErrSessionClosed
	default:
	}
	select {
	case s.out <- m:
		return nil
	case <-s.closed:
		return ErrSessionClosed
	default:
		return fmt.Errorf("supervisor %s: send queue full (%d messages)", s.ID, SendQueue)
	}
}

// StartJob asks the supervisor to start a job. It only queues the request; the outcome
// arrives as events.
func (s *Session) StartJob(m *pb.StartJob) error {
	return s.send(&pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_StartJob{StartJob: m}})
}

// StopJob asks the supervisor to stop a job. It only queues the request.
func (s *Session) StopJob(m *pb.StopJob) error {
	return s.send(&pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_StopJob{StopJob: m}})
}

// Closed is closed when the session's stream has ended.
func (s *Session) Closed() <-chan struct{} { return s.closed }

// Alive reports whether the session's stream is still up, as far as this end knows (a
// peer gone without a word is noticed by the keepalive).
func (s *Session) Alive() bool {
	select {
	case <-s.closed:
		return false
	default:
	}
	return s.ctx == nil || s.ctx.Err() == nil
}

func (s *Session) close() { s.once.Do(func() { close(s.closed) }) }

// Server is the coordinator's end of proto/boardvisor/v1's SupervisorLink.
type Server struct {
	pb.UnimplementedSupervisorLinkServer
	Handler Handler
	// Auth checks supervisor tokens; nil accepts every supervisor (tests and trusted
	// networks only).
	Auth   Authenticator
	Logger hclog.Logger
	// MaxBatch bounds how many events are handed to Handler.Events at once (default 256).
	MaxBatch int
	// MaxInFlight bounds how many batches of one session are being stored at once when
	// the Handler is an EventPipeliner (default 16); acknowledgements follow in order.
	MaxInFlight int
	// HelloTimeout bounds the wait for a new stream's Hello (default 10s).
	HelloTimeout time.Duration
	// Audit, if set, records every supervisor refused for its token (an audit log,
	// e.g. *audit.Log). who is the supervisor's network address, or its claimed ID; the
	// reason never holds the token.
	Audit Auditor
	// Authenticated, if set, is called with a stream's context once its token is
	// accepted (at once when Auth is nil).
	Authenticated func(ctx context.Context)
}

// Auditor records refused accesses.
type Auditor interface {
	Refused(who, board, job, reason string)
}

func (s *Server) refused(who, reason string) {
	if s.Audit != nil {
		s.Audit.Refused(who, "", "", reason)
	}
}

// Register registers the link service on g.
func (s *Server) Register(g *ggrpc.Server) { pb.RegisterSupervisorLinkServer(g, s) }

func tokenFrom(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			return t
		}
	}
	return ""
}

// Connect serves one supervisor's stream.
func (s *Server) Connect(stream pb.SupervisorLink_ConnectServer) error {
	ctx := stream.Context()
	log := s.logger()
	allowedID := ""
	if s.Auth != nil {
		id, err := s.Auth(tokenFrom(ctx))
		if err != nil {
			log.Warn("supervisor refused: bad token", "peer", peerOf(ctx))
			s.refused(peerOf(ctx), "supervisor token not accepted")
			return status.Error(codes.Unauthenticated, "supervisor token not accepted by the coordinator")
		}
		allowedID = id
	}
	if s.Authenticated != nil {
		s.Authenticated(ctx)
	}
	hello, err := s.readHello(stream)
	if err != nil {
		return err
	}
	if hello.GetSupervisorId() == "" {
		return status.Error(codes.InvalidArgument, "Hello without a supervisor_id")
	}
	if allowedID != "" && hello.GetSupervisorId() != allowedID {
		log.Warn("supervisor refused: token belongs to another supervisor", "peer", peerOf(ctx), "claimed", hello.GetSupervisorId())
		s.refused(peerOf(ctx), fmt.Sprintf("claimed to be supervisor %q with the token of supervisor %q", hello.GetSupervisorId(), allowedID))
		return status.Errorf(codes.PermissionDenied, "this token is for supervisor %q, not %q: set coordinator.supervisorId: %s in the supervisor's config, or give %s a token of its own (a `%s TOKEN` line in the coordinator's --supervisor-tokens file)",
			allowedID, hello.GetSupervisorId(), allowedID, hello.GetSupervisorId(), hello.GetSupervisorId())
	}
	sess := &Session{ID: hello.GetSupervisorId(), Peer: peerOf(ctx), Instance: hello.GetInstanceId(), Since: time.Now(),
		ctx: ctx, out: make(chan *pb.CoordinatorMessage, SendQueue), closed: make(chan struct{})}
	defer sess.close()
	lastSeen, err := s.Handler.Connected(ctx, sess, hello)
	if err != nil {
		s.Handler.Disconnected(sess, err)
		if _, ok := status.FromError(err); ok {
			return err // the handler's own refusal (e.g. AlreadyExists), as it said it
		}
		return status.Errorf(codes.FailedPrecondition, "coordinator refused supervisor %s: %v", sess.ID, err)
	}
	log = log.With("supervisor", sess.ID)
	log.Info("supervisor connected", "peer", sess.Peer, "boards", len(hello.GetBoards()), "live_jobs", len(hello.GetLiveJobs()), "last_acked", hello.GetLastAckedSeq(), "last_seen", lastSeen)
	if err := stream.Send(&pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_Welcome{Welcome: &pb.Welcome{LastSeqSeen: lastSeen}}}); err != nil {
		s.Handler.Disconnected(sess, err)
		return err
	}
	err = s.serve(ctx, stream, sess, lastSeen)
	s.Handler.Disconnected(sess, err)
	if err != nil && !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
		log.Warn("supervisor stream ended", "error", err)
		return err
	}
	log.Info("supervisor disconnected")
	return nil
}

func (s *Server) logger() hclog.Logger {
	if s.Logger == nil {
		return hclog.NewNullLogger()
	}
	return s.Logger
}

func (s *Server) readHello(stream pb.SupervisorLink_ConnectServer) (*pb.Hello, error) {
	timeout := s.HelloTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	type result struct {
		m   *pb.SupervisorMessage
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		h := r.m.GetHello()
		if h == nil {
			return nil, status.Error(codes.InvalidArgument, "the first message on the link must be Hello")
		}
		return h, nil
	case <-time.After(timeout):
		return nil, status.Errorf(codes.DeadlineExceeded, "no Hello within %s", timeout)
	}
}

// serve runs the stream: events in (deduplicated, batched, acknowledged), requests out.
func (s *Server) serve(ctx context.Context, stream pb.SupervisorLink_ConnectServer, sess *Session, lastSeen uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	maxBatch := s.MaxBatch
	if maxBatch <= 0 {
		maxBatch = 256
	}
	in := make(chan *pb.Event, maxBatch)
	errc := make(chan error, 3)
	// Reader: owned by serve; ends when the stream ends (ctx cancelled on return).
	go func() {
		defer close(in)
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			ev := m.GetEvent()
			if ev == nil {
				errc <- status.Error(codes.InvalidArgument, "only events may follow Hello")
				return
			}
			select {
			case in <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	// Writer: sends requests and acks in the order they were queued.
	acks := make(chan uint64, 1)
	go func() {
		for {
			var m *pb.CoordinatorMessage
			select {
			case m = <-sess.out:
			case up := <-acks:
				m = &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_Ack{Ack: &pb.Ack{UpToSeq: up}}}
			case <-ctx.Done():
				return
			}
			if err := stream.Send(m); err != nil {
				errc <- err
				return
			}
		}
	}()
	// Pipelined storing: batches submitted and not yet durable, in order. The acker
	// waits for each and acknowledges it; the first failure ends the stream.
	pipe, _ := s.Handler.(EventPipeliner)
	type submitted struct {
		wait func() error // nil: nothing new, only replays to acknowledge
		upTo uint64
	}
	var inflight chan submitted
	var slots chan struct{} // one per batch submitted and not yet acknowledged
	ack := func(up uint64) {
		// Coalesce acks: the writer sends the newest.
		select {
		case acks <- up:
		default:
			select {
			case <-acks:
			default:
			}
			acks <- up
		}
	}
	if pipe != nil {
		maxInFlight := s.MaxInFlight
		if maxInFlight <= 0 {
			maxInFlight = 16
		}
		inflight = make(chan submitted, maxInFlight)
		slots = make(chan struct{}, maxInFlight)
		go func() {
			for {
				var b submitted
				select {
				case b = <-inflight:
				case <-ctx.Done():
					return
				}
				if b.wait != nil {
					if err := b.wait(); err != nil {
						errc <- status.Errorf(codes.Internal, "coordinator could not store events: %v", err)
						return
					}
				}
				ack(b.upTo)
				<-slots
			}
		}()
	}
	next := lastSeen + 1
	for {
		var first *pb.Event
		select {
		case ev, ok := <-in:
			if !ok {
				return <-errc
			}
			first = ev
		case err := <-errc:
			return err
		case <-ctx.Done():
			// The coordinator ended the session (it stood down, or closes).
			return status.FromContextError(ctx.Err()).Err()
		}
		batch := []*pb.Event{first}
	drain:
		for len(batch) < maxBatch {
			select {
			case ev, ok := <-in:
				if !ok {
					break drain
				}
				batch = append(batch, ev)
			default:
				break drain
			}
		}
		fresh := batch[:0]
		for _, ev := range batch {
			switch {
			case ev.GetSeq() < next:
				// A replay of an event already stored: acknowledge again, drop.
			case ev.GetSeq() == next:
				fresh = append(fresh, ev)
				next++
			default:
				return status.Errorf(codes.InvalidArgument, "event sequence gap: expected %d, got %d", next, ev.GetSeq())
			}
		}
		if pipe != nil {
			select {
			case slots <- struct{}{}:
			case err := <-errc:
				return err
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
			b := submitted{upTo: next - 1}
			if len(fresh) > 0 {
				b.wait = pipe.SubmitEvents(ctx, sess, fresh)
			}
			inflight <- b // room: it holds as many as there are slots
			continue
		}
		if len(fresh) > 0 {
			if err := s.Handler.Events(ctx, sess, fresh); err != nil {
				return status.Errorf(codes.Internal, "coordinator could not store events: %v", err)
			}
		}
		ack(next - 1)
	}
}
