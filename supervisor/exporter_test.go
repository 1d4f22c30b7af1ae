package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/client"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// clientHarness runs a supervisor with its client service on a loopback port.
type clientHarness struct {
	*harness
	client jpb.ExporterServiceClient
	conn   *grpc.ClientConn
}

func startClientService(t *testing.T, boards ...board.Config) *clientHarness {
	t.Helper()
	labels := map[string]map[string]string{}
	for _, b := range boards {
		labels[b.Name] = b.Labels
	}
	var h *harness
	svc := exporter.New(labels, exporter.EnderFunc(func(ctx context.Context, board, job string) error {
		return h.sup.EndSession(ctx, board, job)
	}), nil)
	h = startWith(t, svc, boards...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := NewGRPCServer()
	svc.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &clientHarness{harness: h, client: jpb.NewExporterServiceClient(conn), conn: conn}
}

func callCtx(t *testing.T, board, token string, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	pairs := append([]string{exporter.MDBoard, board}, kv...)
	if token != "" {
		pairs = append(pairs, "authorization", "Bearer "+token)
	}
	return metadata.AppendToOutgoingContext(ctx, pairs...)
}

func withToken(tok string) func(*connector.StartJobRequest) {
	return func(r *connector.StartJobRequest) { r.Token = tok }
}

func TestWatchStatusPushesEveryChange(t *testing.T) {
	h := startClientService(t, board.Config{Name: "rpi",
		Before: hookCfg("echo 'JMP_INFO: on'", jobs.PolicyEndLease, wait), After: hookCfg("true", jobs.PolicyEndLease, wait)})
	h.waitFor("the board's first status", func(evs []connector.Event) bool { return len(evs) > 0 })
	stream, err := h.client.WatchStatus(callCtx(t, "rpi", ""), &jpb.WatchStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE {
		t.Fatalf("first status %v %v, want AVAILABLE", first, err)
	}
	job := h.startJob("rpi", withToken("tok-1"))
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	want := []jpb.ExporterStatus{jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK, jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY,
		jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE}
	prev, version := first.GetStatus(), first.GetStatusVersion()
	for i, w := range want {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.GetStatus() != w || r.GetPreviousStatus() != prev || r.GetStatusVersion() != version+1 {
			t.Fatalf("push %d: %v (prev %v, version %d), want %v (prev %v, version %d)", i, r.GetStatus(), r.GetPreviousStatus(), r.GetStatusVersion(), w, prev, version+1)
		}
		prev, version = r.GetStatus(), r.GetStatusVersion()
	}
	st, err := h.client.GetStatus(callCtx(t, "rpi", ""), &jpb.GetStatusRequest{})
	if err != nil || st.GetStatusVersion() != version || st.GetPreviousStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK {
		t.Fatalf("GetStatus %v %v", st, err)
	}
}

// readLog reads a LogStream to its end into lines "SOURCE SEVERITY text".
func readLog(stream grpc.ServerStreamingClient[jpb.LogStreamResponse], got chan<- string) error {
	defer close(got)
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if r.GetStructuredFields()[exporter.FieldPhase] != "" {
			continue // phase markers are checked by the shell's tests
		}
		got <- fmt.Sprintf("%s %s %s", r.GetSource().String()[len("LOG_SOURCE_"):], r.GetSeverity(), r.GetMessage())
	}
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case l, ok := <-ch:
		if !ok {
			t.Fatal("log stream ended early")
		}
		return l
	case <-time.After(wait):
		t.Fatal("no log line")
	}
	return ""
}

