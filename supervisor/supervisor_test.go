package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/google/uuid"
	"github.com/hashicorp/go-hclog"
)

// These tests run the whole actor tree with real hook processes: the hooks are shell
// scripts run under the real shim (this test binary, see hooktest), and the supervisor's
// events are read from the local connector, as a coordinator would see them.

func TestMain(m *testing.M) { hooktest.Main(m) }

// wait bounds every wait in these tests.
const wait = 20 * time.Second

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

type harness struct {
	t    *testing.T
	sup  *Supervisor
	conn *local.Connector
	dir  string
}

// start runs a supervisor with the given boards until the test ends, and checks at the
// end that every event it saw was numbered gap-free and in order.
func start(t *testing.T, boards ...board.Config) *harness {
	t.Helper()
	return startWith(t, nil, boards...)
}

func startWith(t *testing.T, svc *exporter.Service, boards ...board.Config) *harness {
	t.Helper()
	return startConn(t, local.New(), nil, svc, boards...)
}

// startConn is start with the connector given: conn, or wrap (which must wrap conn) if
// not nil.
func startConn(t *testing.T, conn *local.Connector, wrap connector.SupervisorConnector, svc *exporter.Service, boards ...board.Config) *harness {
	t.Helper()
	dir := t.TempDir()
	var c connector.SupervisorConnector = conn
	if wrap != nil {
		c = wrap
	}
	logger := hclog.New(&hclog.LoggerOptions{Output: logWriter{t}, Level: hclog.Debug, Name: "boardvisor"})
	for i := range boards {
		if boards[i].LeaseDuration == 0 {
			boards[i].LeaseDuration = time.Minute
		}
	}
	sup, err := Start(Options{Boards: boards, StateDir: dir, Conn: c, ShimCommand: hooktest.ShimCommand(), Logger: logger, Exporter: svc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	h := &harness{t: t, sup: sup, conn: conn, dir: dir}
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("supervisor: %v", err)
			}
		case <-time.After(wait):
			t.Error("supervisor did not stop")
		}
		checkSequence(t, conn.Events())
	})
	return h
}

// checkSequence asserts that events are numbered 1, 2, 3, ... in the order they arrived.
func checkSequence(t *testing.T, evs []connector.Event) {
	t.Helper()
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has sequence number %d: not gap-free and ordered\n%s", i, ev.Seq, dump(evs))
		}
	}
}

