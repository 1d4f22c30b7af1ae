package lease_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/internal/actortest"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/google/uuid"
)

// These tests run one lease actor under a probe that stands in for its board: the probe
// records what the lease asks of its board (Acquire, Release, LeaseChanged,
// Quarantine) and the test answers as a board would (Acquired, Released). Its events
// go through a real outbox; its record is in a MemStore; its hooks, when it has any,
// run under the real shim. They speak to the lease only through the messages of
// package actors and look at its Store, not at its insides.

type rig struct {
	t     *testing.T
	p     *actortest.Probe
	store *actors.MemStore
	job   string
	pid   *actor.PID
	cfg   lease.Config
}

// hookCfg is a hook running script with onFailure policy.
func hookCfg(script string, policy jobs.Policy) *lease.HookConfig {
	return &lease.HookConfig{Spec: jhook.Spec{Script: script, Grace: 200 * time.Millisecond},
		Policy: jobs.HookPolicy{Timeout: 20 * time.Second, OnFailure: policy}}
}

// newRig starts a lease of d with the given hooks (nil: none) and, with mw, fault
// injection around its receive function.
func newRig(t *testing.T, d time.Duration, before, after *lease.HookConfig, keepEnded bool, mw ...actor.ReceiverMiddleware) *rig {
	t.Helper()
	p := actortest.New(t)
	r := &rig{t: t, p: p, store: &actors.MemStore{}, job: uuid.NewString()}
	spec := jobs.Spec{JobID: r.job, Board: "rpi", Client: "alice", Duration: d}
	if before != nil {
		spec.Before = &before.Policy
	}
	if after != nil {
		spec.After = &after.Policy
	}
	cfg := lease.Config{Spec: spec, Labels: map[string]string{"device": "rpi4"}, Before: before, After: after,
		Outbox: p.Outbox, Store: r.store, Runner: &jhook.Runner{ShimCommand: hooktest.ShimCommand()},
		SpoolDir: filepath.Join(t.TempDir(), "hooks"), Logger: p.Logger.Named("lease"), KeepEnded: keepEnded, Middleware: mw}
	r.cfg = cfg
	r.pid = p.Spawn(lease.Props(cfg), "lease/"+r.job)
	return r
}

// phase returns the phase the lease's record holds ("" for no record).
func (r *rig) phase() string {
	rec, ok, err := r.store.Load(r.job)
	if err != nil {
		r.t.Fatal(err)
	}
	if !ok {
		return ""
	}
	return rec.State.Phase.String()
}

// acquire answers the lease's Acquire as a free board does.
func (r *rig) acquire() {
	r.t.Helper()
	a, skipped := actortest.Until[*actors.Acquire](r.p, nil)
	if a.JobID != r.job {
		r.t.Fatalf("Acquire for %s, want %s", a.JobID, r.job)
	}
	// The lease journals before it acts: its record says STARTING when its board hears
	// the Acquire.
	if ph := r.phase(); ph != "STARTING" {
		r.t.Errorf("the board got Acquire while the record says %q, want STARTING", ph)
	}
	r.checkSkipped(skipped)
	r.p.Send(&actors.Acquired{})
}

// release answers the lease's Release as a board does, and returns what the board got
// before it.
func (r *rig) release() []any {
	r.t.Helper()
	rel, skipped := actortest.Until[*actors.Release](r.p, nil)
	if rel.JobID != r.job {
		r.t.Fatalf("Release for %s, want %s", rel.JobID, r.job)
	}
	if ph := r.phase(); ph != "RELEASING" {
		r.t.Errorf("the board got Release while the record says %q, want RELEASING", ph)
	}
	r.checkSkipped(skipped)
	r.p.Send(&actors.Released{})
	return skipped
}

// checkSkipped fails on anything but LeaseChanged among messages to the board.
func (r *rig) checkSkipped(ms []any) {
	r.t.Helper()
	for _, m := range ms {
		if _, ok := m.(*actors.LeaseChanged); !ok {
			r.t.Errorf("the board got %s", actortest.Describe([]any{m}))
		}
	}
}

// phasesTold lists the phases of the LeaseChanged messages among ms.
func phasesTold(ms []any) []string {
	var out []string
	for _, m := range ms {
		if lc, ok := m.(*actors.LeaseChanged); ok {
			out = append(out, lc.Phase.String())
		}
	}
	return out
}