func TestLogStreamLiveAndLateJoinersSeeEveryLineOnce(t *testing.T) {
	g := newGate(t, "log")
	h := startClientService(t, board.Config{Name: "rpi",
		Before: hookCfg(fmt.Sprintf("echo 'JMP_INFO: Powering on device...'; echo 'JMP_WARN: slow'; read x < %s; echo 'JMP_INFO: booted'", g), jobs.PolicyEndLease, wait),
		After:  hookCfg("echo 'Saving logs to archive...'", jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("tok-a"))
	early, err := h.client.LogStream(callCtx(t, "rpi", "tok-a"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	a := make(chan string, 100)
	go readLog(early, a)
	// The hook is blocked on the gate: these lines reach the reader while it runs.
	if l := next(t, a); l != "BEFORE_LEASE_HOOK INFO Powering on device..." {
		t.Fatalf("first line %q", l)
	}
	if l := next(t, a); l != "BEFORE_LEASE_HOOK WARNING slow" {
		t.Fatalf("second line %q", l)
	}
	late, err := h.client.LogStream(callCtx(t, "rpi", "tok-a"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	b := make(chan string, 100)
	go readLog(late, b)
	if l := next(t, b); l != "BEFORE_LEASE_HOOK INFO Powering on device..." {
		t.Fatalf("late joiner's first line %q", l)
	}
	next(t, b)
	g.open(t)
	h.waitPhase(job, jobs.PhaseReady)
	if _, err := h.client.EndSession(callCtx(t, "rpi", "tok-a"), &jpb.EndSessionRequest{}); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	rest := []string{"BEFORE_LEASE_HOOK INFO booted", "AFTER_LEASE_HOOK INFO Saving logs to archive..."}
	for name, ch := range map[string]chan string{"early": a, "late": b} {
		var got []string
		for l := range ch {
			got = append(got, l)
		}
		if strings.Join(got, "|") != strings.Join(rest, "|") {
			t.Errorf("%s reader after the gate: %q, want %q (and the stream closed at the lease's end)", name, got, rest)
		}
	}
}

func TestDriverCallWaitsForReady(t *testing.T) {
	g := newGate(t, "ready")
	h := startClientService(t, board.Config{Name: "rpi",
		Before: hookCfg(fmt.Sprintf("echo 'JMP_INFO: wait'; read x < %s", g), jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("tok"))
	h.waitFor("the hook", func(evs []connector.Event) bool { return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) > 0 })
	_, err := h.client.DriverCall(callCtx(t, "rpi", "tok", exporter.MDNoWait, "1"), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "BEFORE_LEASE") {
		t.Fatalf("no-wait call during beforeLease: %v, want FAILED_PRECONDITION naming the phase", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := h.client.DriverCall(callCtx(t, "rpi", "tok"), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("driver call returned before READY: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	g.open(t)
	err = <-done
	if !reached(h.harness.conn.Events(), job, jobs.PhaseReady) {
		t.Fatal("driver call returned before READY was reported")
	}
	// No drivers are wired into this test: once READY the call goes through to "none".
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("driver call after READY: %v", err)
	}
}

func TestOnlyTheLeaseHolderGetsIn(t *testing.T) {
	h := startClientService(t, board.Config{Name: "a", Before: hookCfg("echo hi", jobs.PolicyEndLease, wait)}, board.Config{Name: "b"})
	jobA := h.startJob("a", withToken("token-a"))
	h.startJob("b", withToken("token-b"))
	h.waitPhase(jobA, jobs.PhaseReady)
	cases := []struct {
		board, token string
		code         codes.Code
	}{
		{"a", "", codes.Unauthenticated},
		{"a", "token-b", codes.PermissionDenied}, // another lease's token
		{"a", "forged", codes.PermissionDenied},
		{"nope", "token-a", codes.NotFound},
	}
	for _, c := range cases {
		_, err := h.client.DriverCall(callCtx(t, c.board, c.token), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
		if status.Code(err) != c.code {
			t.Errorf("board %q token %q: %v, want %s", c.board, c.token, err, c.code)
		}
		if err != nil && c.token != "" && strings.Contains(err.Error(), c.token) {
			t.Errorf("error message contains the token: %v", err)
		}
	}
	stream, err := h.client.LogStream(callCtx(t, "a", "token-a"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil { // the stream is open: it has a first line
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	if err := h.stopJob(jobA); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(jobA, jobs.PhaseDone)
	select {
	case err := <-ended:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("open stream ended with %v, want a clean end", err)
		}
	case <-time.After(wait):
		t.Fatal("open log stream not closed when the lease ended")
	}
	// The ended lease's token drives nothing; ending it again is a harmless no-op.
	_, err = h.client.DriverCall(callCtx(t, "a", "token-a"), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("expired token: %v, want PERMISSION_DENIED", err)
	}
	if r, err := h.client.EndSession(callCtx(t, "a", "token-a"), &jpb.EndSessionRequest{}); err != nil || r.GetMessage() != "the lease has already ended" {
		t.Fatalf("EndSession of an ended lease: %v %v", r, err)
	}
	hc := healthpb.NewHealthClient(h.conn)
	r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "jumpstarter.v1.ExporterService"})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", r, err)
	}
}

// dialogue runs the client side against the harness's client service for a lease the
// test started itself (the coordinator's part is tested with the coordinator).
func (h *clientHarness) session(t *testing.T, job, boardName, token string, out io.Writer) (*client.Client, *pb.Lease) {
	c := &client.Client{Out: out, Dial: func(string) (*grpc.ClientConn, error) {
		return grpc.NewClient(h.conn.Target(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	}}
	return c, &pb.Lease{Id: job, Board: boardName, Token: token, ExporterEndpoint: h.conn.Target()}
}

func TestDialogue(t *testing.T) {
	h := startClientService(t, board.Config{Name: "rpi",
		Before: hookCfg("echo 'JMP_INFO: Powering on device...'; sleep 0.1; echo 'JMP_WARN: slow boot'", jobs.PolicyEndLease, wait),
		After:  hookCfg("echo 'Saving logs to archive...'", jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("t1"))
	var out strings.Builder
	c, lease := h.session(t, job, "rpi", "t1", &out)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	s, err := c.Connect(ctx, lease)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, out.String())
	}
	if err := s.Release(ctx); err != nil {
		t.Fatal(err)
	}
	want := `Connecting to exporter...
Waiting for beforeLease hooks to complete...
[Hook INFO] Powering on device...
[Hook WARN] slow boot
beforeLease hooks completed successfully!
Connected to device.
Releasing lease...
afterLease hooks running (press Ctrl+C to disconnect):
[Hook Output] Saving logs to archive...
afterLease hooks completed.
`
	if out.String() != want {
		t.Fatalf("dialogue:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestDialogueBeforeLeaseFailure(t *testing.T) {
	h := startClientService(t, board.Config{Name: "rpi",
		Before: hookCfg("echo 'JMP_INFO: flashing'; echo 'JMP_ERROR: checksum mismatch'; exit 4", jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("t1"))
	var out strings.Builder
	c, lease := h.session(t, job, "rpi", "t1", &out)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := c.Connect(ctx, lease); !errors.Is(err, client.ErrHookFailed) {
		t.Fatalf("connect: %v, want ErrHookFailed\n%s", err, out.String())
	}
	for _, want := range []string{"[Hook INFO] flashing", "[Hook ERROR] checksum mismatch", "beforeLease hook failed: exit status 4 (onFailure: endLease)"} {
		if strings.Count(out.String(), want) != 1 {
			t.Errorf("output does not have %q once:\n%s", want, out.String())
		}
	}
}

func TestDialogueCtrlCDuringAfterLease(t *testing.T) {
	g := newGate(t, "after")
	rec, lines := record(t)
	h := startClientService(t, board.Config{Name: "rpi",
		After: hookCfg(fmt.Sprintf("echo 'JMP_INFO: archiving'; read x < %s; echo done >> %s", g, rec), jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("t1"))
	out := &syncBuf{}
	c, lease := h.session(t, job, "rpi", "t1", out)
	s, err := c.Connect(context.Background(), lease)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Release(ctx) }()
	deadline := time.Now().Add(wait)
	for !strings.Contains(out.String(), "[Hook Output] archiving") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel() // Ctrl+C
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "Disconnected; the afterLease hook goes on.\n") {
		t.Fatalf("output:\n%s", out.String())
	}
	g.open(t) // the hook was still running; it completes and the board comes back
	h.waitPhase(job, jobs.PhaseDone)
	if strings.Join(lines(), " ") != "done" {
		t.Fatal("afterLease hook did not complete after the client left")
	}
	st, err := h.sup.Board("rpi")
	if err != nil || st.Status != jobs.StatusAvailable {
		t.Fatalf("board after the lease: %+v %v", st, err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
