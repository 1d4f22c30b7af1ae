// Package exporter is the supervisor's client-facing gRPC service: upstream
// Jumpstarter's ExporterService (plus WatchStatus), one listener for all the boards of a
// supervisor. A call chooses its board with the "boardvisor-board" metadata key and
// proves it holds the board's lease with "authorization: Bearer <lease token>".
//
// The service is fed the supervisor's events (in sequence order, through an outbox sink)
// and never reaches into actor state: board status with a version counter and the
// previous status, each lease's log (hook lines, SYSTEM lines) for late joiners, and
// which leases are READY.
package exporter

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Metadata keys of client calls.
const (
	MDBoard  = "boardvisor-board"   // the board the call is for
	MDNoWait = "boardvisor-no-wait" // "1": a driver call fails with FAILED_PRECONDITION instead of waiting for READY
)

// Structured fields of the SYSTEM log line that marks a lease's phase change.
const (
	FieldPhase  = "phase"  // the new phase, e.g. "READY"
	FieldStatus = "status" // the board's status after it, e.g. "LEASE_READY"
)

// Ender ends a client's lease (the supervisor).
type Ender interface {
	EndSession(ctx context.Context, board, jobID string) error
}

// EnderFunc adapts a function to Ender.
type EnderFunc func(ctx context.Context, board, jobID string) error

// EndSession calls f.
func (f EnderFunc) EndSession(ctx context.Context, board, jobID string) error {
	return f(ctx, board, jobID)
}

// Drivers runs driver calls for READY leases. Nil means no driver is callable yet.
type Drivers interface {
	Call(ctx context.Context, board, driver, method string, args []*structpb.Value) (*structpb.Value, error)
	Stream(ctx context.Context, board, driver, method string, args []*structpb.Value, send func(*structpb.Value) error) error
}

// Auditor records refused accesses (an audit log). who is the caller's network
// address; reason never holds a token.
type Auditor interface {
	Refused(who, board, job, reason string)
}

// RequestAuditor is implemented by an Auditor that also records who asked for what:
// the coordinator's StartJob and StopJob (who is the lease's client, or "coordinator")
// and the clients' EndSession (who is the caller's address).
type RequestAuditor interface {
	Request(who, board, job, what, reason string)
}

// Limits bound what clients may hold open, so that no client can make the service
// grow without bound. Every open stream costs a goroutine and a queue of at most
// SubscriberBuffer lines; gRPC bounds the streams of one connection
// (MaxConcurrentStreams in package supervisor), these bound them across connections.
type Limits struct {
	// MaxWatchStreams bounds the WatchStatus streams open at once on the whole
	// service (they need no token). Default DefaultMaxWatchStreams.
	MaxWatchStreams int
	// MaxLogStreamsPerLease bounds the LogStream streams open at once for one lease.
	// Default DefaultMaxLogStreamsPerLease.
	MaxLogStreamsPerLease int
	// MaxEndedLeases and MaxEndedBytes bound the ended leases kept for their grace
	// period (grace.go). Defaults DefaultMaxEndedLeases, DefaultMaxEndedBytes.
	MaxEndedLeases, MaxEndedBytes int
	// MaxConsoleStreamsPerLease bounds the console streams (RouterService.Stream) open
	// at once for one lease. Default DefaultMaxConsoleStreamsPerLease.
	MaxConsoleStreamsPerLease int
}

// Defaults of Limits.
const (
	DefaultMaxWatchStreams       = 4096
	DefaultMaxLogStreamsPerLease = 64
	// DefaultMaxConsoleStreamsPerLease bounds a lease's open console streams.
	DefaultMaxConsoleStreamsPerLease = 16
)

