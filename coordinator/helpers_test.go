package coordinator

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a coordinator served over loopback TCP, with a client connection to it.
type env struct {
	t       *testing.T
	dir     string
	c       *Coordinator
	srv     *grpc.Server
	conn    *grpc.ClientConn
	api     pb.LeaseServiceClient
	logs    *syncBuffer
	cancel  context.CancelFunc
	runDone chan struct{}
	stopped bool
	now     func() time.Time // the coordinator's clock, also used for fake supervisors' event times
}

// newEnv starts a coordinator with its database in dir (a fresh temporary directory when
// empty). Unset options get test-friendly values.
func newEnv(t *testing.T, dir string, opts Options) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	logs := &syncBuffer{}
	opts.StateDir = dir
	testStore(t, dir, &opts)
	if opts.Logger == nil {
		opts.Logger = hclog.New(&hclog.LoggerOptions{Name: "coordinator", Level: hclog.Trace, Output: logs})
	}
	if opts.TickInterval == 0 {
		opts.TickInterval = 20 * time.Millisecond
	}
	if opts.ReconcileInterval == 0 {
		opts.ReconcileInterval = time.Hour
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(c.ServerOptions(), grpc.WaitForHandlers(true))...)
	c.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, dir: dir, c: c, srv: srv, conn: conn, api: pb.NewLeaseServiceClient(conn), logs: logs,
		cancel: cancel, runDone: make(chan struct{}), now: opts.Now}
	if e.now == nil {
		e.now = time.Now
	}
	go func() {
		defer close(e.runDone)
		_ = c.Run(ctx)
	}()
	t.Cleanup(e.stop)
	return e
}

// stop shuts the coordinator down the way a process would: server, timers, database.
func (e *env) stop() {
	if e.stopped {
		return
	}
	e.stopped = true
	_ = e.conn.Close()
	e.srv.Stop()
	e.cancel()
	select {
	case <-e.runDone:
	case <-time.After(waitTimeout):
		e.t.Error("Run did not return")
	}
	if err := e.c.Close(); err != nil {
		e.t.Errorf("Close: %v", err)
	}
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	e.t.Cleanup(cancel)
	return ctx
}

func (e *env) create(selector, board string, d time.Duration, client string) (*pb.Lease, error) {
	r, err := e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: selector, Board: board,
		Duration: durationpb.New(d), ClientName: client})
	return r.GetLease(), err
}

func (e *env) mustCreate(selector, board string, d time.Duration) *pb.Lease {
	e.t.Helper()
	l, err := e.create(selector, board, d, "tester")
	if err != nil {
		e.t.Fatalf("CreateLease(%q, %q): %v", selector, board, err)
	}
	return l
}

func (e *env) get(id string) *pb.Lease {
	e.t.Helper()
	r, err := e.api.GetLease(e.ctx(), &pb.GetLeaseRequest{Id: id})
	if err != nil {
		e.t.Fatalf("GetLease %s: %v", id, err)
	}
	return r.GetLease()
}

func (e *env) boards() map[string]*pb.Board {
	e.t.Helper()
	r, err := e.api.ListBoards(e.ctx(), &pb.ListBoardsRequest{})
	if err != nil {
		e.t.Fatalf("ListBoards: %v", err)
	}
	out := map[string]*pb.Board{}
	for _, b := range r.GetBoards() {
		out[b.GetName()] = b
	}
	return out
}

// eventually polls cond until it holds or waitTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// board describes a board for a fake supervisor's Hello.
func board(name string, labels ...string) *pb.BoardInfo {
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return &pb.BoardInfo{Name: name, Labels: l, Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE,
		Health: pb.BoardHealth_BOARD_HEALTH_GOOD, ClientEndpoint: "127.0.0.1:1/" + name}
}

// fakeSup is a supervisor driven by the test over a raw SupervisorLink stream.
type fakeSup struct {
	t       *testing.T
	id      string
	stream  pb.SupervisorLink_ConnectClient
	cancel  context.CancelFunc
	welcome *pb.Welcome
	msgs    chan *pb.CoordinatorMessage
	extends chan *pb.ExtendJob // ExtendJobs, apart from the StartJobs and StopJobs in msgs
	done    chan struct{}
	now     func() time.Time
	c       *Coordinator

	mu    sync.Mutex
	seq   uint64
	acked uint64
	sent  []*pb.Event
}

type supOpts struct {
	live      []*pb.LiveJob
	lastAcked uint64
	seq       uint64      // last seq already used; the next event gets seq+1
	replay    []*pb.Event // events to send again right after Welcome
	token     string      // the supervisor's token, if any
	instance  string      // Hello.instance_id
}

func (e *env) dial(id string, boards []*pb.BoardInfo, o supOpts) *fakeSup {
	e.t.Helper()
	f, err := e.tryDial(id, boards, o)
	if err != nil {
		e.t.Fatalf("supervisor %s: %v", id, err)
	}
	return f
}

