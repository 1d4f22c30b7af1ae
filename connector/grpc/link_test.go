package grpc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

const wait = 20 * time.Second

// coordinator is a Handler that stores events like a real coordinator would: by
// supervisor, refusing anything out of order.
type coordinator struct {
	t        *testing.T
	mu       sync.Mutex
	events   map[string][]*pb.Event
	hellos   []*pb.Hello
	sessions map[string]*Session
	changed  chan struct{}
}

func newCoordinator(t *testing.T) *coordinator {
	return &coordinator{t: t, events: map[string][]*pb.Event{}, sessions: map[string]*Session{}, changed: make(chan struct{})}
}

func (c *coordinator) notify() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *coordinator) Connected(_ context.Context, s *Session, h *pb.Hello) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hellos = append(c.hellos, h)
	c.sessions[s.ID] = s
	c.notify()
	return uint64(len(c.events[s.ID])), nil
}

func (c *coordinator) Events(_ context.Context, s *Session, evs []*pb.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range evs {
		if want := uint64(len(c.events[s.ID]) + 1); ev.GetSeq() != want {
			c.t.Errorf("handler got seq %d, want %d: the link let a duplicate or a gap through", ev.GetSeq(), want)
		}
		c.events[s.ID] = append(c.events[s.ID], ev)
	}
	c.notify()
	return nil
}

func (c *coordinator) Disconnected(s *Session, _ error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.sessions, s.ID)
	c.notify()
}

func (c *coordinator) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(wait)
	for {
		c.mu.Lock()
		ok, ch := cond(), c.changed
		c.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// serve runs a link server on addr ("127.0.0.1:0" for a new port) until stop is called.
func serve(t *testing.T, addr string, srv *Server) (string, func()) {
	t.Helper()
	var lis net.Listener
	var err error
	deadline := time.Now().Add(wait)
	for {
		// Rebinding the port of a server just stopped can take a moment.
		if lis, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := ggrpc.NewServer()
	srv.Register(g)
	done := make(chan struct{})
	go func() { g.Serve(lis); close(done) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			g.Stop()
			<-done
		})
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

type bufLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *bufLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *bufLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func logger(w *bufLog) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Debug})
}

// fakeSupervisor records the requests the coordinator sends.
type fakeSupervisor struct {
	mu    sync.Mutex
	calls []string
	ch    chan struct{}
}

func (f *fakeSupervisor) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
	select {
	case f.ch <- struct{}{}:
	default:
	}
}

func (f *fakeSupervisor) StartJob(_ context.Context, r connector.StartJobRequest) error {
	f.record(fmt.Sprintf("start %s %s %s %s %s", r.JobID, r.Board, r.Client, r.Token, r.Duration))
	return nil
}

func (f *fakeSupervisor) StopJob(_ context.Context, r connector.StopJobRequest) error {
	f.record("stop " + r.JobID)
	return nil
}

func (f *fakeSupervisor) ExtendJob(_ context.Context, r connector.ExtendJobRequest) error {
	f.record(fmt.Sprintf("extend %s %s", r.JobID, r.Remaining))
	return nil
}

// ClearQuarantine makes fakeSupervisor a connector.QuarantineClearer.
func (f *fakeSupervisor) ClearQuarantine(_ context.Context, r connector.ClearQuarantineRequest) error {
	f.record(fmt.Sprintf("clear %s by %s (%s)", r.Board, r.By, r.Reason))
	return nil
}

type supervisorSide struct {
	client *Client
	queue  *Queue
	seq    uint64
	cancel context.CancelFunc
	done   chan error
	sup    *fakeSupervisor
}

func newSupervisorSide(t *testing.T, addr, token string, qopts QueueOptions, log hclog.Logger) *supervisorSide {
	t.Helper()
	q, err := OpenQueue(filepath.Join(t.TempDir(), "outbox.db"), qopts)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(ClientOptions{Address: addr, Token: token, SupervisorID: "lab-1", Queue: q, Logger: log,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Boards: []BoardInfo{{Name: "rpi4-01", Labels: map[string]string{"device": "rpi4"}}}})
	s := &supervisorSide{client: c, queue: q, sup: &fakeSupervisor{ch: make(chan struct{}, 1)}, done: make(chan error, 1)}
	t.Cleanup(func() { s.stop(); q.Close() })
	return s
}