// Service implements jumpstarter.v1.ExporterService. Its zero value is not usable; use New.
type Service struct {
	jpb.UnimplementedExporterServiceServer
	ender   Ender
	drivers Drivers

	// Audit, if set, records every access refused with UNAUTHENTICATED or
	// PERMISSION_DENIED, and, if it is a RequestAuditor, every lease request. Set it
	// before the service is registered.
	Audit Auditor
	// HookKey, if set, turns on hook tokens (see HookToken): hooks may then call drivers
	// while they run. Set it before the service is used.
	HookKey []byte
	// Limits bound the streams clients may hold open. Set them before the service is
	// registered.
	Limits Limits

	// FailedStatusHold is how long a failed hook's status is shown at least (view.go);
	// zero: DefaultFailedStatusHold.
	FailedStatusHold time.Duration
	// LogGrace is how long an ended lease's log and status stay readable with its
	// token (grace.go); zero: DefaultLogGrace, negative: not at all.
	LogGrace time.Duration
	// MotdFile, if set, names the file a lease's hooks get as $JMP_MOTD_FILE (motd.go).
	MotdFile func(job string) string
	// ClientCAs, if set, are the CAs whose client certificates the servers built with
	// ServerOptions require (peers.go).
	ClientCAs *x509.CertPool
	// PeerAuthenticated, if set, is called with a call's peer address once the call has
	// proved itself: a lease's or a hook's token, or a client certificate of ClientCAs.
	// It must not block.
	PeerAuthenticated func(addr string)

	mu         sync.Mutex
	boards     map[string]*boardState
	leases     map[string]*leaseState
	tokens     map[string]*leaseState // by token hash
	watchers   int                    // WatchStatus streams open
	ended      map[string]*leaseState // ended leases in their grace period, by token hash
	endedQ     []*leaseState          // the same, in the order they ended
	endedBytes int                    // of their logs
}

// New returns a service for the named boards (name -> labels).
func New(boards map[string]map[string]string, ender Ender, drivers Drivers) *Service {
	s := &Service{ender: ender, drivers: drivers, boards: map[string]*boardState{},
		leases: map[string]*leaseState{}, tokens: map[string]*leaseState{}, ended: map[string]*leaseState{}}
	for name, labels := range boards {
		s.board(name).labels = labels
	}
	return s
}

// Sink is the outbox sink that feeds the service. It waits for nothing but, once per
// lease, the read of the small file a beforeLease hook may leave (motd.go).
func (s *Service) Sink(ev connector.Event) {
	motd, err := s.motdFor(ev)
	s.apply(ev, motd, err)
}

// Register registers the service (ExporterService and RouterService), gRPC health and
// server reflection on g.
func (s *Service) Register(g *grpc.Server) {
	jpb.RegisterExporterServiceServer(g, s)
	jpb.RegisterRouterServiceServer(g, router{s: s})
	hs := health.NewServer()
	hs.SetServingStatus(jpb.ExporterService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
}

// Wrap returns sup with lease tokens registered: a StartJob the supervisor accepts makes
// its token valid for its board until the lease ends.
func (s *Service) Wrap(sup connector.Supervisor) connector.Supervisor { return wrapped{s, sup} }

type wrapped struct {
	s *Service
	connector.Supervisor
}

func (w wrapped) StartJob(ctx context.Context, req connector.StartJobRequest) error {
	who := req.Client
	if who == "" {
		who = "coordinator"
	}
	w.s.request(who, req.Board, req.JobID, "StartJob", "")
	l := w.s.register(req)
	err := w.Supervisor.StartJob(ctx, req)
	if err != nil && l != nil {
		if k, _ := jobs.KindOf(err); k != jobs.KindJobAlreadyExists {
			w.s.mu.Lock()
			w.s.endLease(l, false)
			w.s.mu.Unlock()
		}
	}
	return err
}

func (w wrapped) StopJob(ctx context.Context, req connector.StopJobRequest) error {
	w.s.mu.Lock()
	board := ""
	if l := w.s.leases[req.JobID]; l != nil {
		board = l.board
	}
	w.s.mu.Unlock()
	w.s.request("coordinator", board, req.JobID, "StopJob", req.Reason)
	return w.Supervisor.StopJob(ctx, req)
}

func (s *Service) request(who, board, job, what, reason string) {
	if a, ok := s.Audit.(RequestAuditor); ok {
		a.Request(who, board, job, what, reason)
	}
}

func (s *Service) register(req connector.StartJobRequest) *leaseState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.leases[req.JobID]; l != nil {
		return nil
	}
	hash := req.TokenHash // the coordinator sent only the hash
	if req.Token != "" {
		hash = jobs.TokenHash(req.Token)
	}
	return s.add(req.JobID, req.Board, hash, jobs.PhaseCreated)
}

func (s *Service) add(job, board, tokenHash string, phase jobs.Phase) *leaseState {
	l := &leaseState{job: job, board: board, phase: phase, tokenHash: tokenHash, subs: map[*queue[logLine]]bool{},
		ready: make(chan struct{}), ended: make(chan struct{})}
	if phase >= jobs.PhaseReady {
		l.markReadyOrNever()
	}
	if tokenHash != "" {
		s.tokens[tokenHash] = l
	}
	s.leases[job] = l
	return l
}

