package jobs

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"
)

// world is the randomized test's model of everything outside the lease: what the lease
// asked for (a hook run, the board, a release, timers) and what was sent to it.
type world struct {
	hook     HookKind
	acquire  bool
	release  bool
	armed    map[Timer]bool
	endSent  bool // an end request or lease expiry was fed while the lease was live
	acquired bool // BoardAcquired was accepted

	beforeRuns, afterRuns int
	beforeFailedHard      bool // beforeLease failed under endLease or exit
	aborted               bool
	quarantines           int
	lastStatus            ExporterStatus
	log                   []string
}

func (w *world) apply(t *testing.T, l *Lease, in Input, seed int64) Decision {
	t.Helper()
	before := l.State
	if in.Kind == InEndRequested || (in.Kind == InTimerFired && in.Timer == TimerLease && w.armed[TimerLease]) {
		if !before.Phase.Terminal() && before.Phase != PhaseCreated || in.Kind == InEndRequested {
			w.endSent = true
		}
	}
	d, err := l.Step(in)
	w.log = append(w.log, fmt.Sprintf("%-9s %-40s -> %s", before.Phase, in, summary(d)))
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: "+format+"\n%s", append([]any{seed}, append(args, strings.Join(w.log, "\n"))...)...)
	}
	if err != nil {
		fail("step error: %v", err)
	}
	// Rule 7: a finished lease ignores everything.
	if before.Phase.Terminal() && (len(d.Effects) > 0 || d.Ignored == "") {
		fail("terminal lease acted on %s", in)
	}
	if d.Ignored != "" && len(d.Effects) > 0 {
		fail("ignored input with effects")
	}
	// What the lease accepted changes the world before its effects are checked.
	if d.Ignored == "" {
		switch in.Kind {
		case InBoardAcquired:
			w.acquired, w.acquire = true, false
		case InReleased:
			w.release = false
		case InHookExited:
			w.hook = HookNone
			if !in.OK && in.Hook == HookBefore && l.Spec.Before.OnFailure != PolicyWarn {
				w.beforeFailedHard = true
			}
		case InTimerFired:
			delete(w.armed, in.Timer)
			if in.Timer == TimerBeforeHook && !before.HookDraining && l.Spec.Before.OnFailure != PolicyWarn {
				w.beforeFailedHard = true
			}
		}
	}
	cur := before.Phase
	for _, e := range d.Effects {
		switch e.Kind {
		case EffReport:
			// Rule 1: every reported change is in the table and continues from the last.
			if e.From != cur || !CanTransition(e.From, e.To) {
				fail("bad transition %s -> %s (current %s)", e.From, e.To, cur)
			}
			cur = e.To
			// Rule 2: no READY after an end was requested.
			if e.To == PhaseReady && w.endSent {
				fail("READY reported after an end was requested")
			}
			if (e.Status == StatusLeaseReady) != (e.To == PhaseReady) {
				fail("status %s with phase %s", e.Status, e.To)
			}
			if e.To == PhaseReady && w.beforeFailedHard {
				fail("READY after a failed beforeLease")
			}
			w.lastStatus = e.Status
		case EffRunHook:
			if w.hook != HookNone {
				fail("hook %s started while %s runs", e.Hook, w.hook)
			}
			w.hook = e.Hook
			if e.Hook == HookBefore {
				w.beforeRuns++
				// Rule 4 (the lease's part): the beforeLease hook runs only on an acquired board.
				if !w.acquired {
					fail("beforeLease hook started before the board was acquired")
				}
			} else {
				w.afterRuns++
				if w.beforeFailedHard {
					fail("afterLease ran after beforeLease failed the lease")
				}
			}
		case EffStopHook:
			w.hook = HookNone
		case EffAcquire:
			w.acquire = true
		case EffRelease:
			w.release, w.acquire = true, false
		case EffArmTimer:
			w.armed[e.Timer] = true
		case EffCancelTimer:
			delete(w.armed, e.Timer)
		case EffQuarantine:
			w.quarantines++
		}
	}
	if cur != l.Phase() {
		fail("reported phase %s but lease is in %s", cur, l.Phase())
	}
	if l.Phase() < before.Phase {
		fail("phase went backwards %s -> %s", before.Phase, l.Phase())
	}
	// Rule 3: afterLease at most once, beforeLease at most once.
	if w.afterRuns > 1 || w.beforeRuns > 1 {
		fail("hooks ran before=%d after=%d", w.beforeRuns, w.afterRuns)
	}
	// Rule 5: a live lease past CREATED always has a timer bounding its wait.
	if p := l.Phase(); !p.Terminal() && p != PhaseCreated && len(w.armed) == 0 {
		fail("phase %s with no timer armed", p)
	}
	return d
}