func (s *supervisorSide) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.done <- s.client.Run(ctx, s.sup) }()
}

func (s *supervisorSide) stop() {
	if s.cancel != nil {
		s.cancel()
		<-s.done
		s.cancel = nil
	}
}

// emit numbers an event as the outbox actor would and hands it to the client.
func (s *supervisorSide) emit(ev connector.Event) {
	s.seq++
	ev.Seq, ev.Time = s.seq, time.Now()
	connector.Deliver(s.client, ev)
}

func hookLine(job string, i int) connector.Event {
	return connector.Event{Board: "rpi4-01", JobID: job, Hook: &connector.HookLine{Source: jobs.SourceBeforeLeaseHook, Text: fmt.Sprintf("line %d", i)}}
}

func TestEventsDeliveredInOrderAndAcked(t *testing.T) {
	coord := newCoordinator(t)
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: coord})
	s := newSupervisorSide(t, addr, "", QueueOptions{NoSync: true}, hclog.NewNullLogger())
	for i := 0; i < 50; i++ { // before the link is up: they wait on disk
		s.emit(hookLine("job-1", i))
	}
	s.start()
	for i := 50; i < 100; i++ {
		s.emit(hookLine("job-1", i))
	}
	coord.waitFor(t, "100 events", func() bool { return len(coord.events["lab-1"]) == 100 })
	for i, ev := range coord.events["lab-1"] {
		if got, want := ev.GetHookLog().GetText(), fmt.Sprintf("line %d", i); got != want {
			t.Fatalf("event %d is %q, want %q", i, got, want)
		}
	}
	deadline := time.Now().Add(wait)
	for stored, _, acked := s.queue.Stats(); (acked != 100 || stored != 0) && time.Now().Before(deadline); stored, _, acked = s.queue.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	if stored, last, acked := s.queue.Stats(); acked != 100 || last != 100 || stored != 0 {
		t.Fatalf("queue after acks: stored %d bytes, last %d, acked %d; want 0, 100, 100", stored, last, acked)
	}
}

func TestCoordinatorRestartLosesAndRepeatsNothing(t *testing.T) {
	coord := newCoordinator(t)
	addr, stop := serve(t, "127.0.0.1:0", &Server{Handler: coord})
	s := newSupervisorSide(t, addr, "", QueueOptions{NoSync: true}, hclog.NewNullLogger())
	s.start()
	for i := 0; i < 30; i++ {
		s.emit(hookLine("job-1", i))
	}
	coord.waitFor(t, "30 events", func() bool { return len(coord.events["lab-1"]) == 30 })
	stop() // the coordinator goes away; its store (coord.events) survives, as a DB would
	for i := 30; i < 80; i++ {
		s.emit(hookLine("job-1", i))
	}
	serve(t, addr, &Server{Handler: coord})
	coord.waitFor(t, "80 events", func() bool { return len(coord.events["lab-1"]) == 80 })
	for i, ev := range coord.events["lab-1"] {
		if ev.GetSeq() != uint64(i+1) || ev.GetHookLog().GetText() != fmt.Sprintf("line %d", i) {
			t.Fatalf("event %d: seq %d %q", i, ev.GetSeq(), ev.GetHookLog().GetText())
		}
	}
	if n := len(coord.hellos); n < 2 {
		t.Fatalf("%d hellos, want a second one after the restart", n)
	}
}

// rawStream opens a link stream to addr by hand, as supervisor "raw", and reads the
// Welcome to its Hello. It ends with the test.
func rawStream(t *testing.T, addr string) pb.SupervisorLink_ConnectClient {
	t.Helper()
	conn, err := ggrpc.NewClient(addr, ggrpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	stream, err := pb.NewSupervisorLinkClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: &pb.Hello{SupervisorId: "raw"}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("no Welcome: %v %v", m, err)
	}
	return stream
}