// Restore makes a lease resumed after a restart known again, so that its client can
// reconnect with its token. (Its earlier log lines are not kept across the restart.)
//
// A lease past its beforeLease hook gets its message of the day again from the hook's
// file (it lives until the lease ends).
func (s *Service) Restore(job, board, tokenHash string, phase jobs.Phase) {
	motd := ""
	if s.MotdFile != nil && phase >= jobs.PhaseReady && !phase.Terminal() {
		motd, _ = readMotd(s.MotdFile(job))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases[job] == nil && !phase.Terminal() {
		s.add(job, board, tokenHash, phase).motd = motd
	}
}

// GetStatus returns the status clients are shown (view.go), its version and the
// previous status. Reading a status needs no token (as upstream); with the token of a
// lease that ended (in its grace period) it is that lease's final status: the failed
// hook's, if one failed it, so that a client that comes late learns what happened.
func (s *Service) GetStatus(ctx context.Context, _ *jpb.GetStatusRequest) (*jpb.GetStatusResponse, error) {
	b, err := s.boardFor(ctx)
	if err != nil {
		return nil, err
	}
	l := s.optionalLease(ctx, b)
	s.mu.Lock()
	st := b.st
	if l != nil && s.leases[l.job] != l {
		st = l.final
		if st.version == 0 {
			st.version = b.st.version
		}
	}
	s.mu.Unlock()
	return statusResponse(st), nil
}

func statusResponse(st statusMsg) *jpb.GetStatusResponse {
	r := &jpb.GetStatusResponse{Status: jpb.ExporterStatus(st.status), StatusVersion: st.version}
	if st.version > 1 {
		prev := jpb.ExporterStatus(st.prev)
		r.PreviousStatus = &prev
	}
	if st.message != "" {
		r.Message = &st.message
	}
	return r
}

// WatchStatus sends the board's status, then every change, until the client leaves.
// A jump in status_version tells a slow client it missed changes.
func (s *Service) WatchStatus(_ *jpb.WatchStatusRequest, stream grpc.ServerStreamingServer[jpb.GetStatusResponse]) error {
	b, err := s.boardFor(stream.Context())
	if err != nil {
		return err
	}
	q := newQueue[statusMsg](64)
	s.mu.Lock()
	if limit := orDefault(s.Limits.MaxWatchStreams, DefaultMaxWatchStreams); s.watchers >= limit {
		s.mu.Unlock()
		return status.Errorf(codes.ResourceExhausted, "too many status streams open on this supervisor (%d, the most allowed): close one or try again later", limit)
	}
	s.watchers++
	q.push(b.st)
	b.watch[q] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(b.watch, q)
		s.watchers--
		s.mu.Unlock()
	}()
	for {
		items, _, _ := q.take()
		for _, st := range items {
			if err := stream.Send(statusResponse(st)); err != nil {
				return err
			}
		}
		select {
		case <-q.notify:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// GetReport describes the board as upstream's client expects (report.go): a stable
// UUID, its labels, its drivers as a tree, and, for the holder of its lease, the
// message of the day the lease's beforeLease hook wrote.
func (s *Service) GetReport(ctx context.Context, _ *emptypb.Empty) (*jpb.GetReportResponse, error) {
	b, err := s.boardFor(ctx)
	if err != nil {
		return nil, err
	}
	motd := ""
	if l := s.optionalLease(ctx, b); l != nil {
		s.mu.Lock()
		motd = l.motd
		s.mu.Unlock()
	}
	return s.report(b, motd), nil
}

// LogStream sends the lease's log: first the lines so far, then live ones as they come,
// none missing and none twice; it ends when the lease ends — for an upstream client
// (upstreamCaller), only when the client leaves or the lease's grace period is over. A reader that falls behind
// by more than SubscriberBuffer lines is told how many it missed.
func (s *Service) LogStream(_ *emptypb.Empty, stream grpc.ServerStreamingServer[jpb.LogStreamResponse]) error {
	l, err := s.lease(stream.Context(), true)
	if err != nil {
		return err
	}
	q := newQueue[logLine](SubscriberBuffer)
	s.mu.Lock()
	if limit := orDefault(s.Limits.MaxLogStreamsPerLease, DefaultMaxLogStreamsPerLease); len(l.subs) >= limit {
		s.mu.Unlock()
		return status.Errorf(codes.ResourceExhausted, "too many log streams open for this lease (%d, the most allowed): close one and try again", limit)
	}
	history, dropped := append([]logLine(nil), l.lines...), l.dropped
	select {
	case <-l.ended:
		q.close()
	default:
		l.subs[q] = true
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(l.subs, q)
		s.mu.Unlock()
	}()
	send := func(line logLine, missed uint64) error {
		src := jpb.LogSource(line.Source)
		r := &jpb.LogStreamResponse{Uuid: l.board, Severity: UpstreamSeverity(line.Severity), Message: line.Text, Source: &src, Missed: missed, Progress: line.Progress}
		if line.Phase != 0 {
			r.StructuredFields = map[string]string{FieldPhase: line.Phase.String(), FieldStatus: line.Status.String()}
		}
		return stream.Send(r)
	}
	for i, line := range history {
		m := uint64(0)
		if i == 0 {
			m = dropped
		}
		if err := send(line, m); err != nil {
			return err
		}
	}
	for {
		items, missed, closed := q.take()
		for i, line := range items {
			m := uint64(0)
			if i == 0 {
				m = missed
			}
			if err := send(line, m); err != nil {
				return err
			}
		}
		if closed {
			s.holdOpen(stream.Context(), l)
			return nil
		}
		select {
		case <-q.notify:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// EndSession ends the caller's lease. The afterLease hook then runs; its lines go on
// arriving on LogStream until the lease is over.
//
// Ending a lease that has already ended (its token in the grace period) changes nothing
// and says so: upstream's shell, like boardvisor's, calls EndSession when its command
// is over, also when an upstream client in it ended the session already.
func (s *Service) EndSession(ctx context.Context, _ *jpb.EndSessionRequest) (*jpb.EndSessionResponse, error) {
	l, err := s.lease(ctx, true)
	if err != nil {
		return nil, err
	}
	select {
	case <-l.ended:
		msg := "the lease has already ended"
		return &jpb.EndSessionResponse{Success: true, Message: &msg}, nil
	default:
	}
	s.request(peerOf(ctx), l.board, l.job, "EndSession", "the client ended its session")
	if err := s.ender.EndSession(ctx, l.board, l.job); err != nil {
		if k, _ := jobs.KindOf(err); k == jobs.KindAlreadyStopping {
			msg := "the lease is already ending"
			return &jpb.EndSessionResponse{Success: true, Message: &msg}, nil
		}
		return nil, status.Errorf(codes.Internal, "end session: %v", err)
	}
	msg := "Session end triggered, afterLease hook running asynchronously"
	return &jpb.EndSessionResponse{Success: true, Message: &msg}, nil
}

// Reset is answered for the holder of the lease and does nothing: upstream resets a
// session's drivers when it starts, and boardvisor's drivers hold no per-session state
// to reset.
func (s *Service) Reset(ctx context.Context, _ *jpb.ResetRequest) (*jpb.ResetResponse, error) {
	if _, err := s.authorize(ctx); err != nil {
		return nil, err
	}
	return &jpb.ResetResponse{}, nil
}

// UpstreamSeverity names a severity as upstream's exporter does (Python's level
// names): INFO, WARNING, ERROR.
func UpstreamSeverity(sev jobs.Severity) string {
	if sev == jobs.SeverityWarn {
		return "WARNING"
	}
	return sev.String()
}

// HookToken is the token a lease's hooks get for driver calls: an HMAC of the job ID
// under the service's HookKey, so that it survives a restart of the daemon (re-adopted
// hooks keep theirs) and is never stored.
func (s *Service) HookToken(job string) string {
	m := hmac.New(sha256.New, s.HookKey)
	m.Write([]byte("boardvisor hook token\x00" + job))
	return hex.EncodeToString(m.Sum(nil))
}

// authorizeDriver admits a driver call: a client with its lease's token (the call then
// waits for READY), or a hook with its hook token while its hook runs (BEFORE_LEASE or
// AFTER_LEASE: hooks may call drivers; clients may not then).
func (s *Service) authorizeDriver(ctx context.Context) (l *leaseState, hook bool, err error) {
	board := boardName(ctx)
	token := token(ctx)
	s.mu.Lock()
	client := token != "" && s.tokens[jobs.TokenHash(token)] != nil
	s.mu.Unlock()
	// A client's token is found by its hash; only what is not one is tried as a hook's.
	if !client && token != "" && len(s.HookKey) > 0 {
		s.mu.Lock()
		var cands []*leaseState
		for _, c := range s.leases {
			if c.board == board {
				cands = append(cands, c)
			}
		}
		s.mu.Unlock()
		for _, c := range cands {
			if hmac.Equal([]byte(token), []byte(s.HookToken(c.job))) {
				s.mu.Lock()
				phase := c.phase
				s.mu.Unlock()
				if phase != jobs.PhaseBeforeLease && phase != jobs.PhaseAfterLease {
					s.refused(ctx, board, c.job, "hook token used outside the lease's hooks")
					return nil, true, status.Errorf(codes.PermissionDenied, "a hook may call drivers only while it runs (the lease is %s)", phase)
				}
				s.authenticated(ctx)
				return c, true, nil
			}
		}
	}
	l, err = s.authorize(ctx)
	if err != nil {
		return nil, false, err
	}
	return l, false, s.waitReady(ctx, l)
}

// waitReady blocks a driver call until the lease is READY (or fails it at once when the
// caller asked not to wait).
func (s *Service) waitReady(ctx context.Context, l *leaseState) error {
	s.mu.Lock()
	phase := l.phase
	s.mu.Unlock()
	if phase != jobs.PhaseReady {
		if md(ctx, MDNoWait) == "1" {
			return status.Errorf(codes.FailedPrecondition, "lease on board %s is %s, not READY", l.board, phase)
		}
		select {
		case <-l.ready:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		s.mu.Lock()
		phase = l.phase
		s.mu.Unlock()
		if phase != jobs.PhaseReady {
			return status.Errorf(codes.FailedPrecondition, "lease on board %s will not be READY: it is %s", l.board, phase)
		}
	}
	return nil
}

// DriverCall runs a driver method once the lease is READY. The driver is named by its
// UUID from GetReport, with upstream's method names and values (upstream.go), or by
// boardvisor's own names ("power", "console").
func (s *Service) DriverCall(ctx context.Context, req *jpb.DriverCallRequest) (*jpb.DriverCallResponse, error) {
	l, _, err := s.authorizeDriver(ctx)
	if err != nil {
		return nil, err
	}
	drv, byUUID, err := s.resolve(l.board, req.GetUuid())
	if err != nil {
		return nil, err
	}
	var v *structpb.Value
	if byUUID {
		v, err = s.upstreamCall(ctx, l, drv, req.GetMethod(), req.GetArgs())
	} else {
		v, err = s.drivers.Call(ctx, l.board, drv, req.GetMethod(), req.GetArgs())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &jpb.DriverCallResponse{Uuid: req.GetUuid(), Result: v}, nil
}

// resolve returns the board's driver id names (see driverOf).
func (s *Service) resolve(board, id string) (drv string, byUUID bool, err error) {
	if s.drivers == nil {
		return "", false, status.Errorf(codes.Unimplemented, "no driver %q on board %s", id, board)
	}
	drv, byUUID, ok := driverOf(board, id, s.inventory(board))
	if !ok {
		return "", false, status.Errorf(codes.NotFound, "no driver %q on board %s (GetReport lists its drivers)", id, board)
	}
	return drv, byUUID, nil
}

// StreamingDriverCall runs a streaming driver method once the lease is READY.
func (s *Service) StreamingDriverCall(req *jpb.StreamingDriverCallRequest, stream grpc.ServerStreamingServer[jpb.StreamingDriverCallResponse]) error {
	ctx := stream.Context()
	l, _, err := s.authorizeDriver(ctx)
	if err != nil {
		return err
	}
	drv, byUUID, err := s.resolve(l.board, req.GetUuid())
	if err != nil {
		return err
	}
	if byUUID {
		return s.upstreamStream(l, drv, req.GetMethod())
	}
	// The stream ends when the lease ends.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.ended:
			cancel()
		case <-ctx.Done():
		}
	}()
	err = s.drivers.Stream(ctx, l.board, drv, req.GetMethod(), req.GetArgs(), func(v *structpb.Value) error {
		return stream.Send(&jpb.StreamingDriverCallResponse{Uuid: req.GetUuid(), Result: v})
	})
	if err != nil {
		return toStatus(err)
	}
	return nil
}

func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func toStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, fmt.Sprint(err))
}
