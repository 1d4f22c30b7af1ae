package hook_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	hookactor "github.com/boardvisor/boardvisor/actors/hook"
	"github.com/boardvisor/boardvisor/actors/internal/actortest"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/google/uuid"
)

// These tests run one hook watcher under a probe that stands in for its lease: the
// probe records HookExited; the hook's lines go through a real outbox; the run is
// recorded in a MemStore; the hook runs under the real shim. They speak to the watcher
// only through the messages of package actors and look at its Store, not at its
// insides.

type rig struct {
	t     *testing.T
	p     *actortest.Probe
	store *actors.MemStore
	cfg   hookactor.Config
	pid   *actor.PID
}

func newRig(t *testing.T, script string, mw ...actor.ReceiverMiddleware) *rig {
	t.Helper()
	p := actortest.New(t)
	job := uuid.NewString()
	r := &rig{t: t, p: p, store: &actors.MemStore{}}
	r.cfg = hookactor.Config{Kind: jobs.HookBefore, JobID: job, Board: "rpi",
		Spec: jhook.Spec{Name: "beforeLease", Script: script, Timeout: 20 * time.Second, Grace: 200 * time.Millisecond,
			Dir: filepath.Join(t.TempDir(), job, "beforeLease")},
		Outbox: p.Outbox, Store: r.store, Runner: &jhook.Runner{ShimCommand: hooktest.ShimCommand()},
		Logger: p.Logger.Named("hook"), Middleware: mw}
	return r
}

func (r *rig) spawn() {
	r.t.Helper()
	r.pid = r.p.Spawn(hookactor.Props(r.cfg), "hook/beforeLease")
}

// exited waits for the watcher to tell its lease that the hook ended. Before that the
// lease may hear other news of the run (a watcher may say that the shim has exited
// before its last lines are durable), but no other actor's failure and no Terminated.
func (r *rig) exited() *actors.HookExited {
	r.t.Helper()
	m, skipped := actortest.Until[*actors.HookExited](r.p, nil)
	for _, s := range skipped {
		switch v := s.(type) {
		case *actortest.Failed:
			if !v.Who.Equal(r.pid) {
				r.t.Errorf("before HookExited the lease got %s", actortest.Describe([]any{s}))
			}
		case *actor.Terminated:
			r.t.Errorf("before HookExited the lease got %s", actortest.Describe([]any{s}))
		}
	}
	if m.Kind != jobs.HookBefore {
		r.t.Errorf("HookExited for %s, want beforeLease", m.Kind)
	}
	return m
}

// lines waits until the outbox has n lines of the hook, and returns them.
func (r *rig) lines(n int) []connector.HookLine {
	r.t.Helper()
	evs := r.p.WaitEvents(fmt.Sprintf("%d hook lines", n), func(evs []connector.Event) bool {
		return len(actortest.HookLines(evs, r.cfg.JobID, jobs.SourceBeforeLeaseHook)) >= n
	})
	return actortest.HookLines(evs, r.cfg.JobID, jobs.SourceBeforeLeaseHook)
}

func texts(ls []connector.HookLine) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Severity.String()+" "+l.Text)
	}
	return out
}

// run waits until the hook run recorded in the store satisfies ok, and returns it.
func (r *rig) run(what string, ok func(*jobs.HookRun) bool) jobs.HookRun {
	r.t.Helper()
	rec := actortest.WaitRecord(r.t, r.store, r.cfg.JobID, what, func(rec jobs.Record) bool { return rec.Hook != nil && ok(rec.Hook) })
	return *rec.Hook
}

// withRecord gives the store a lease record, as the lease has written before its
// watcher starts (MemStore.Load reports a record only once its lease was saved).
func (r *rig) withRecord() {
	spec := jobs.Spec{JobID: r.cfg.JobID, Board: "rpi", Duration: time.Minute}
	if err := r.store.SaveLease(spec, jobs.State{Phase: jobs.PhaseBeforeLease, Acquired: true, HookRunning: jobs.HookBefore}, nil); err != nil {
		r.t.Fatal(err)
	}
}