func TestServerDropsDuplicatesAndRefusesGaps(t *testing.T) {
	coord := newCoordinator(t)
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: coord})
	stream := rawStream(t, addr)
	send := func(m *pb.SupervisorMessage) {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, seq := range []uint64{1, 2, 2, 3, 1, 4} {
		send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: &pb.Event{Seq: seq}}})
	}
	coord.waitFor(t, "4 events", func() bool { return len(coord.events["raw"]) == 4 })
	send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: &pb.Event{Seq: 9}}})
	for {
		m, err := stream.Recv()
		if err != nil {
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "expected 5, got 9") {
				t.Fatalf("after a gap: %v, want InvalidArgument naming the gap", err)
			}
			break
		}
		if a := m.GetAck(); a != nil && a.GetUpToSeq() > 4 {
			t.Fatalf("acked %d", a.GetUpToSeq())
		}
	}
	if n := len(coord.events["raw"]); n != 4 {
		t.Fatalf("handler got %d events, want 4 (duplicates dropped)", n)
	}
}

func TestRequestsReachTheSupervisor(t *testing.T) {
	coord := newCoordinator(t)
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: coord})
	s := newSupervisorSide(t, addr, "", QueueOptions{NoSync: true}, hclog.NewNullLogger())
	s.start()
	coord.waitFor(t, "the supervisor", func() bool { return coord.sessions["lab-1"] != nil })
	coord.mu.Lock()
	sess := coord.sessions["lab-1"]
	coord.mu.Unlock()
	if err := sess.StartJob(&pb.StartJob{JobId: "j1", Board: "rpi4-01", ClientName: "alice", Token: "tok", Duration: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if err := sess.ExtendJob(&pb.ExtendJob{JobId: "j1", Remaining: durationpb.New(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := sess.StopJob(&pb.StopJob{JobId: "j1"}); err != nil {
		t.Fatal(err)
	}
	if err := sess.ClearQuarantine(&pb.ClearQuarantine{Board: "rpi4-01", By: "root", Reason: "fixed"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(wait)
	for {
		s.sup.mu.Lock()
		calls := strings.Join(s.sup.calls, "|")
		s.sup.mu.Unlock()
		if calls == "start j1 rpi4-01 alice tok 1m0s|extend j1 1h0m0s|stop j1|clear rpi4-01 by root (fixed)" {
			break
		}
		select {
		case <-s.sup.ch:
		case <-deadline:
			t.Fatalf("supervisor saw %q", calls)
		}
	}
}

func TestWrongTokenRefusedClearlyOnBothSides(t *testing.T) {
	coord := newCoordinator(t)
	var slog, clog bufLog
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: coord, Auth: StaticTokens(map[string]string{"good-token": "lab-1"}), Logger: logger(&slog)})
	s := newSupervisorSide(t, addr, "bad-token", QueueOptions{NoSync: true}, logger(&clog))
	s.start()
	deadline := time.Now().Add(wait)
	for !strings.Contains(clog.String(), "supervisor token not accepted by the coordinator") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s.stop()
	if !strings.Contains(clog.String(), "Unauthenticated: supervisor token not accepted by the coordinator") {
		t.Fatalf("supervisor log does not say why:\n%s", clog.String())
	}
	if !strings.Contains(slog.String(), "supervisor refused: bad token") {
		t.Fatalf("coordinator log does not say why:\n%s", slog.String())
	}
	if strings.Contains(slog.String()+clog.String(), "bad-token") {
		t.Fatal("a token appears in a log")
	}
	if len(coord.hellos) != 0 {
		t.Fatal("an unauthenticated supervisor reached the handler")
	}
	// The right token for another supervisor's ID is refused too.
	s2 := newSupervisorSide(t, addr, "good-token", QueueOptions{NoSync: true}, hclog.NewNullLogger())
	s2.client.opts.SupervisorID = "lab-2"
	s2.start()
	for !strings.Contains(slog.String(), "token belongs to another supervisor") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(slog.String(), "token belongs to another supervisor") {
		t.Fatalf("coordinator log:\n%s", slog.String())
	}
}

func TestDiskBoundDropsConsoleFirstAndSaysSo(t *testing.T) {
	coord := newCoordinator(t)
	s := newSupervisorSide(t, "127.0.0.1:1", "", QueueOptions{NoSync: true, MaxBytes: 64 << 10}, hclog.NewNullLogger())
	// The link is down: console floods the outbox past its bound.
	chunk := bytes.Repeat([]byte("x"), 1000)
	for i := 0; i < 400; i++ {
		s.emit(connector.Event{Board: "rpi4-01", JobID: "job-1", Console: &connector.Console{Source: jobs.SourceDriver, Data: chunk}})
		if i == 20 {
			s.emit(connector.Event{Board: "rpi4-01", JobID: "job-1", Transition: &connector.Transition{From: jobs.PhaseReady, To: jobs.PhaseEnding}})
		}
	}
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: coord})
	s.client.opts.Address = addr
	s.start()
	coord.waitFor(t, "401 events", func() bool { return len(coord.events["lab-1"]) == 401 })
	var consoleBytes, gapBytes uint64
	var transitions int
	for _, ev := range coord.events["lab-1"] {
		consoleBytes += uint64(len(ev.GetConsoleLog().GetData()))
		gapBytes += ev.GetConsoleGap().GetBytes()
		if ev.GetStateTransition() != nil {
			transitions++
		}
	}
	if transitions != 1 {
		t.Fatalf("%d transitions delivered, want the one (never dropped)", transitions)
	}
	if gapBytes == 0 || consoleBytes+gapBytes != 400*1000 {
		t.Fatalf("console %d + gaps %d bytes, want some dropped and all 400000 accounted for", consoleBytes, gapBytes)
	}
}

func TestQueueSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	q, err := OpenQueue(path, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 5; i++ {
		<-q.Append(&pb.Event{Seq: i})
	}
	if err := q.Ack(2); err != nil {
		t.Fatal(err)
	}
	q.Close()
	q, err = OpenQueue(path, QueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if q.LastSeq() != 5 || q.Acked() != 2 {
		t.Fatalf("after reopen: last %d acked %d, want 5 and 2", q.LastSeq(), q.Acked())
	}
	evs, _, err := q.After(q.Acked(), 100)
	if err != nil || len(evs) != 3 || evs[0].GetSeq() != 3 {
		t.Fatalf("un-acked events after reopen: %v %v", evs, err)
	}
	if _, err := OpenQueue(path, QueueOptions{}); err == nil || !strings.Contains(err.Error(), "locked by another boardvisor process") {
		t.Fatalf("second open while open: %v", err)
	}
}

func TestHelloReportsLiveAndUnackedEndedJobs(t *testing.T) {
	s := newSupervisorSide(t, "127.0.0.1:1", "", QueueOptions{NoSync: true}, hclog.NewNullLogger())
	s.emit(connector.Event{Board: "rpi4-01", JobID: "live", Transition: &connector.Transition{From: jobs.PhaseBeforeLease, To: jobs.PhaseReady}})
	s.emit(connector.Event{Board: "rpi4-01", JobID: "over", Transition: &connector.Transition{From: jobs.PhaseReleasing, To: jobs.PhaseDone}})
	s.emit(connector.Event{Board: "rpi4-01", BoardStatus: &connector.BoardStatus{Status: jobs.StatusLeaseReady, Health: jobs.HealthGood}})
	h := s.client.hello()
	got := map[string]string{}
	for _, j := range h.GetLiveJobs() {
		got[j.GetJobId()] = fmt.Sprintf("%s ended=%v", j.GetPhase(), j.GetEnded())
	}
	if got["live"] != "LEASE_PHASE_READY ended=false" || got["over"] != "LEASE_PHASE_DONE ended=true" {
		t.Fatalf("live jobs %v", got)
	}
	if b := h.GetBoards()[0]; b.GetStatus().String() != "EXPORTER_STATUS_LEASE_READY" || b.GetLabels()["device"] != "rpi4" {
		t.Fatalf("board %v", b)
	}
	// Once the coordinator acknowledges the end, the ended job is forgotten.
	<-s.queue.Append(&pb.Event{Seq: 100})
	if err := s.client.ack(2); err != nil {
		t.Fatal(err)
	}
	for _, j := range s.client.hello().GetLiveJobs() {
		if j.GetJobId() == "over" {
			t.Fatal("acknowledged ended job still reported")
		}
	}
}

// pipeliner is a Handler that stores nothing until the test releases each batch.
type pipeliner struct {
	*coordinator
	submitted chan uint64           // the top seq of each batch, as submitted
	release   map[uint64]chan error // by top seq; the test sends the batch's outcome
	mu        sync.Mutex
}

func (p *pipeliner) gate(top uint64) chan error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.release[top] == nil {
		p.release[top] = make(chan error, 1)
	}
	return p.release[top]
}

func (p *pipeliner) SubmitEvents(ctx context.Context, s *Session, evs []*pb.Event) func() error {
	top := evs[len(evs)-1].GetSeq()
	g := p.gate(top)
	p.submitted <- top
	return func() error {
		select {
		case err := <-g:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// With an EventPipeliner, a session has up to MaxInFlight batches being stored at once;
// each is acknowledged only once it and every batch before it is durable, and the first
// that fails ends the stream with nothing after it acknowledged.
func TestPipelinedBatchesAckedInOrderOnceDurable(t *testing.T) {
	p := &pipeliner{coordinator: newCoordinator(t), submitted: make(chan uint64, 16), release: map[uint64]chan error{}}
	addr, _ := serve(t, "127.0.0.1:0", &Server{Handler: p, MaxBatch: 1, MaxInFlight: 3})
	stream := rawStream(t, addr)
	acks := make(chan uint64, 16)
	ended := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				ended <- err
				return
			}
			if a := m.GetAck(); a != nil {
				acks <- a.GetUpToSeq()
			}
		}
	}()
	for seq := uint64(1); seq <= 6; seq++ {
		if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: &pb.Event{Seq: seq}}}); err != nil {
			t.Fatal(err)
		}
	}
	// Batches 1..3 are submitted before any is durable; the 4th waits for room.
	for want := uint64(1); want <= 3; want++ {
		if got := <-p.submitted; got != want {
			t.Fatalf("submitted batch %d, want %d", got, want)
		}
	}
	select {
	case got := <-p.submitted:
		t.Fatalf("batch %d submitted with 3 in flight (MaxInFlight 3)", got)
	case a := <-acks:
		t.Fatalf("ack %d before anything was durable", a)
	case <-time.After(200 * time.Millisecond): // nothing to await: checking that nothing happens
	}
	// 2 durable first: still no ack, as 1 is not.
	p.gate(2) <- nil
	select {
	case a := <-acks:
		t.Fatalf("ack %d while batch 1 is not durable", a)
	case <-time.After(200 * time.Millisecond):
	}
	p.gate(1) <- nil
	if got := <-p.submitted; got != 4 {
		t.Fatalf("submitted %d after room was made, want 4", got)
	}
	var top uint64
	for top < 2 {
		select {
		case top = <-acks:
		case <-time.After(wait):
			t.Fatal("no ack once batches 1 and 2 were durable")
		}
	}
	if top != 2 {
		t.Fatalf("acked up to %d, want 2", top)
	}
	// 3 fails: the stream ends, and 4 (durable or not) is never acknowledged.
	p.gate(4) <- nil
	p.gate(3) <- errors.New("disk on fire")
	select {
	case err := <-ended:
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("stream ended with %v, want Internal naming the store's error", err)
		}
	case <-time.After(wait):
		t.Fatal("the stream did not end after batch 3 failed")
	}
	close(acks)
	for a := range acks {
		if a > 2 {
			t.Fatalf("acked %d past the failed batch 3", a)
		}
	}
}