// ended waits until the lease actor is gone, and returns what the board got before
// (LeaseChanged only: anything else fails the test).
// (Terminated is a system message: it overtakes the lease's last LeaseChanged, which is
// in the board's mailbox by then; Flush takes it in.)
func (r *rig) ended() []any {
	r.t.Helper()
	m, skipped := actortest.Until[*actor.Terminated](r.p, nil)
	if !m.Who.Equal(r.pid) {
		r.t.Fatalf("Terminated of %s, want the lease", m.Who.Id)
	}
	r.p.Flush()
	for _, m := range r.p.Pending() {
		if _, ok := m.(*actors.LeaseChanged); !ok {
			break
		}
		skipped = append(skipped, r.p.Next())
	}
	r.checkSkipped(skipped)
	return skipped
}

// waitRecord waits until the lease's record satisfies ok.
func (r *rig) waitRecord(what string, ok func(jobs.Record) bool) jobs.Record {
	r.t.Helper()
	return actortest.WaitRecord(r.t, r.store, r.job, what, ok)
}

var fullLease = []string{"CREATED->STARTING", "STARTING->BEFORE_LEASE", "BEFORE_LEASE->READY", "READY->ENDING",
	"ENDING->AFTER_LEASE", "AFTER_LEASE->RELEASING", "RELEASING->DONE"}

// A lease asks its board for the board, tells it of every phase before the world hears
// of it, gives it back, and stops once DONE; its transitions are numbered from 1 and
// its record goes with it.
func TestLeaseTalksToItsBoard(t *testing.T) {
	r := newRig(t, time.Minute, nil, nil, false)
	r.acquire()
	lc, skipped := actortest.Until[*actors.LeaseChanged](r.p, func(m *actors.LeaseChanged) bool { return m.Phase == jobs.PhaseReady })
	if lc.Status != jobs.StatusLeaseReady || lc.EndRequested {
		t.Errorf("READY told as %s end=%v, want LEASE_READY, no end requested", lc.Status, lc.EndRequested)
	}
	if got := phasesTold(skipped); !slices.Equal(got, []string{"BEFORE_LEASE"}) {
		t.Errorf("the board was told %v before READY, want [BEFORE_LEASE]", got)
	}
	if ph := r.phase(); ph != "READY" {
		t.Errorf("record says %q, want READY", ph)
	}
	r.p.Send(&actors.EndLease{Reason: jobs.EndClient})
	told := r.release()
	if got := phasesTold(told); !slices.Equal(got, []string{"ENDING", "AFTER_LEASE", "RELEASING"}) {
		t.Errorf("the board was told %v while ending, want ENDING, AFTER_LEASE, RELEASING", got)
	}
	told = r.ended()
	if got := phasesTold(told); !slices.Equal(got, []string{"DONE"}) {
		t.Errorf("the board was told %v at the end, want [DONE]", got)
	}
	if ph := r.phase(); ph != "" {
		t.Errorf("an ended lease left its record (phase %s)", ph)
	}
	evs := r.p.WaitTransition(r.job, jobs.PhaseDone)
	if got := actortest.Transitions(evs, r.job); !slices.Equal(got, fullLease) {
		t.Errorf("transitions %v, want %v", got, fullLease)
	}
	step := 0
	for _, ev := range evs {
		if ev.Transition != nil {
			step++
			if ev.Transition.Step != step {
				t.Errorf("transition %s has step %d, want %d", ev, ev.Transition.Step, step)
			}
		}
	}
}

// With KeepEnded (a durable outbox) the ended lease's record stays, DONE, for the
// outbox to delete once its last transitions are on disk.
func TestLeaseKeepsItsEndedRecordWhenTold(t *testing.T) {
	r := newRig(t, time.Minute, nil, nil, true)
	r.acquire()
	r.p.WaitTransition(r.job, jobs.PhaseReady)
	r.p.Send(&actors.EndLease{Reason: jobs.EndCoordinator})
	r.release()
	r.ended()
	rec, ok, _ := r.store.Load(r.job)
	if !ok || rec.State.Phase != jobs.PhaseDone || len(rec.Reported) != len(fullLease) {
		t.Fatalf("record after the end: %v %s with %d transitions, want DONE with %d", ok, rec.State.Phase, len(rec.Reported), len(fullLease))
	}
}