// A watcher starts its hook under the shim, records the run (pid, start time), reports
// every line as a hook event of its lease, in order, with its severity and an offset
// that grows, records how far it reported, and then tells its lease the hook's result.
func TestHookWatcherReportsLinesThenTheExit(t *testing.T) {
	r := newRig(t, "echo 'JMP_INFO: Powering on device...'; echo 'JMP_WARN: slow flash'; echo plain; exit 3")
	r.withRecord()
	r.spawn()
	m := r.exited()
	if m.Result.ExitCode != 3 || m.Result.OK() {
		t.Errorf("result %+v, want exit status 3", m.Result)
	}
	ls := r.lines(3)
	want := []string{"INFO Powering on device...", "WARN slow flash", "INFO plain"}
	if got := texts(ls); !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q", got, want)
	}
	for i := 1; i < len(ls); i++ {
		if ls[i].Offset <= ls[i-1].Offset {
			t.Errorf("offsets do not grow: %d then %d", ls[i-1].Offset, ls[i].Offset)
		}
	}
	run := r.run("the run", func(h *jobs.HookRun) bool { return h.Offset == ls[len(ls)-1].Offset })
	if run.Pid == 0 || run.StartTime == 0 || run.Kind != jobs.HookBefore || run.Dir != r.cfg.Spec.Dir {
		t.Errorf("recorded run %+v, want the shim's pid and start time in %s", run, r.cfg.Spec.Dir)
	}
}

// StopHook stops the hook (the timeout ladder runs); the lease hears it ended, stopped.
func TestHookWatcherStopsItsHookWhenTold(t *testing.T) {
	r := newRig(t, "echo started; sleep 30")
	r.withRecord()
	r.spawn()
	r.lines(1)
	r.p.Send(&actors.StopHook{})
	if m := r.exited(); !m.Result.Stopped || m.Result.OK() {
		t.Errorf("result %+v, want a stopped hook", m.Result)
	}
}

// A hook that cannot be started is reported to the lease as a failed run with the
// reason, at once.
func TestHookWatcherReportsAHookThatCannotStart(t *testing.T) {
	r := newRig(t, "true")
	r.cfg.Runner = &jhook.Runner{ShimCommand: []string{filepath.Join(t.TempDir(), "no-such-shim")}}
	r.withRecord()
	r.spawn()
	m := r.exited()
	if m.Result.Err == nil || m.Result.OK() {
		t.Errorf("result %+v, want an error", m.Result)
	}
}

// A watcher that panics is restarted by its lease; the new one adopts the running shim
// from the store and reads on from the recorded offset: the hook runs once, and every
// line is reported once, in order.
func TestHookWatcherRestartReadsOnFromItsOffset(t *testing.T) {
	g := actortest.NewGate(t)
	runs := filepath.Join(t.TempDir(), "runs")
	r := newRig(t, fmt.Sprintf("echo run >> %s; echo one; echo two; read x < %s; echo three", runs, g), actortest.PanicOnBoom())
	r.withRecord()
	r.spawn()
	first := r.lines(2)
	r.run("the offset of line two", func(h *jobs.HookRun) bool { return h.Offset == first[1].Offset })
	r.p.Send(&actortest.Boom{})
	actortest.Until[*actortest.Failed](r.p, func(f *actortest.Failed) bool { return f.Who.Equal(r.pid) })
	g.Open(t)
	if m := r.exited(); !m.Result.OK() {
		t.Errorf("result %+v, want ok", m.Result)
	}
	ls := r.lines(3)
	if got, want := texts(ls), []string{"INFO one", "INFO two", "INFO three"}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q (each once)", got, want)
	}
	if b, _ := os.ReadFile(runs); string(b) != "run\n" {
		t.Errorf("the hook ran %q, want once", b)
	}
}

// A watcher that is stopped (its lease stops as the daemon shuts down) leaves the hook
// running under its shim; a new watcher (the next start) adopts it and reads on.
func TestHookWatcherStoppedLeavesTheHookForTheNext(t *testing.T) {
	g := actortest.NewGate(t)
	r := newRig(t, fmt.Sprintf("echo one; read x < %s; echo two", g))
	r.withRecord()
	r.spawn()
	first := r.lines(1)
	run := r.run("the offset of line one", func(h *jobs.HookRun) bool { return h.Offset == first[0].Offset })
	if err := r.p.Sys.Root.StopFuture(r.pid).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(run.Pid, 0); err != nil {
		t.Fatalf("the shim (pid %d) is gone after its watcher stopped: %v", run.Pid, err)
	}
	if _, skipped := actortest.Until[*actor.Terminated](r.p, nil); len(skipped) > 0 {
		t.Fatalf("a stopped watcher told its lease %s", actortest.Describe(skipped))
	}
	r.p.Flush()
	if rest := r.p.Pending(); len(rest) > 0 {
		t.Fatalf("a stopped watcher told its lease %s", actortest.Describe(rest))
	}
	r.spawn()
	g.Open(t)
	if m := r.exited(); !m.Result.OK() {
		t.Errorf("result %+v, want ok", m.Result)
	}
	if got, want := texts(r.lines(2)), []string{"INFO one", "INFO two"}; !slices.Equal(got, want) {
		t.Errorf("lines %q, want %q (each once)", got, want)
	}
}
