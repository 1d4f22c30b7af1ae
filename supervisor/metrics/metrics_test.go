package metrics_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/metrics"
	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
)

func TestMain(m *testing.M) { hooktest.Main(m) }

const wait = 20 * time.Second

// scrape reads the endpoint into series -> value, series written as in the text format:
// name{label="value",...}.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape: %s\n%s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape: bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// console prints a login prompt once, then fails once (its first run), then runs quietly.
type console struct{ runs atomic.Int32 }

func (c *console) Name() string { return "console" }

func (c *console) Run(ctx context.Context, out func([]byte)) error {
	if c.runs.Add(1) == 1 {
		out([]byte("login: "))
		select {
		case <-time.After(300 * time.Millisecond):
			return errors.New("unplugged")
		case <-ctx.Done():
			return nil
		}
	}
	out([]byte("ok\n"))
	<-ctx.Done()
	return nil
}

var _ driver.Driver = (*console)(nil)

func hookCfg(script string, policy jobs.Policy) *lease.HookConfig {
	return &lease.HookConfig{Spec: jhook.Spec{Script: script, Grace: 200 * time.Millisecond},
		Policy: jobs.HookPolicy{Timeout: wait, OnFailure: policy}}
}

func TestSeriesChangeAsALeaseRuns(t *testing.T) {
	m := metrics.New(metrics.Options{Boards: []string{"rpi", "idle"}})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	url := srv.URL + "/metrics"

	before := scrape(t, url)
	if before[`boardvisor_board_status{board="idle",status="unspecified"}`] != 0 ||
		before[`boardvisor_console_bytes_total{board="rpi"}`] != 0 {
		t.Fatalf("series before any event: %v", before)
	}
	if _, ok := before[`boardvisor_board_status{board="rpi",status="available"}`]; !ok {
		t.Fatal("configured board has no status series before its first event")
	}
	if before["go_goroutines"] == 0 {
		t.Fatal("no Go runtime series")
	}

	conn := local.New()
	drv := &console{}
	boards := []board.Config{
		{Name: "rpi", LeaseDuration: time.Minute, Drivers: []driver.Driver{drv},
			Strategy: board.Strategy{Backoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxFailures: 5, Window: time.Minute},
			Before:   hookCfg("echo 'JMP_INFO: powering on'; echo flashing; sleep 0.1", jobs.PolicyEndLease),
			After:    hookCfg("echo 'JMP_WARN: cleanup failed'; exit 3", jobs.PolicyWarn)},
		{Name: "idle", LeaseDuration: time.Minute},
	}
	sup, err := supervisor.Start(supervisor.Options{Boards: boards, StateDir: t.TempDir(), Conn: conn,
		ShimCommand: hooktest.ShimCommand(), Logger: hclog.NewNullLogger(), Sinks: []outbox.Sink{m.Sink}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	waitEvents := func(what string, cond func([]connector.Event) bool) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(context.Background(), wait)
		defer wcancel()
		if _, err := conn.Wait(wctx, cond); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
	}
	// The driver fails once and is restarted: health good -> unknown -> good.
	waitEvents("the driver's restart", func(evs []connector.Event) bool {
		// Both runs' output ("login: ", then "ok\n"; merged into one event when they
		// reach the outbox in the same console tick, which may be after the health
		// changes).
		n, unknown, good := 0, false, false
		for _, ev := range evs {
			if ev.Console != nil {
				n += len(ev.Console.Data)
			}
			if ev.BoardStatus != nil && ev.Board == "rpi" {
				if ev.BoardStatus.Health == jobs.HealthUnknown {
					unknown = true
				} else if unknown && ev.BoardStatus.Health == jobs.HealthGood {
					good = true
				}
			}
		}
		return good && n >= len("login: ok\n")
	})
	job := uuid.NewString()
	sctx, scancel := context.WithTimeout(context.Background(), wait)
	defer scancel()
	if err := conn.StartJob(sctx, connector.StartJobRequest{JobID: job, Board: "rpi", Client: "alice"}); err != nil {
		t.Fatal(err)
	}
	reached := func(p jobs.Phase) func([]connector.Event) bool {
		return func(evs []connector.Event) bool {
			for _, ev := range evs {
				if ev.JobID == job && ev.Transition != nil && ev.Transition.To == p {
					return true
				}
			}
			return false
		}
	}
	waitEvents("READY", reached(jobs.PhaseReady))

	mid := scrape(t, url)
	if mid[`boardvisor_board_status{board="rpi",status="lease_ready"}`] != 1 || mid[`boardvisor_board_status{board="rpi",status="available"}`] != 0 {
		t.Fatalf("status of a READY board: lease_ready %v, available %v", mid[`boardvisor_board_status{board="rpi",status="lease_ready"}`],
			mid[`boardvisor_board_status{board="rpi",status="available"}`])
	}
	if mid[`boardvisor_board_status{board="idle",status="available"}`] != 1 {
		t.Fatal("the idle board is not AVAILABLE")
	}
	if v := mid[`boardvisor_hook_runs_total{board="rpi",hook="beforeLease",outcome="ok"}`]; v != 1 {
		t.Fatalf("beforeLease ok runs %v, want 1", v)
	}
	if v := mid[`boardvisor_hook_duration_seconds_sum{board="rpi",hook="beforeLease"}`]; v < 0.1 {
		t.Fatalf("beforeLease duration %vs, want at least the hook's 0.1s sleep", v)
	}
	if v := mid[`boardvisor_log_lines_total{board="rpi",source="beforeLease"}`]; v != 2 {
		t.Fatalf("beforeLease lines %v, want 2", v)
	}
	if v := mid[`boardvisor_driver_restarts_total{board="rpi"}`]; v != 1 {
		t.Fatalf("driver restarts %v, want 1", v)
	}
	if v := mid[`boardvisor_console_bytes_total{board="rpi"}`]; v != float64(len("login: ok\n")) {
		t.Fatalf("console bytes %v, want %d", v, len("login: ok\n"))
	}
	if v := mid[`boardvisor_lease_phase_duration_seconds_count{board="rpi",phase="BEFORE_LEASE"}`]; v != 1 {
		t.Fatalf("BEFORE_LEASE durations observed %v, want 1", v)
	}
	if _, ok := mid[`boardvisor_lease_phase_duration_seconds_count{board="rpi",phase="READY"}`]; ok {
		t.Fatal("READY duration observed while the lease is READY")
	}

	if err := conn.StopJob(sctx, connector.StopJobRequest{JobID: job}); err != nil {
		t.Fatal(err)
	}
	waitEvents("DONE", reached(jobs.PhaseDone))
	after := scrape(t, url)
	if after[`boardvisor_board_status{board="rpi",status="available"}`] != 1 || after[`boardvisor_board_status{board="rpi",status="lease_ready"}`] != 0 {
		t.Fatal("the board is not AVAILABLE again after its lease")
	}
	for _, p := range []string{"STARTING", "BEFORE_LEASE", "READY", "ENDING", "AFTER_LEASE", "RELEASING"} {
		if v := after[`boardvisor_lease_phase_duration_seconds_count{board="rpi",phase="`+p+`"}`]; v != 1 {
			t.Errorf("phase %s observed %v times, want 1", p, v)
		}
	}
	if v := after[`boardvisor_hook_runs_total{board="rpi",hook="afterLease",outcome="warned"}`]; v != 1 {
		t.Fatalf("afterLease warned runs %v, want 1 (it exits 3 under onFailure: warn)", v)
	}
	if v := after[`boardvisor_leases_total{board="rpi",outcome="done"}`]; v != 1 {
		t.Fatalf("leases done %v, want 1", v)
	}
	if after["boardvisor_event_last_seq"] <= mid["boardvisor_event_last_seq"] || after[`boardvisor_events_total{kind="transition"}`] != 7 {
		t.Fatalf("events: last seq %v -> %v, transitions %v", mid["boardvisor_event_last_seq"], after["boardvisor_event_last_seq"],
			after[`boardvisor_events_total{kind="transition"}`])
	}
}

func TestFailedHookIsCountedAsFailed(t *testing.T) {
	m := metrics.New(metrics.Options{NoProcessMetrics: true})
	conn := local.New()
	sup, err := supervisor.Start(supervisor.Options{StateDir: t.TempDir(), Conn: conn, ShimCommand: hooktest.ShimCommand(),
		Sinks:  []outbox.Sink{m.Sink},
		Boards: []board.Config{{Name: "b", LeaseDuration: time.Minute, Before: hookCfg("exit 1", jobs.PolicyEndLease)}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), wait)
	defer wcancel()
	job := uuid.NewString()
	if err := conn.StartJob(wctx, connector.StartJobRequest{JobID: job, Board: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Wait(wctx, func(evs []connector.Event) bool {
		for _, ev := range evs {
			if ev.Transition != nil && ev.Transition.To == jobs.PhaseFailed {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	// The sinks see an event before the connector does (outbox.Sink): the lease's end
	// is counted by the time the connector has it.
	s := scrape(t, srv.URL)
	if v := s[`boardvisor_hook_runs_total{board="b",hook="beforeLease",outcome="failed"}`]; v != 1 {
		t.Fatalf("failed runs %v, want 1", v)
	}
	if v := s[`boardvisor_leases_total{board="b",outcome="failed"}`]; v != 1 {
		t.Fatalf("failed leases %v, want 1", v)
	}
	if _, ok := s[`boardvisor_hook_runs_total{board="b",hook="afterLease",outcome="ok"}`]; ok {
		t.Fatal("an afterLease run was counted: none is configured")
	}
}

type links struct{ n atomic.Uint64 }

func (l *links) Connects() uint64 { return l.n.Load() }

func TestOutboxDepthAndAgeFromTheQueue(t *testing.T) {
	q, err := grpc.OpenQueue(filepath.Join(t.TempDir(), "outbox.db"), grpc.QueueOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	l := &links{}
	m := metrics.New(metrics.Options{Outbox: q, Link: l, NoProcessMetrics: true})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	s := scrape(t, srv.URL)
	if s["boardvisor_outbox_unacked_events"] != 0 || s["boardvisor_outbox_oldest_unacked_age_seconds"] != 0 || s["boardvisor_coordinator_reconnects_total"] != 0 {
		t.Fatalf("empty outbox: %v", s)
	}
	old := time.Now().Add(-90 * time.Second)
	var durable <-chan struct{}
	for i := 1; i <= 3; i++ {
		ev := connector.Event{Seq: uint64(i), Time: old.Add(time.Duration(i) * time.Second), Board: "b",
			BoardStatus: &connector.BoardStatus{Status: jobs.StatusAvailable, Health: jobs.HealthGood}}
		durable = q.Append(grpc.ToProto(ev))
	}
	select {
	case <-durable:
	case <-time.After(wait):
		t.Fatal("queue did not write")
	}
	l.n.Store(3)
	s = scrape(t, srv.URL)
	if s["boardvisor_outbox_unacked_events"] != 3 || s["boardvisor_outbox_bytes"] <= 0 || s["boardvisor_outbox_last_seq"] != 3 {
		t.Fatalf("outbox of 3 events: %v", s)
	}
	if age := s["boardvisor_outbox_oldest_unacked_age_seconds"]; age < 89 || age > 120 {
		t.Fatalf("oldest un-acked age %vs, want about 89s", age)
	}
	if s["boardvisor_coordinator_reconnects_total"] != 2 || s["boardvisor_coordinator_connects_total"] != 3 {
		t.Fatalf("reconnects %v connects %v", s["boardvisor_coordinator_reconnects_total"], s["boardvisor_coordinator_connects_total"])
	}
	if err := q.Ack(1); err != nil {
		t.Fatal(err)
	}
	s = scrape(t, srv.URL)
	if s["boardvisor_outbox_unacked_events"] != 2 || s["boardvisor_outbox_acked_seq"] != 1 {
		t.Fatalf("after ack 1: %v", s)
	}
	if age := s["boardvisor_outbox_oldest_unacked_age_seconds"]; age < 87 || age > 119 {
		t.Fatalf("oldest un-acked age after ack %vs, want about 88s", age)
	}
	if err := q.Ack(3); err != nil {
		t.Fatal(err)
	}
	if s = scrape(t, srv.URL); s["boardvisor_outbox_unacked_events"] != 0 || s["boardvisor_outbox_oldest_unacked_age_seconds"] != 0 {
		t.Fatalf("all acked: %v", s)
	}
}

func TestLogSinkCountsConnections(t *testing.T) {
	m := metrics.New(metrics.Options{NoProcessMetrics: true})
	log := hclog.NewInterceptLogger(&hclog.LoggerOptions{Output: io.Discard})
	log.RegisterSink(m.LogSink())
	log.Named("link").Info(metrics.LinkConnectedMessage, "coordinator", "x")
	log.Info("something else")
	log.Named("link").Info(metrics.LinkConnectedMessage, "coordinator", "x")
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	if s := scrape(t, srv.URL); s["boardvisor_coordinator_reconnects_total"] != 1 {
		t.Fatalf("reconnects %v, want 1", s["boardvisor_coordinator_reconnects_total"])
	}
}

var leakOnce sync.Once

func TestServeUsesItsOwnMux(t *testing.T) {
	m := metrics.New(metrics.Options{NoProcessMetrics: true})
	// Something on the default mux must not be served.
	leakOnce.Do(func() {
		http.HandleFunc("/leak", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "leaked") })
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, lis) }()
	s := scrape(t, "http://"+lis.Addr().String()+"/metrics")
	if _, ok := s["boardvisor_event_last_seq"]; !ok {
		t.Fatal("no series served")
	}
	resp, err := http.Get("http://" + lis.Addr().String() + "/leak")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/leak answered %s: the default mux leaked in", resp.Status)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("Serve did not return after its context ended")
	}
}

type stateDir struct{ full, low atomic.Bool }

func (d *stateDir) Full() bool { return d.full.Load() }
func (d *stateDir) Low() bool  { return d.low.Load() || d.full.Load() }

func TestStateDirFullAndShedBytes(t *testing.T) {
	q, err := grpc.OpenQueue(filepath.Join(t.TempDir(), "outbox.db"), grpc.QueueOptions{NoSync: true, MaxBytes: grpc.MinQueueBytes})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	dir := &stateDir{}
	m := metrics.New(metrics.Options{Outbox: q, StateDir: dir, NoProcessMetrics: true})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	if s := scrape(t, srv.URL); s["boardvisor_state_dir_full"] != 0 || s["boardvisor_state_dir_low"] != 0 {
		t.Fatalf("fresh: %v", s)
	}
	dir.full.Store(true)
	if s := scrape(t, srv.URL); s["boardvisor_state_dir_full"] != 1 || s["boardvisor_state_dir_low"] != 1 {
		t.Fatalf("full: %v", s)
	}
	var durable <-chan struct{}
	for i := 1; i <= 100; i++ {
		ev := connector.Event{Seq: uint64(i), Time: time.Now(), Board: "b", Console: &connector.Console{Data: make([]byte, 1000)}}
		durable = q.Append(grpc.ToProto(ev))
	}
	<-durable
	if s := scrape(t, srv.URL); s["boardvisor_outbox_shed_console_bytes_total"] < 100000-float64(grpc.MinQueueBytes) {
		t.Fatalf("shed bytes %v after 100 KB of console into a 64 KiB outbox", s["boardvisor_outbox_shed_console_bytes_total"])
	}
}