// However many end requests arrive, a lease ends once: one afterLease run, one Release,
// each transition once (DESIGN rules 3 and 7).
func TestLeaseEndsOnceWhateverEndsIt(t *testing.T) {
	rec := filepath.Join(t.TempDir(), "after-runs")
	r := newRig(t, time.Minute, nil, hookCfg("echo ran >> "+rec, jobs.PolicyEndLease), false)
	r.acquire()
	r.p.WaitTransition(r.job, jobs.PhaseReady)
	for _, why := range []jobs.EndReason{jobs.EndClient, jobs.EndCoordinator, jobs.EndExpired, jobs.EndClient} {
		r.p.Send(&actors.EndLease{Reason: why})
	}
	r.release()
	r.ended()
	r.p.Flush()
	if rest := r.p.Pending(); len(rest) > 0 {
		t.Errorf("after the lease ended its board got %s", actortest.Describe(rest))
	}
	evs := r.p.WaitTransition(r.job, jobs.PhaseDone)
	if got := actortest.Transitions(evs, r.job); !slices.Equal(got, fullLease) {
		t.Errorf("transitions %v, want %v", got, fullLease)
	}
	if b, _ := os.ReadFile(rec); string(b) != "ran\n" {
		t.Errorf("the afterLease hook ran %d times, want once", strings.Count(string(b), "ran"))
	}
}

// A lease nobody ends ends when its duration is up (DESIGN rule 5), and says why.
func TestLeaseEndsByItselfWhenItsTimeIsUp(t *testing.T) {
	r := newRig(t, 300*time.Millisecond, nil, nil, false)
	r.acquire()
	r.release()
	r.ended()
	evs := r.p.WaitTransition(r.job, jobs.PhaseDone)
	i := actortest.Index(evs, func(ev connector.Event) bool {
		return ev.Transition != nil && ev.Transition.To == jobs.PhaseEnding
	})
	if i < 0 || !strings.Contains(evs[i].Transition.Message, jobs.EndExpired.String()) {
		t.Errorf("ENDING transition does not say the lease expired:%s", actortest.EventList(evs))
	}
}

// An end requested while the beforeLease hook runs does not cut the hook short; when it
// has finished the lease goes to ENDING, never READY, and its afterLease hook runs
// (DESIGN rule 2). The hook's lines reach the outbox as they are printed.
func TestLeaseEndDuringBeforeLeaseWaitsForTheHook(t *testing.T) {
	g := actortest.NewGate(t)
	before := hookCfg(fmt.Sprintf("echo 'JMP_INFO: flashing'; read x < %s; echo flashed", g), jobs.PolicyEndLease)
	r := newRig(t, time.Minute, before, hookCfg("echo 'saving logs'", jobs.PolicyEndLease), false)
	r.acquire()
	r.p.WaitEvents("the beforeLease hook's first line", func(evs []connector.Event) bool {
		return len(actortest.HookLines(evs, r.job, jobs.SourceBeforeLeaseHook)) == 1
	})
	r.p.Send(&actors.EndLease{Reason: jobs.EndCoordinator})
	// The end is journalled, and the hook goes on: the lease is still in BEFORE_LEASE.
	rec := r.waitRecord("the end request", func(rec jobs.Record) bool { return rec.State.EndRequested })
	if rec.State.Phase != jobs.PhaseBeforeLease || rec.State.HookRunning != jobs.HookBefore {
		t.Fatalf("the end request took the lease to %s (hook %s), want it to stay in BEFORE_LEASE with its hook running", rec.State.Phase, rec.State.HookRunning)
	}
	g.Open(t)
	told := r.release()
	if slices.Contains(phasesTold(told), "READY") {
		t.Errorf("the board was told READY after the end was requested: %v", phasesTold(told))
	}
	r.ended()
	evs := r.p.WaitTransition(r.job, jobs.PhaseDone)
	want := []string{"CREATED->STARTING", "STARTING->BEFORE_LEASE", "BEFORE_LEASE->ENDING", "ENDING->AFTER_LEASE",
		"AFTER_LEASE->RELEASING", "RELEASING->DONE"}
	if got := actortest.Transitions(evs, r.job); !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
	var texts []string
	for _, src := range []jobs.LogSource{jobs.SourceBeforeLeaseHook, jobs.SourceAfterLeaseHook} {
		for _, l := range actortest.HookLines(evs, r.job, src) {
			texts = append(texts, l.Severity.String()+" "+l.Text)
		}
	}
	if want := []string{"INFO flashing", "INFO flashed", "INFO saving logs"}; !slices.Equal(texts, want) {
		t.Errorf("hook lines %q, want %q", texts, want)
	}
}

