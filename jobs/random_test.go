package jobs

import (
	"errors"
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

	// The image stages (a lease with an image).
	fetching, provisioning bool // a fetch / provisioning is in flight (asked for, not answered or stopped)
	imageOK, provisionedOK bool // ImageFetched(ok) / Provisioned(ok) was accepted
	imageFailed            JobErrorKind
	imageReleases          int
	endInProvisioning      bool // an end was accepted while the board was provisioned: beforeLease is skipped
	errors                 []JobErrorKind
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
			if w.imageFailed == 0 && in.Timer == TimerFetch {
				w.imageFailed = KindImageNotFound
			}
			if w.imageFailed == 0 && in.Timer == TimerProvision {
				w.imageFailed = KindInternalError
			}
		case InImageFetched:
			w.fetching = false
			if in.OK {
				w.imageOK = true
			} else if w.imageFailed == 0 {
				w.imageFailed = in.ErrKind
			}
		case InProvisioned:
			if before.Stage == StageProvisioning {
				w.provisioning = false
				if in.OK {
					w.provisionedOK = true
				} else if w.imageFailed == 0 {
					w.imageFailed = in.ErrKind
				}
			}
		}
	}
	stopped := false
	if d.Ignored == "" && before.Stage == StageProvisioning && (in.Kind == InEndRequested || in.Kind == InTimerFired && in.Timer == TimerLease) {
		w.endInProvisioning = true
	}
	cur, curStage := before.Phase, before.Stage
	for _, e := range d.Effects {
		switch e.Kind {
		case EffReport:
			// Rule 1: every reported change is in the table and continues from the last.
			// A stage change within STARTING is checked against the stage order.
			stage := e.From == PhaseStarting && e.To == PhaseStarting
			if e.From != cur || !stage && !CanTransition(e.From, e.To) || stage && !CanStage(curStage, e.Stage) {
				fail("bad transition %s -> %s{%s} (current %s{%s})", e.From, e.To, e.Stage, cur, curStage)
			}
			cur, curStage = e.To, e.Stage
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
			// A lease with an image runs its hooks only on a provisioned board.
			if l.Spec.Image != nil && !w.provisionedOK {
				fail("%s hook started before the board was provisioned with the image", e.Hook)
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
			// The board is asked for only once the image is in the store.
			if l.Spec.Image != nil && !w.imageOK {
				fail("board asked for before the image was fetched")
			}
			w.acquire = true
		case EffFetchImage:
			if w.fetching || w.imageOK {
				fail("image fetched twice")
			}
			w.fetching = true
		case EffProvision:
			if !w.acquired || !w.imageOK || w.provisioning {
				fail("provisioning without the board (%v) or the image (%v), or twice", w.acquired, w.imageOK)
			}
			w.provisioning = true
		case EffStopImage:
			if !w.fetching && !w.provisioning {
				fail("image work stopped when none was in flight")
			}
			w.fetching, w.provisioning, stopped = false, false, true
		case EffReleaseImage:
			w.imageReleases++
		case EffError:
			w.errors = append(w.errors, e.Err.Kind)
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
	// A stop during a fetch interrupts it at once: the lease never waits for a fetch
	// once an end was accepted.
	if d.Ignored == "" && in.Kind == InEndRequested && before.Stage == StageFetchingImage && !stopped {
		fail("end accepted during a fetch without stopping it")
	}
	if w.fetching && (l.State.EndRequested || l.Phase() != PhaseStarting) {
		fail("a fetch is still in flight in phase %s (end requested: %v)", l.Phase(), l.State.EndRequested)
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
		sp := spec(before, after)
		if rng.Intn(2) == 0 {
			sp.Image = &Image{Digest: "sha256:" + strings.Repeat("0f", 32), Locations: []ImageLocation{{Registry: "r:5000", Repository: "x"}}}
		}
		l := NewLease(sp)
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
			case w.fetching && rng.Intn(4) == 0:
				in = ImageProgress(rng.Int63n(100), 100)
			case w.fetching && rng.Intn(2) == 0:
				in = ImageFetched(randomImageError(rng))
			case w.provisioning && rng.Intn(2) == 0:
				in = Provisioned(randomImageError(rng))
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
	if l.Spec.Image != nil && w.imageReleases == 0 {
		fail("a lease with an image ended without releasing it")
	}
	if w.aborted {
		if l.Phase() != PhaseFailed {
			fail("aborted lease ended %s", l.Phase())
		}
		return
	}
	// An image that could not be fetched or provisioned fails the lease with its kind,
	// and no hook runs.
	if w.imageFailed != 0 {
		if l.Phase() != PhaseFailed || w.beforeRuns+w.afterRuns > 0 {
			fail("image failure %s: lease ended %s, hooks ran before=%d after=%d", w.imageFailed, l.Phase(), w.beforeRuns, w.afterRuns)
		}
		if len(w.errors) == 0 || w.errors[0] != imageErrorKind(w.imageFailed) {
			fail("image failure %s reported as %v", w.imageFailed, w.errors)
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
	if before != nil && w.acquired && !w.endInProvisioning && w.beforeRuns != 1 {
		fail("beforeLease ran %d times on an acquired board", w.beforeRuns)
	}
	// Rule 6: the outcome follows the policies.
	failed := l.State.BeforeFailed || l.State.AfterFailed || l.State.ImageFailed
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

func randomImageError(rng *rand.Rand) error {
	switch rng.Intn(6) {
	case 0:
		return NewJobError(KindImageNotFound, "no location has it")
	case 1:
		return NewJobError(KindImageInvalid, "digest mismatch")
	case 2:
		return NewJobError(KindImageNotCompatible, "built for arm64")
	case 3:
		return errors.New("disk full")
	}
	return nil
}

func randomNoise(rng *rand.Rand) Input {
	switch rng.Intn(13) {
	case 10:
		return ImageFetched(randomImageError(rng))
	case 11:
		return Provisioned(randomImageError(rng))
	case 12:
		return ImageProgress(1, 2)
	case 9:
		return HookShimExited(HookKind(1 + rng.Intn(2)))
	case 0:
		return Start()
	case 1:
		return BoardAcquired()
	case 2:
		return HookExited(HookKind(1+rng.Intn(2)), rng.Intn(2) == 0, "stale")
	case 3:
		return TimerFired(Timer(1 + rng.Intn(6)))
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
	for _, t := range []Timer{TimerLease, TimerBeforeHook, TimerAfterHook, TimerRelease, TimerFetch, TimerProvision} {
		if armed[t] {
			ts = append(ts, t)
		}
	}
	return ts[rng.Intn(len(ts))]
}