// TestRandomSequences drives thousands of random event sequences, in which the world
// answers the lease's requests in random order and injects duplicate, late and stale
// inputs, and checks the rules of DESIGN.md §4 after every step.
func TestRandomSequences(t *testing.T) {
	n := 5000
	if testing.Short() {
		n = 500
	}
	policies := []Policy{PolicyWarn, PolicyEndLease, PolicyExit}
	for i := 0; i < n; i++ {
		seed := int64(i)
		rng := rand.New(rand.NewSource(seed))
		var before, after *HookPolicy
		if rng.Intn(4) > 0 {
			before = &HookPolicy{Timeout: time.Second, OnFailure: policies[rng.Intn(3)]}
		}
		if rng.Intn(4) > 0 {
			after = &HookPolicy{Timeout: time.Second, OnFailure: policies[rng.Intn(3)]}
		}
		l := NewLease(spec(before, after))
		w := &world{armed: map[Timer]bool{}}
		if rng.Intn(10) == 0 {
			w.apply(t, l, EndRequested(EndCoordinator), seed)
		}
		w.apply(t, l, Start(), seed)
		steps := 0
		for !l.Phase().Terminal() {
			steps++
			if steps > 200 {
				t.Fatalf("seed %d: lease not finished after 200 steps\n%s", seed, strings.Join(w.log, "\n"))
			}
			var in Input
			noise := rng.Intn(100) < 30
			switch {
			case noise:
				in = randomNoise(rng)
			case w.hook != HookNone && rng.Intn(5) == 0:
				in = HookShimExited(w.hook)
			case w.hook != HookNone && rng.Intn(3) > 0:
				in = HookExited(w.hook, rng.Intn(3) > 0, "exit status 1")
			case w.acquire && rng.Intn(2) == 0:
				in = BoardAcquired()
			case w.release && rng.Intn(2) == 0:
				in = Released()
			case len(w.armed) > 0 && rng.Intn(4) == 0:
				in = TimerFired(pickTimer(rng, w.armed))
			default:
				in = EndRequested(EndReason(1 + rng.Intn(4)))
			}
			if in.Kind == InAbort {
				w.aborted = true
			}
			w.apply(t, l, in, seed)
		}
		// After the end: every further input is ignored (rule 7).
		for j := 0; j < 5; j++ {
			w.apply(t, l, randomNoise(rng), seed)
		}
		checkOutcome(t, seed, l, w, before, after)
	}
}

func checkOutcome(t *testing.T, seed int64, l *Lease, w *world, before, after *HookPolicy) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d: "+format+"\n%s", append([]any{seed}, append(args, strings.Join(w.log, "\n"))...)...)
	}
	if w.aborted {
		if l.Phase() != PhaseFailed {
			fail("aborted lease ended %s", l.Phase())
		}
		return
	}
	// Rule 3: an acquired board whose beforeLease did not fail the lease gets exactly one
	// afterLease run.
	wantAfter := 0
	if w.acquired && !l.State.BeforeFailed && after != nil {
		wantAfter = 1
	}
	if w.afterRuns != wantAfter {
		fail("afterLease ran %d times, want %d", w.afterRuns, wantAfter)
	}
	if before != nil && w.acquired && w.beforeRuns != 1 {
		fail("beforeLease ran %d times on an acquired board", w.beforeRuns)
	}
	// Rule 6: the outcome follows the policies.
	failed := l.State.BeforeFailed || l.State.AfterFailed
	if failed != (l.Phase() == PhaseFailed) && !strings.Contains(l.State.Failure, "release") {
		fail("phase %s with hook failure %v", l.Phase(), failed)
	}
	if l.State.Quarantined != (w.quarantines == 1) || w.quarantines > 1 {
		fail("quarantined %v, quarantine effects %d", l.State.Quarantined, w.quarantines)
	}
	if l.State.Quarantined && w.lastStatus != StatusOffline {
		fail("quarantined board ended %s, want OFFLINE", w.lastStatus)
	}
	if !l.State.Quarantined && w.lastStatus != StatusAvailable {
		fail("board ended %s, want AVAILABLE", w.lastStatus)
	}
}

func randomNoise(rng *rand.Rand) Input {
	switch rng.Intn(10) {
	case 9:
		return HookShimExited(HookKind(1 + rng.Intn(2)))
	case 0:
		return Start()
	case 1:
		return BoardAcquired()
	case 2:
		return HookExited(HookKind(1+rng.Intn(2)), rng.Intn(2) == 0, "stale")
	case 3:
		return TimerFired(Timer(1 + rng.Intn(4)))
	case 4:
		return Released()
	case 5:
		return Extend(time.Duration(rng.Intn(3)-1) * time.Minute)
	case 6:
		if rng.Intn(20) == 0 {
			return Abort("injected fault")
		}
		fallthrough
	default:
		return EndRequested(EndReason(1 + rng.Intn(4)))
	}
}

func pickTimer(rng *rand.Rand, armed map[Timer]bool) Timer {
	var ts []Timer
	for _, t := range []Timer{TimerLease, TimerBeforeHook, TimerAfterHook, TimerRelease} {
		if armed[t] {
			ts = append(ts, t)
		}
	}
	return ts[rng.Intn(len(ts))]
}