// A beforeLease hook that fails under onFailure: exit makes the lease tell its board to
// quarantine itself; under exit and endLease alike the lease shows
// BEFORE_LEASE_HOOK_FAILED, is never READY, skips the afterLease hook and ends FAILED.
func TestLeaseHookFailurePolicies(t *testing.T) {
	for _, c := range []struct {
		policy     jobs.Policy
		quarantine bool
	}{{jobs.PolicyExit, true}, {jobs.PolicyEndLease, false}} {
		t.Run(c.policy.String(), func(t *testing.T) {
			rec := filepath.Join(t.TempDir(), "after-runs")
			r := newRig(t, time.Minute, hookCfg("echo 'JMP_ERROR: no image'; exit 3", c.policy),
				hookCfg("echo ran >> "+rec, jobs.PolicyEndLease), false)
			r.acquire()
			_, told := actortest.Until[*actors.Release](r.p, nil)
			r.p.Send(&actors.Released{})
			var quarantined []string
			var statuses []string
			for _, m := range told {
				switch v := m.(type) {
				case *actors.Quarantine:
					quarantined = append(quarantined, v.Reason)
				case *actors.LeaseChanged:
					statuses = append(statuses, v.Status.String())
				}
			}
			if got := len(quarantined) > 0; got != c.quarantine {
				t.Errorf("quarantine %v (%q), want %v", got, quarantined, c.quarantine)
			}
			if !slices.Contains(statuses, jobs.StatusBeforeLeaseHookFailed.String()) {
				t.Errorf("the board was never told BEFORE_LEASE_HOOK_FAILED: %v", statuses)
			}
			r.ended()
			evs := r.p.WaitEvents("the lease's end", func(evs []connector.Event) bool {
				return actortest.Index(evs, func(ev connector.Event) bool {
					return ev.JobID == r.job && ev.Transition != nil && ev.Transition.To.Terminal()
				}) >= 0
			})
			want := []string{"CREATED->STARTING", "STARTING->BEFORE_LEASE", "BEFORE_LEASE->ENDING", "ENDING->AFTER_LEASE",
				"AFTER_LEASE->RELEASING", "RELEASING->FAILED"}
			if got := actortest.Transitions(evs, r.job); !slices.Equal(got, want) {
				t.Errorf("transitions %v, want %v", got, want)
			}
			if _, err := os.Stat(rec); err == nil {
				t.Error("the afterLease hook ran after a failed beforeLease hook")
			}
		})
	}
}

// A lease actor that panics is restarted by its board and resumes from its record in
// the same phase: it asks for nothing again, reports nothing twice, and ends as usual.
func TestLeaseResumesItsPhaseAfterAPanic(t *testing.T) {
	r := newRig(t, time.Minute, nil, nil, false, actortest.PanicOnBoom())
	r.acquire()
	r.p.WaitTransition(r.job, jobs.PhaseReady)
	r.p.Send(&actortest.Boom{})
	if f, skipped := actortest.Until[*actortest.Failed](r.p, nil); !f.Who.Equal(r.pid) {
		t.Fatalf("failure of %s, want the lease", f.Who.Id)
	} else {
		r.checkSkipped(skipped)
	}
	if ph := r.phase(); ph != "READY" {
		t.Fatalf("record after the panic says %q, want READY", ph)
	}
	r.p.Send(&actors.EndLease{Reason: jobs.EndClient})
	told := r.release()
	for _, m := range told {
		if _, ok := m.(*actors.Acquire); ok {
			t.Error("the restarted lease asked for its board again")
		}
	}
	r.ended()
	evs := r.p.WaitTransition(r.job, jobs.PhaseDone)
	if got := actortest.Transitions(evs, r.job); !slices.Equal(got, fullLease) {
		t.Errorf("transitions %v, want %v (each once)", got, fullLease)
	}
}