// tryDial connects a fake supervisor and returns the error that refused it, if any.
func (e *env) tryDial(id string, boards []*pb.BoardInfo, o supOpts) (*fakeSup, error) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if o.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.token)
	}
	stream, err := pb.NewSupervisorLinkClient(e.conn).Connect(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	f := &fakeSup{t: e.t, id: id, stream: stream, cancel: cancel, msgs: make(chan *pb.CoordinatorMessage, 4096),
		extends: make(chan *pb.ExtendJob, 4096), done: make(chan struct{}), seq: o.seq, acked: o.lastAcked, now: e.now, c: e.c}
	hello := &pb.Hello{SupervisorId: id, Boards: boards, LiveJobs: o.live, LastAckedSeq: o.lastAcked, Version: "test", InstanceId: o.instance}
	_ = stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: hello}}) // a refusal comes with Recv
	m, err := stream.Recv()
	if err != nil || m.GetWelcome() == nil {
		cancel()
		if err == nil {
			err = fmt.Errorf("want Welcome, got %v", m)
		}
		return nil, err
	}
	f.welcome = m.GetWelcome()
	go f.recv()
	e.t.Cleanup(f.close)
	for _, ev := range o.replay {
		f.sendRaw(ev)
	}
	return f, nil
}

func (f *fakeSup) recv() {
	defer close(f.done)
	for {
		m, err := f.stream.Recv()
		if err != nil {
			return
		}
		if a := m.GetAck(); a != nil {
			f.mu.Lock()
			f.acked = max(f.acked, a.GetUpToSeq())
			f.mu.Unlock()
			continue
		}
		if x := m.GetExtendJob(); x != nil {
			select {
			case f.extends <- x:
			default:
				f.t.Errorf("fake supervisor %s: ExtendJob buffer full", f.id)
				return
			}
			continue
		}
		select {
		case f.msgs <- m:
		default:
			f.t.Errorf("fake supervisor %s: message buffer full", f.id)
			return
		}
	}
}

// close drops the link, as a crashing supervisor would.
func (f *fakeSup) close() {
	f.cancel()
	select {
	case <-f.done:
	case <-time.After(waitTimeout):
		f.t.Errorf("fake supervisor %s: receiver did not stop", f.id)
	}
}

func (f *fakeSup) sendRaw(ev *pb.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
		f.t.Errorf("fake supervisor %s: send event %d: %v", f.id, ev.GetSeq(), err)
	}
}

// event numbers and sends one event.
func (f *fakeSup) event(ev *pb.Event) *pb.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	ev.Seq = f.seq
	if ev.Time == nil {
		ev.Time = timestamppb.New(f.now())
	}
	f.sent = append(f.sent, ev)
	if err := f.stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
		f.t.Errorf("fake supervisor %s: send event %d: %v", f.id, ev.GetSeq(), err)
	}
	return ev
}

func (f *fakeSup) transition(job, board string, from, to pb.LeasePhase, st jpb.ExporterStatus) {
	f.event(&pb.Event{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{
		JobId: job, Board: board, From: from, To: to, ExporterStatus: st, StatusMessage: "now " + phaseName(to)}}})
}

// runLease reports a lease from CREATED to READY.
func (f *fakeSup) toReady(job, board string) {
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_STARTING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_STARTING, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK)
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, pb.LeasePhase_LEASE_PHASE_READY, jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY)
}

// toDone reports a lease from READY to DONE.
func (f *fakeSup) toDone(job, board string) {
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_READY, pb.LeasePhase_LEASE_PHASE_ENDING, jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK)
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_ENDING, pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK)
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, pb.LeasePhase_LEASE_PHASE_RELEASING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	f.transition(job, board, pb.LeasePhase_LEASE_PHASE_RELEASING, pb.LeasePhase_LEASE_PHASE_DONE, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
}

func (f *fakeSup) lastAcked() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acked
}

// waitAcked waits until the coordinator acknowledged (stored) every event sent so far
// and its state loop applied them.
func (f *fakeSup) waitAcked() {
	f.t.Helper()
	f.mu.Lock()
	want := f.seq
	f.mu.Unlock()
	eventually(f.t, "acks", func() bool { return f.lastAcked() >= want })
	eventually(f.t, "events applied", func() bool { return f.c.appliedSeq(f.t, f.id) >= want })
}

// next returns the next StartJob or StopJob.
func (f *fakeSup) next() *pb.CoordinatorMessage {
	f.t.Helper()
	select {
	case m := <-f.msgs:
		return m
	case <-time.After(waitTimeout):
		f.t.Fatalf("fake supervisor %s: no message from the coordinator", f.id)
		return nil
	}
}

func (f *fakeSup) expectStart() *pb.StartJob {
	f.t.Helper()
	m := f.next()
	if m.GetStartJob() == nil {
		f.t.Fatalf("fake supervisor %s: want StartJob, got %v", f.id, m)
	}
	return m.GetStartJob()
}

func (f *fakeSup) expectStop() *pb.StopJob {
	f.t.Helper()
	m := f.next()
	if m.GetStopJob() == nil {
		f.t.Fatalf("fake supervisor %s: want StopJob, got %v", f.id, m)
	}
	return m.GetStopJob()
}

// expectExtend returns the next ExtendJob.
func (f *fakeSup) expectExtend() *pb.ExtendJob {
	f.t.Helper()
	select {
	case x := <-f.extends:
		return x
	case <-time.After(waitTimeout):
		f.t.Fatalf("fake supervisor %s: no ExtendJob from the coordinator", f.id)
		return nil
	}
}

// expectNothing checks that no request arrives for d.
func (f *fakeSup) expectNothing(d time.Duration) {
	f.t.Helper()
	select {
	case m := <-f.msgs:
		f.t.Fatalf("fake supervisor %s: want no request, got %v", f.id, m)
	case <-time.After(d):
	}
}