func dump(evs []connector.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString(ev.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func (h *harness) startJob(boardName string, opts ...func(*connector.StartJobRequest)) string {
	h.t.Helper()
	req := connector.StartJobRequest{JobID: uuid.NewString(), Board: boardName, Client: "alice"}
	for _, o := range opts {
		o(&req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := h.conn.StartJob(ctx, req); err != nil {
		h.t.Fatalf("StartJob on %s: %v", boardName, err)
	}
	return req.JobID
}

func (h *harness) stopJob(job string) error {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return h.conn.StopJob(ctx, connector.StopJobRequest{JobID: job})
}

// waitFor blocks until cond holds for the events so far.
func (h *harness) waitFor(what string, cond func([]connector.Event) bool) []connector.Event {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	evs, err := h.conn.Wait(ctx, cond)
	if err != nil {
		h.t.Fatalf("waiting for %s: %v\nevents:\n%s", what, err, dump(evs))
	}
	return evs
}

func (h *harness) waitPhase(job string, p jobs.Phase) []connector.Event {
	h.t.Helper()
	return h.waitFor(fmt.Sprintf("job %s to reach %s", job, p), func(evs []connector.Event) bool {
		return reached(evs, job, p)
	})
}

func reached(evs []connector.Event, job string, p jobs.Phase) bool {
	for _, ev := range evs {
		if ev.JobID == job && ev.Transition != nil && ev.Transition.To == p {
			return true
		}
	}
	return false
}

// transitions returns a job's reported transitions as "FROM>TO[STATUS]".
func transitions(evs []connector.Event, job string) []string {
	var out []string
	for _, ev := range evs {
		if ev.JobID == job && ev.Transition != nil {
			out = append(out, fmt.Sprintf("%s>%s[%s]", ev.Transition.From, ev.Transition.To, ev.Transition.Status))
		}
	}
	return out
}

func hookLines(evs []connector.Event, job string, src jobs.LogSource) []string {
	var out []string
	for _, ev := range evs {
		if ev.JobID == job && ev.Hook != nil && ev.Hook.Source == src {
			out = append(out, ev.Hook.Severity.String()+" "+ev.Hook.Text)
		}
	}
	return out
}

func indexOf(evs []connector.Event, pred func(connector.Event) bool) int {
	for i, ev := range evs {
		if pred(ev) {
			return i
		}
	}
	return -1
}

// gate is a FIFO a hook blocks on (`read x < gate`) until the test opens it.
type gate string

func newGate(t *testing.T, name string) gate {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return gate(p)
}

// open lets the hook blocked on the gate go on.
func (g gate) open(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(string(g), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString("go\n")
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatalf("nobody read gate %s", g)
	}
}

func hookCfg(script string, policy jobs.Policy, timeout time.Duration) *lease.HookConfig {
	return &lease.HookConfig{Spec: jhook.Spec{Script: script, Grace: 200 * time.Millisecond},
		Policy: jobs.HookPolicy{Timeout: timeout, OnFailure: policy}}
}

// record returns a file hooks append to, and a function reading its lines.
func record(t *testing.T) (string, func() []string) {
	p := filepath.Join(t.TempDir(), "record")
	return p, func() []string {
		b, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		return strings.Fields(strings.TrimSpace(strings.ReplaceAll(string(b), "\n", " ")))
	}
}

func TestThreeBoardsLeaseIndependently(t *testing.T) {
	slow := newGate(t, "slow")
	boards := []board.Config{
		{Name: "slow", Before: hookCfg(fmt.Sprintf("echo 'JMP_INFO: waiting'; read x < %s; echo done", slow), jobs.PolicyEndLease, wait)},
		{Name: "fast1", Before: hookCfg("echo 'JMP_INFO: quick'", jobs.PolicyEndLease, wait)},
		{Name: "fast2"},
	}
	h := start(t, boards...)
	jobSlow := h.startJob("slow")
	h.waitFor("the slow hook to print", func(evs []connector.Event) bool {
		return len(hookLines(evs, jobSlow, jobs.SourceBeforeLeaseHook)) > 0
	})
	job1, job2 := h.startJob("fast1"), h.startJob("fast2")
	h.waitPhase(job1, jobs.PhaseReady)
	evs := h.waitPhase(job2, jobs.PhaseReady)
	// The slow board's hook is still blocked: the other boards did not wait for it.
	if reached(evs, jobSlow, jobs.PhaseReady) {
		t.Fatal("slow board became READY before its hook was released")
	}
	slow.open(t)
	h.waitPhase(jobSlow, jobs.PhaseReady)
	for _, j := range []string{jobSlow, job1, job2} {
		if err := h.stopJob(j); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range []string{jobSlow, job1, job2} {
		h.waitPhase(j, jobs.PhaseDone)
	}
	for _, name := range []string{"slow", "fast1", "fast2"} {
		st, err := h.sup.Board(name)
		if err != nil || st.Status != jobs.StatusAvailable || st.Holder != "" {
			t.Fatalf("board %s after its lease: %+v %v", name, st, err)
		}
	}
}

func TestConsecutiveLeasesAreSerialized(t *testing.T) {
	rec, lines := record(t)
	b := board.Config{Name: "rpi", Queue: 1,
		Before: hookCfg(fmt.Sprintf("echo before-start-$LEASE_NAME >> %[1]s; sleep 0.2; echo before-end-$LEASE_NAME >> %[1]s", rec), jobs.PolicyEndLease, wait),
		After:  hookCfg(fmt.Sprintf("echo after-start-$LEASE_NAME >> %[1]s; sleep 0.3; echo after-end-$LEASE_NAME >> %[1]s", rec), jobs.PolicyEndLease, wait)}
	h := start(t, b)
	j1 := h.startJob("rpi")
	h.waitPhase(j1, jobs.PhaseReady)
	j2 := h.startJob("rpi") // queued: waits for the board
	// A third is refused: one holds the board, one waits, the queue is 1.
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	err := h.conn.StartJob(ctx, connector.StartJobRequest{JobID: uuid.NewString(), Board: "rpi"})
	if k, _ := jobs.KindOf(err); k != jobs.KindMaxConcurrentJobs {
		t.Fatalf("third job: %v, want MaxConcurrentJobs", err)
	}
	if err := h.stopJob(j1); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(j2, jobs.PhaseReady)
	if err := h.stopJob(j2); err != nil {
		t.Fatal(err)
	}
	evs := h.waitPhase(j2, jobs.PhaseDone)
	want := []string{"before-start-" + j1, "before-end-" + j1, "after-start-" + j1, "after-end-" + j1,
		"before-start-" + j2, "before-end-" + j2, "after-start-" + j2, "after-end-" + j2}
	if got := lines(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("hooks ran in order\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// In the events too: lease 1 released the board before lease 2 entered BEFORE_LEASE.
	rel := indexOf(evs, func(ev connector.Event) bool {
		return ev.JobID == j1 && ev.Transition != nil && ev.Transition.To == jobs.PhaseReleasing
	})
	bl := indexOf(evs, func(ev connector.Event) bool {
		return ev.JobID == j2 && ev.Transition != nil && ev.Transition.To == jobs.PhaseBeforeLease
	})
	if rel < 0 || bl < 0 || rel > bl {
		t.Fatalf("lease 2 entered BEFORE_LEASE (event %d) before lease 1 was released (event %d)", bl, rel)
	}
}

func TestStopDuringBeforeLeaseWaitsForHook(t *testing.T) {
	g := newGate(t, "before")
	rec, lines := record(t)
	b := board.Config{Name: "rpi",
		Before: hookCfg(fmt.Sprintf("echo 'JMP_INFO: flashing'; read x < %s; echo before-done >> %s", g, rec), jobs.PolicyEndLease, wait),
		After:  hookCfg(fmt.Sprintf("echo after >> %s", rec), jobs.PolicyEndLease, wait)}
	h := start(t, b)
	job := h.startJob("rpi")
	h.waitFor("the hook to print", func(evs []connector.Event) bool {
		return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) > 0
	})
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	// A second StopJob is harmless: already stopping.
	if err := h.stopJob(job); !errors.Is(err, &jobs.JobError{Kind: jobs.KindAlreadyStopping}) {
		t.Fatalf("second StopJob: %v, want AlreadyStopping", err)
	}
	g.open(t)
	evs := h.waitPhase(job, jobs.PhaseDone)
	if reached(evs, job, jobs.PhaseReady) {
		t.Fatalf("READY reported after StopJob:\n%s", strings.Join(transitions(evs, job), "\n"))
	}
	if got := strings.Join(lines(), " "); got != "before-done after" {
		t.Fatalf("hook record %q, want the beforeLease hook finished, then afterLease once", got)
	}
	// The lease is over: its hook spools are gone.
	if _, err := os.Stat(filepath.Join(h.dir, "hooks", job)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("hook spools of an ended lease left behind: %v", err)
	}
}

func TestConcurrentEndRequestsRunAfterLeaseOnce(t *testing.T) {
	rec, lines := record(t)
	b := board.Config{Name: "rpi", After: hookCfg(fmt.Sprintf("echo after >> %s; sleep 0.2", rec), jobs.PolicyEndLease, wait)}
	h := start(t, b)
	job := h.startJob("rpi")
	h.waitPhase(job, jobs.PhaseReady)
	var wg sync.WaitGroup
	var accepted atomic.Int32
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			var err error
			if i == 2 {
				err = h.sup.EndSession(ctx, "rpi", job)
			} else {
				err = h.conn.StopJob(ctx, connector.StopJobRequest{JobID: job})
			}
			if err == nil {
				accepted.Add(1)
			} else if !errors.Is(err, &jobs.JobError{Kind: jobs.KindAlreadyStopping}) {
				t.Errorf("end request: %v", err)
			}
		}(i)
	}
	wg.Wait()
	h.waitPhase(job, jobs.PhaseDone)
	if accepted.Load() != 1 {
		t.Fatalf("%d end requests accepted, want exactly 1 (the others AlreadyStopping)", accepted.Load())
	}
	if got := lines(); len(got) != 1 {
		t.Fatalf("afterLease ran %d times", len(got))
	}
	// A StopJob for the finished job is a no-op.
	if err := h.stopJob(job); err != nil {
		t.Fatalf("StopJob after the end: %v", err)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is dead; its parent just has not reaped it.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func TestHookTimeoutKillsEveryProcess(t *testing.T) {
	pids := filepath.Join(t.TempDir(), "pids")
	script := fmt.Sprintf(`trap '' TERM
sleep 1000 & echo $! >> %[1]s
setsid sleep 1000 & echo $! >> %[1]s
echo $$ >> %[1]s
echo 'JMP_INFO: stuck'
while :; do sleep 1; done`, pids)
	b := board.Config{Name: "rpi", Before: hookCfg(script, jobs.PolicyEndLease, 500*time.Millisecond)}
	h := start(t, b)
	job := h.startJob("rpi")
	evs := h.waitPhase(job, jobs.PhaseFailed)
	got := strings.Join(transitions(evs, job), " ")
	if !strings.Contains(got, "BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED]") || strings.Contains(got, ">READY") {
		t.Fatalf("transitions %s: want the endLease policy applied", got)
	}
	b2, err := os.ReadFile(pids)
	if err != nil {
		t.Fatal(err)
	}
	ps := strings.Fields(string(b2))
	if len(ps) != 3 {
		t.Fatalf("hook recorded pids %v", ps)
	}
	for _, p := range ps {
		pid, _ := strconv.Atoi(p)
		if alive(pid) {
			t.Errorf("process %d of the hook survived its timeout", pid)
		}
	}
}

func TestFailurePolicies(t *testing.T) {
	fail := "echo 'JMP_ERROR: flash failed'; exit 3"
	t.Run("warn", func(t *testing.T) {
		h := start(t, board.Config{Name: "rpi", Before: hookCfg(fail, jobs.PolicyWarn, wait)})
		job := h.startJob("rpi")
		evs := h.waitPhase(job, jobs.PhaseReady)
		sys := hookLines(evs, job, jobs.SourceSystem)
		if len(sys) == 0 || !strings.HasPrefix(sys[0], "WARN beforeLease hook failed: exit status 3") {
			t.Fatalf("system log %q: want a warning naming the exit status", sys)
		}
	})
	t.Run("endLease", func(t *testing.T) {
		rec, lines := record(t)
		h := start(t, board.Config{Name: "rpi", Before: hookCfg(fail, jobs.PolicyEndLease, wait),
			After: hookCfg("echo after >> "+rec, jobs.PolicyEndLease, wait)})
		job := h.startJob("rpi")
		evs := h.waitPhase(job, jobs.PhaseFailed)
		want := "CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED] " +
			"ENDING>AFTER_LEASE[BEFORE_LEASE_HOOK_FAILED] AFTER_LEASE>RELEASING[BEFORE_LEASE_HOOK_FAILED] RELEASING>FAILED[AVAILABLE]"
		if got := strings.Join(transitions(evs, job), " "); got != want {
			t.Fatalf("transitions\n%s\nwant\n%s", got, want)
		}
		if len(lines()) != 0 {
			t.Fatal("afterLease ran after a failed beforeLease")
		}
		// The board takes the next lease.
		next := h.startJob("rpi")
		h.waitPhase(next, jobs.PhaseFailed)
	})
	t.Run("exit", func(t *testing.T) {
		h := start(t, board.Config{Name: "bad", Before: hookCfg(fail, jobs.PolicyExit, wait)}, board.Config{Name: "other"})
		job := h.startJob("bad")
		evs := h.waitPhase(job, jobs.PhaseFailed)
		if tr := transitions(evs, job); tr[len(tr)-1] != "RELEASING>FAILED[OFFLINE]" {
			t.Fatalf("last transition %s, want RELEASING>FAILED[OFFLINE]", tr[len(tr)-1])
		}
		h.waitFor("the board to go OFFLINE with health bad", func(evs []connector.Event) bool {
			return indexOf(evs, func(ev connector.Event) bool {
				return ev.Board == "bad" && ev.BoardStatus != nil && ev.BoardStatus.Status == jobs.StatusOffline && ev.BoardStatus.Health == jobs.HealthBad
			}) >= 0
		})
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		err := h.conn.StartJob(ctx, connector.StartJobRequest{JobID: uuid.NewString(), Board: "bad"})
		if err == nil || !strings.Contains(err.Error(), "health bad") {
			t.Fatalf("StartJob on a quarantined board: %v", err)
		}
		// The rest of the host goes on.
		other := h.startJob("other")
		h.waitPhase(other, jobs.PhaseReady)
	})
}

func TestHookLinesArriveWhileHookRuns(t *testing.T) {
	g := newGate(t, "lines")
	script := fmt.Sprintf("echo 'JMP_INFO: Powering on device...'; echo 'JMP_WARN: slow flash'; echo 'JMP_ERROR: retrying'; echo plain; read x < %s; echo last", g)
	h := start(t, board.Config{Name: "rpi", Before: hookCfg(script, jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi")
	evs := h.waitFor("four hook lines", func(evs []connector.Event) bool {
		return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) >= 4
	})
	// The hook is blocked on the gate: these lines arrived while it runs.
	want := []string{"INFO Powering on device...", "WARN slow flash", "ERROR retrying", "INFO plain"}
	if got := hookLines(evs, job, jobs.SourceBeforeLeaseHook); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("hook lines %q, want %q", got, want)
	}
	if reached(evs, job, jobs.PhaseReady) {
		t.Fatal("READY before the hook finished")
	}
	g.open(t)
	evs = h.waitPhase(job, jobs.PhaseReady)
	if got := hookLines(evs, job, jobs.SourceBeforeLeaseHook); len(got) != 5 || got[4] != "INFO last" {
		t.Fatalf("hook lines %q", got)
	}
	// Every hook line came before the hook's end was acted on.
	lastLine := indexOf(evs, func(ev connector.Event) bool { return ev.Hook != nil && ev.Hook.Text == "last" })
	ready := indexOf(evs, func(ev connector.Event) bool { return ev.Transition != nil && ev.Transition.To == jobs.PhaseReady })
	if lastLine > ready {
		t.Fatal("a hook line arrived after READY")
	}
}

// flaky is a driver whose first Run panics when told to, and whose later runs print a
// login prompt. Fake I/O: this test is about supervision, not about a device.
type flaky struct {
	runs  atomic.Int32
	crash chan struct{}
}

func (f *flaky) Name() string { return "console" }

func (f *flaky) Run(ctx context.Context, out func([]byte)) error {
	if f.runs.Add(1) == 1 {
		select {
		case <-f.crash:
			panic("device vanished")
		case <-ctx.Done():
			return nil
		}
	}
	out([]byte("login: "))
	<-ctx.Done()
	return nil
}

var _ driver.Driver = (*flaky)(nil)

func TestPanickingDriverIsRestartedAndLeaseGoesOn(t *testing.T) {
	g := newGate(t, "drv")
	d := &flaky{crash: make(chan struct{})}
	h := start(t, board.Config{Name: "rpi", Drivers: []driver.Driver{d},
		Before:   hookCfg(fmt.Sprintf("echo 'JMP_INFO: waiting'; read x < %s", g), jobs.PolicyEndLease, wait),
		Strategy: board.Strategy{Backoff: 10 * time.Millisecond, MaxBackoff: time.Second, MaxFailures: 3, Window: time.Minute}})
	job := h.startJob("rpi")
	h.waitFor("the hook to run", func(evs []connector.Event) bool {
		return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) > 0
	})
	close(d.crash) // the driver panics in the middle of the lease
	evs := h.waitFor("the console to come back", func(evs []connector.Event) bool {
		return indexOf(evs, func(ev connector.Event) bool { return ev.Console != nil && string(ev.Console.Data) == "login: " }) >= 0
	})
	// Console bytes during the lease belong to it.
	if i := indexOf(evs, func(ev connector.Event) bool { return ev.Console != nil }); evs[i].JobID != job {
		t.Fatalf("console event %v not tagged with the lease", evs[i])
	}
	g.open(t)
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	evs = h.waitFor("health good again", func(evs []connector.Event) bool {
		unknown := indexOf(evs, func(ev connector.Event) bool {
			return ev.BoardStatus != nil && ev.BoardStatus.Health == jobs.HealthUnknown
		})
		return unknown >= 0 && indexOf(evs[unknown:], func(ev connector.Event) bool {
			return ev.BoardStatus != nil && ev.BoardStatus.Health == jobs.HealthGood
		}) >= 0
	})
	if d.runs.Load() != 2 {
		t.Fatalf("driver ran %d times, want 2 (one panic, one restart)", d.runs.Load())
	}
	var health []string
	for _, ev := range evs {
		if ev.Board == "rpi" && ev.BoardStatus != nil && (len(health) == 0 || health[len(health)-1] != ev.BoardStatus.Health.String()) {
			health = append(health, ev.BoardStatus.Health.String())
		}
	}
	if strings.Join(health, " ") != "good unknown good" {
		t.Fatalf("board health went %v, want good -> unknown -> good", health)
	}
}

// broken is a driver that always fails.
type broken struct{}

func (broken) Name() string { return "power" }
func (broken) Run(context.Context, func([]byte)) error {
	return errors.New("relay not responding")
}

func TestFlappingDriverQuarantinesBoard(t *testing.T) {
	h := start(t, board.Config{Name: "rpi", Drivers: []driver.Driver{broken{}},
		Strategy: board.Strategy{Backoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, MaxFailures: 3, Window: time.Minute}})
	evs := h.waitFor("quarantine", func(evs []connector.Event) bool {
		return indexOf(evs, func(ev connector.Event) bool { return ev.BoardStatus != nil && ev.BoardStatus.Health == jobs.HealthBad }) >= 0
	})
	i := indexOf(evs, func(ev connector.Event) bool { return ev.BoardStatus != nil && ev.BoardStatus.Health == jobs.HealthBad })
	if st := evs[i].BoardStatus; st.Status != jobs.StatusOffline || !strings.Contains(st.Message, "relay not responding") {
		t.Fatalf("quarantine event %v: want OFFLINE with the driver's error", evs[i])
	}
}

// panicOnce returns a middleware that panics once, on the n-th message whose type name
// is typeName (e.g. "*actors.Acquired"). The message is lost, as a real panic loses it.
func panicOnce(typeName string, n int32) (actor.ReceiverMiddleware, *atomic.Int32) {
	var seen, panicked atomic.Int32
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if fmt.Sprintf("%T", env.Message) == typeName && seen.Add(1) == n && panicked.Add(1) == 1 {
				panic("injected fault on " + typeName)
			}
			next(ctx, env)
		}
	}, &panicked
}

func TestLeaseActorPanicResumesInItsPhase(t *testing.T) {
	rec, lines := record(t)
	mw, panicked := panicOnce("*actors.Acquired", 1)
	h := start(t, board.Config{Name: "rpi", LeaseMiddleware: []actor.ReceiverMiddleware{mw},
		Before: hookCfg("echo before >> "+rec, jobs.PolicyEndLease, wait),
		After:  hookCfg("echo after >> "+rec, jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi")
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	evs := h.waitPhase(job, jobs.PhaseDone)
	if panicked.Load() != 1 {
		t.Fatal("the fault was not injected")
	}
	// The restarted actor went on from STARTING: every phase once, each hook once.
	want := "CREATED>STARTING STARTING>BEFORE_LEASE BEFORE_LEASE>READY READY>ENDING ENDING>AFTER_LEASE AFTER_LEASE>RELEASING RELEASING>DONE"
	var got []string
	for _, tr := range transitions(evs, job) {
		got = append(got, tr[:strings.IndexByte(tr, '[')])
	}
	if strings.Join(got, " ") != want {
		t.Fatalf("transitions %v, want %s", got, want)
	}
	if strings.Join(lines(), " ") != "before after" {
		t.Fatalf("hooks ran %v", lines())
	}
}

func TestHookWatcherPanicReadsOnWithoutLosingLines(t *testing.T) {
	g := newGate(t, "watch")
	mw, panicked := panicOnce("*hook.linesMsg", 2)
	script := fmt.Sprintf("for i in 1 2 3; do echo line-$i; done; read x < %s; for i in 4 5; do echo line-$i; done", g)
	h := start(t, board.Config{Name: "rpi", HookMiddleware: []actor.ReceiverMiddleware{mw},
		Before: hookCfg(script, jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi")
	h.waitFor("three lines", func(evs []connector.Event) bool {
		return len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)) >= 3
	})
	g.open(t)
	evs := h.waitPhase(job, jobs.PhaseReady)
	if panicked.Load() != 1 {
		t.Fatal("the fault was not injected")
	}
	want := "INFO line-1|INFO line-2|INFO line-3|INFO line-4|INFO line-5"
	if got := strings.Join(hookLines(evs, job, jobs.SourceBeforeLeaseHook), "|"); got != want {
		t.Fatalf("hook lines after the watcher's restart:\n%s\nwant\n%s", got, want)
	}
}

func TestExtendJobRearmsTheLeaseBound(t *testing.T) {
	h := start(t, board.Config{Name: "rpi"})
	job := h.startJob("rpi", func(r *connector.StartJobRequest) { r.Duration = time.Hour })
	h.waitPhase(job, jobs.PhaseReady)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	// An extension to 50ms from now: the lease's own bound fires then, not in an hour.
	if err := h.conn.ExtendJob(ctx, connector.ExtendJobRequest{JobID: job, Remaining: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	evs := h.waitPhase(job, jobs.PhaseDone)
	i := indexOf(evs, func(ev connector.Event) bool { return ev.Transition != nil && ev.Transition.To == jobs.PhaseEnding })
	if !strings.Contains(evs[i].Transition.Message, "lease duration expired") {
		t.Fatalf("lease ended with %q, want its duration expired", evs[i].Transition.Message)
	}
	// A job that is gone is left alone.
	if err := h.conn.ExtendJob(ctx, connector.ExtendJobRequest{JobID: job, Remaining: time.Hour}); err != nil {
		t.Fatalf("ExtendJob of an ended job: %v", err)
	}
}