// A lease actor stopped while its hook runs (the daemon shutting down: its board stops
// it) leaves the hook running and its record as it was, BEFORE_LEASE with the hook's
// shim, so that the next start adopts the hook: the lease then goes on to READY with
// every hook line once.
func TestLeaseStoppedMidHookLeavesItForTheNextStart(t *testing.T) {
	g := actortest.NewGate(t)
	r := newRig(t, time.Minute, hookCfg(fmt.Sprintf("echo one; read x < %s; echo two", g), jobs.PolicyEndLease), nil, false)
	r.acquire()
	r.p.WaitEvents("the hook's first line", func(evs []connector.Event) bool {
		return len(actortest.HookLines(evs, r.job, jobs.SourceBeforeLeaseHook)) == 1
	})
	rec := r.waitRecord("the hook's shim", func(rec jobs.Record) bool { return rec.Hook != nil && rec.Hook.Pid != 0 })
	shim := rec.Hook.Pid
	r.p.Sys.Root.Stop(r.pid)
	// The lease stops (Terminated), or fails on its way out (the probe, as its board,
	// records the failure).
	var failure any
	for {
		m := r.p.Next()
		if m, ok := m.(*actor.Terminated); ok && m.Who.Equal(r.pid) {
			break
		}
		if m, ok := m.(*actortest.Failed); ok && m.Who.Equal(r.pid) {
			failure = m.Reason
			break
		}
	}
	if err := syscall.Kill(shim, 0); err != nil {
		t.Fatalf("the hook's shim (pid %d) is gone after its lease actor stopped: %v", shim, err)
	}
	rec, _, _ = r.store.Load(r.job)
	if failure != nil || rec.State.Phase != jobs.PhaseBeforeLease || rec.State.HookRunning != jobs.HookBefore {
		msg := fmt.Sprintf("stopping the lease actor mid-hook made it fail (%v) and rewrote its record to %s (hook running: %s): "+
			"the lease takes its watcher's Terminated, which comes while it stops, for a failed hook, so that after a "+
			"graceful restart the lease ends FAILED instead of adopting its hook", failure, rec.State.Phase, rec.State.HookRunning)
		g.Open(t)
		t.Fatal(msg)
	}
	// The next start: a new lease actor from the same config resumes from the record.
	r.pid = r.p.Spawn(lease.Props(r.cfg), "lease/"+r.job)
	g.Open(t)
	evs := r.p.WaitTransition(r.job, jobs.PhaseReady)
	var texts []string
	for _, l := range actortest.HookLines(evs, r.job, jobs.SourceBeforeLeaseHook) {
		texts = append(texts, l.Text)
	}
	if !slices.Equal(texts, []string{"one", "two"}) {
		t.Errorf("hook lines %q, want one, two", texts)
	}
	want := []string{"CREATED->STARTING", "STARTING->BEFORE_LEASE", "BEFORE_LEASE->READY"}
	if got := actortest.Transitions(evs, r.job); !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
}

// A lease actor that panics while its hook runs is restarted and re-adopts the hook
// through a new watcher: the hook is not run again, its lines are reported once, and
// the lease goes on to READY.
func TestLeaseResumesItsHookAfterAPanic(t *testing.T) {
	g := actortest.NewGate(t)
	runs := filepath.Join(t.TempDir(), "runs")
	r := newRig(t, time.Minute, hookCfg(fmt.Sprintf("echo run >> %s; echo one; read x < %s; echo two", runs, g), jobs.PolicyEndLease), nil, false, actortest.PanicOnBoom())
	r.acquire()
	r.p.WaitEvents("the hook's first line", func(evs []connector.Event) bool {
		return len(actortest.HookLines(evs, r.job, jobs.SourceBeforeLeaseHook)) == 1
	})
	r.waitRecord("the hook's shim", func(rec jobs.Record) bool { return rec.Hook != nil && rec.Hook.Pid != 0 })
	r.p.Send(&actortest.Boom{})
	actortest.Until[*actortest.Failed](r.p, func(f *actortest.Failed) bool { return f.Who.Equal(r.pid) })
	g.Open(t)
	evs := r.p.WaitEvents("the lease past its beforeLease hook", func(evs []connector.Event) bool {
		return actortest.Index(evs, func(ev connector.Event) bool {
			return ev.JobID == r.job && ev.Transition != nil && ev.Transition.From == jobs.PhaseBeforeLease
		}) >= 0
	})
	got := actortest.Transitions(evs, r.job)
	if !slices.Contains(got, "BEFORE_LEASE->READY") {
		msg := fmt.Sprintf("after a panic mid-hook the lease went %v, not to READY: the old instance takes its "+
			"watcher's Terminated, which comes while it restarts, for a failed hook", got)
		t.Fatal(msg)
	}
	var texts []string
	for _, l := range actortest.HookLines(evs, r.job, jobs.SourceBeforeLeaseHook) {
		texts = append(texts, l.Text)
	}
	if !slices.Equal(texts, []string{"one", "two"}) {
		t.Errorf("hook lines %q, want one, two (each once)", texts)
	}
	if b, _ := os.ReadFile(runs); string(b) != "run\n" {
		t.Errorf("the hook ran %d times, want once", strings.Count(string(b), "run"))
	}
}
