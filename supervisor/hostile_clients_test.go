package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/audit"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Clients that misbehave (issue 10, part 3, the client side): oversized messages,
// many streams, readers that read nothing, and tokens that must not leak.

// auditedService is a supervisor with its client service, an audit log wired into
// both (events and refusals), and every log line kept.
type auditedService struct {
	*harness
	svc       *exporter.Service
	addr      string
	logs      *syncBuf
	auditPath string
}

func startAudited(t *testing.T, limits exporter.Limits, boards ...board.Config) *auditedService {
	t.Helper()
	dir := t.TempDir()
	logs := &syncBuf{}
	logger := hclog.New(&hclog.LoggerOptions{Output: io.MultiWriter(logs, logWriter{t}), Level: hclog.Trace, Name: "boardvisor"})
	auditPath := filepath.Join(dir, "audit.jsonl")
	al, err := audit.Open(auditPath, audit.Who("test-supervisor"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	labels := map[string]map[string]string{}
	for i, b := range boards {
		labels[b.Name] = b.Labels
		if b.LeaseDuration == 0 {
			boards[i].LeaseDuration = time.Minute
		}
	}
	var sup *Supervisor
	svc := exporter.New(labels, exporter.EnderFunc(func(ctx context.Context, board, job string) error {
		return sup.EndSession(ctx, board, job)
	}), nil)
	svc.Audit, svc.Limits = al, limits
	conn := local.New()
	// The audit log records every transition: an outbox sink, as the daemon would wire it.
	sup, err = Start(Options{Boards: boards, StateDir: dir, Conn: conn, ShimCommand: hooktest.ShimCommand(),
		Logger: logger, Exporter: svc, Sinks: []outbox.Sink{al.Sink}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := NewGRPCServer()
	svc.Register(g)
	go g.Serve(lis)
	t.Cleanup(func() {
		g.Stop()
		cancel()
		select {
		case <-done:
		case <-time.After(wait):
			t.Error("supervisor did not stop")
		}
	})
	return &auditedService{harness: &harness{t: t, sup: sup, conn: conn, dir: dir}, svc: svc, addr: lis.Addr().String(), logs: logs, auditPath: auditPath}
}

// dial opens a new client connection.
func (a *auditedService) dial(t *testing.T, opts ...grpc.DialOption) jpb.ExporterServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(a.addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return jpb.NewExporterServiceClient(conn)
}

// A DriverCall with a 10 MB argument is refused by the server's message limit before
// any handler runs; the connection and the service stay usable.
func TestHostileClientOversizedMessage(t *testing.T) {
	t.Parallel()
	h := startClientService(t, board.Config{Name: "rpi"})
	job := h.startJob("rpi", withToken("tok"))
	h.waitPhase(job, jobs.PhaseReady)
	big := structpb.NewStringValue(strings.Repeat("x", 10<<20))
	_, err := h.client.DriverCall(callCtx(t, "rpi", "tok"), &jpb.DriverCallRequest{Uuid: "power", Method: "on", Args: []*structpb.Value{big}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("10 MB DriverCall: %v, want RESOURCE_EXHAUSTED", err)
	}
	// Just under the limit goes through to the (absent) driver.
	ok := structpb.NewStringValue(strings.Repeat("x", MaxRecvMsgSize-1024))
	_, err = h.client.DriverCall(callCtx(t, "rpi", "tok"), &jpb.DriverCallRequest{Uuid: "power", Method: "on", Args: []*structpb.Value{ok}})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("DriverCall under the limit: %v, want UNIMPLEMENTED (no driver)", err)
	}
	if st, err := h.client.GetStatus(callCtx(t, "rpi", ""), &jpb.GetStatusRequest{}); err != nil || st.GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY {
		t.Fatalf("GetStatus after the refusal: %v %v", st, err)
	}
}

// One connection opening streams without end: gRPC holds it to MaxConcurrentStreams
// (the next stream waits for a free slot, here until its deadline), and other clients
// are served meanwhile. Across connections the service bounds status streams itself.
func TestHostileClientManyStreams(t *testing.T) {
	t.Parallel()
	a := startAudited(t, exporter.Limits{MaxWatchStreams: MaxConcurrentStreams + 10, MaxLogStreamsPerLease: 4}, board.Config{Name: "rpi"})
	a.waitFor("the board's first status", func(evs []connector.Event) bool { return len(evs) > 0 })
	hostile := a.dial(t)
	ctx, cancelStreams := context.WithCancel(callCtx(t, "rpi", ""))
	defer cancelStreams()
	for i := 0; i < MaxConcurrentStreams; i++ {
		s, err := hostile.WatchStatus(ctx, &jpb.WatchStatusRequest{})
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if i == MaxConcurrentStreams-1 {
			if _, err := s.Recv(); err != nil { // every stream is open on the server
				t.Fatal(err)
			}
		}
	}
	// One more on the same connection waits for a slot.
	short, cancelShort := context.WithTimeout(callCtx(t, "rpi", ""), 300*time.Millisecond)
	defer cancelShort()
	if s, err := hostile.WatchStatus(short, &jpb.WatchStatusRequest{}); err == nil {
		if _, err = s.Recv(); status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("stream %d on one connection: %v, want it held until its deadline", MaxConcurrentStreams+1, err)
		}
	} else if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("stream %d on one connection: %v", MaxConcurrentStreams+1, err)
	}
	// Another client is served at once, and sees status changes pushed.
	other := a.dial(t)
	begin := time.Now()
	watch, err := other.WatchStatus(callCtx(t, "rpi", ""), &jpb.WatchStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	job := a.startJob("rpi", withToken("tok"))
	if r, err := watch.Recv(); err != nil || r.GetStatus() == jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE {
		t.Fatalf("push to the other client: %v %v", r, err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("the other client waited %v", d)
	}
	// Across connections: past MaxWatchStreams, status streams are refused.
	var refused error
	for i := 0; i < 20 && refused == nil; i++ {
		s, err := a.dial(t).WatchStatus(ctx, &jpb.WatchStatusRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		refused = err
	}
	if status.Code(refused) != codes.ResourceExhausted {
		t.Fatalf("status streams past the service's limit: %v, want RESOURCE_EXHAUSTED", refused)
	}
	// Log streams of one lease are bounded too.
	for i := 0; i < 4; i++ {
		s, err := other.LogStream(callCtx(t, "rpi", "tok"), &emptypb.Empty{})
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			t.Fatalf("log stream %d: %v", i, err)
		}
	}
	s, err := other.LogStream(callCtx(t, "rpi", "tok"), &emptypb.Empty{})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("5th log stream of a lease: %v, want RESOURCE_EXHAUSTED", err)
	}
	// Closing the hostile client's streams frees the service's slots.
	cancelStreams()
	deadline := time.Now().Add(wait)
	for {
		s, err := other.WatchStatus(callCtx(t, "rpi", ""), &jpb.WatchStatusRequest{})
		if err == nil {
			if _, err = s.Recv(); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status streams not freed: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.stopJob(job); err != nil {
		t.Fatal(err)
	}
	a.waitPhase(job, jobs.PhaseDone)
}

// A reader that never reads: its stream stalls on gRPC flow control and its queue fills,
// but hook lines still reach another reader on the same connection and one on another
// connection, live; the stalled reader is told how many lines it missed, exactly.
//
// The hook prints bursts of 100 lines and waits after each until the test has seen both
// live readers receive it: the live readers never fall behind (and miss nothing), while
// the stalled one falls further behind with every burst.
func TestHostileClientReaderThatNeverReads(t *testing.T) {
	t.Parallel()
	const bursts, burst = 30, 100
	g := newGate(t, "burst")
	// (The gate is reused: an open may meet the previous writer just before it closes,
	// and read nothing; the hook then waits again.)
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do i=$((i+1)); echo "line $i %s"
if [ $((i %% %d)) -eq 0 ]; then while :; do x=; read x < %s; [ "$x" = go ] && break; done; fi; done`,
		bursts*burst, strings.Repeat("p", 200), burst, g)
	a := startAudited(t, exporter.Limits{}, board.Config{Name: "rpi", Before: hookCfg(script, jobs.PolicyEndLease, wait)})
	job := a.startJob("rpi", withToken("tok"))
	// The stalled reader's connection: a fixed 64 KiB flow-control window (no BDP
	// growth), so it stops taking data soon.
	stalledConn := a.dial(t, grpc.WithInitialWindowSize(1<<16))
	stalled, err := stalledConn.LogStream(callCtx(t, "rpi", "tok"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	type tally struct {
		got, missed int
		err         error
	}
	read := func(s grpc.ServerStreamingClient[jpb.LogStreamResponse], seen func(string)) tally {
		var r tally
		for {
			m, err := s.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				return r
			}
			r.got++
			r.missed += int(m.GetMissed())
			if seen != nil {
				seen(m.GetMessage())
			}
		}
	}
	var wg sync.WaitGroup
	results := make([]tally, 2)
	var upTo [2]atomic.Int64 // the last hook line each live reader received
	for i, c := range []jpb.ExporterServiceClient{stalledConn, a.dial(t)} {
		s, err := c.LogStream(callCtx(t, "rpi", "tok"), &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i] = read(s, func(msg string) {
				var n int64
				if _, err := fmt.Sscanf(msg, "line %d ", &n); err == nil {
					upTo[i].Store(n)
				}
			})
		}(i)
	}
	for b := int64(1); b <= bursts; b++ {
		deadline := time.Now().Add(wait)
		for upTo[0].Load() < b*burst || upTo[1].Load() < b*burst {
			if time.Now().After(deadline) {
				t.Fatalf("burst %d: the live readers got up to lines %d and %d while another reader stalled", b, upTo[0].Load(), upTo[1].Load())
			}
			time.Sleep(time.Millisecond)
		}
		g.open(t)
	}
	a.waitPhase(job, jobs.PhaseReady)
	if err := a.stopJob(job); err != nil {
		t.Fatal(err)
	}
	a.waitPhase(job, jobs.PhaseDone)
	wg.Wait()
	// Now the stalled reader reads: what it got plus what it was told it missed is
	// exactly what the others got.
	r := read(stalled, nil)
	for i, o := range results {
		if o.err != nil || o.missed != 0 {
			t.Fatalf("live reader %d: %+v", i, o)
		}
	}
	want := results[0].got
	if results[1].got != want || want < bursts*burst {
		t.Fatalf("the two live readers got %d and %d lines", results[0].got, results[1].got)
	}
	if r.err != nil || r.missed == 0 || r.got+r.missed != want {
		t.Fatalf("stalled reader: got %d, missed %d, err %v; want missed > 0 and got+missed = %d", r.got, r.missed, r.err, want)
	}
	t.Logf("stalled reader got %d lines and was told it missed %d", r.got, r.missed)
}

// Tokens never appear in logs, events, error messages or the audit log, whatever a
// client does with right and wrong tokens; and refused accesses are audited.
func TestHostileClientTokensNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		good   = "tok-SECRET-4f1c9a"
		other  = "tok-SECRET-other-77"
		forged = "tok-SECRET-forged-0d"
	)
	a := startAudited(t, exporter.Limits{}, board.Config{Name: "a", Before: hookCfg("env; echo 'JMP_INFO: ready'", jobs.PolicyEndLease, wait)},
		board.Config{Name: "b"})
	jobA := a.startJob("a", withToken(good))
	jobB := a.startJob("b", withToken(other))
	a.waitPhase(jobA, jobs.PhaseReady)
	a.waitPhase(jobB, jobs.PhaseReady)
	c := a.dial(t)
	var errs []string
	note := func(err error) {
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	calls := []struct {
		board, auth string
		code        codes.Code
	}{
		{"a", "", codes.Unauthenticated},
		{"a", "Basic " + good, codes.Unauthenticated},
		{"a", "Bearer " + forged, codes.PermissionDenied},
		{"a", "Bearer " + other, codes.PermissionDenied},
		{"a", "bearer " + good, codes.Unauthenticated},
		{"nope", "Bearer " + good, codes.NotFound},
	}
	for _, k := range calls {
		ctx := callCtx(t, k.board, "")
		if k.auth != "" {
			ctx = withAuth(ctx, k.auth)
		}
		_, err := c.DriverCall(ctx, &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
		if status.Code(err) != k.code {
			t.Errorf("board %s, %q: %v, want %s", k.board, k.auth, err, k.code)
		}
		note(err)
		s, err := c.LogStream(ctx, &emptypb.Empty{})
		if err == nil {
			_, err = s.Recv()
		}
		note(err)
		_, err = c.EndSession(ctx, &jpb.EndSessionRequest{})
		note(err)
	}
	_, err := c.DriverCall(callCtx(t, "a", good), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
	note(err) // no driver: UNIMPLEMENTED
	if _, err := c.EndSession(callCtx(t, "a", good), &jpb.EndSessionRequest{}); err != nil {
		t.Fatal(err)
	}
	a.waitPhase(jobA, jobs.PhaseDone)
	_, err = c.DriverCall(callCtx(t, "a", good), &jpb.DriverCallRequest{Uuid: "power", Method: "on"})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("token after its lease ended: %v", err)
	}
	note(err)
	if err := a.stopJob(jobB); err != nil {
		t.Fatal(err)
	}
	a.waitPhase(jobB, jobs.PhaseDone)

	auditLog, err := os.ReadFile(a.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	var evs strings.Builder
	for _, ev := range a.conn.Events() {
		fmt.Fprintf(&evs, "%s %+v %+v %+v\n", ev.String(), ev.Transition, ev.Hook, ev.Error)
	}
	for what, text := range map[string]string{"logs": a.logs.String(), "events": evs.String(),
		"errors": strings.Join(errs, "\n"), "audit log": string(auditLog)} {
		if strings.Contains(text, "SECRET") {
			i := strings.Index(text, "SECRET")
			t.Errorf("a token appears in the %s: …%s…", what, text[max(0, i-200):min(len(text), i+100)])
		}
	}
	// The hook's environment holds no token either (it printed it).
	if !strings.Contains(evs.String(), "CLIENT_NAME=alice") {
		t.Error("the hook's environment was not printed")
	}
	// Every refusal was audited: 3 kinds of call for each refused case, and the call
	// after the lease ended.
	refused := strings.Count(string(auditLog), `"kind":"refused"`)
	if want := 3*5 + 1; refused != want {
		t.Errorf("%d refusals audited, want %d:\n%s", refused, want, auditLog)
	}
	for _, want := range []string{`"kind":"request","who":"alice","board":"a","job":"` + jobA + `"`, `"details":{"what":"EndSession"}`,
		`"reason":"the token is for lease ` + jobB + ` on board b"`} {
		if !strings.Contains(string(auditLog), want) {
			t.Errorf("audit log lacks %s:\n%s", want, auditLog)
		}
	}
}

func withAuth(ctx context.Context, value string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", value)
}
