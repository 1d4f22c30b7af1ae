package jobs

import (
	"fmt"
	"strings"
	"time"
)

// summary renders a decision compactly for table tests:
// "Ignored: why" or effects separated by "; ".
func summary(d Decision) string {
	if len(d.Effects) == 0 {
		if d.Ignored != "" {
			return "ignored"
		}
		return "(remembered)"
	}
	parts := make([]string, 0, len(d.Effects))
	for _, e := range d.Effects {
		switch e.Kind {
		case EffReport:
			parts = append(parts, fmt.Sprintf("%s>%s[%s]", e.From, e.To, e.Status))
		case EffRunHook:
			parts = append(parts, "run "+e.Hook.String())
		case EffStopHook:
			parts = append(parts, "stop "+e.Hook.String())
		case EffArmTimer:
			parts = append(parts, "arm "+e.Timer.String())
		case EffCancelTimer:
			parts = append(parts, "cancel "+e.Timer.String())
		case EffAcquire:
			parts = append(parts, "acquire")
		case EffRelease:
			parts = append(parts, "release")
		case EffLog:
			parts = append(parts, "log "+e.Severity.String())
		case EffError:
			parts = append(parts, "error "+e.Err.Kind.String())
		case EffQuarantine:
			parts = append(parts, "quarantine")
		}
	}
	return strings.Join(parts, "; ")
}

// tableSpec is the spec of the table test: both hooks, onFailure endLease.
func tableSpec() Spec {
	return Spec{JobID: "2b1f2f5e-5c1e-4f0e-9a43-0a4c4b9c1d11", Board: "rpi4-01", Duration: time.Hour,
		Before: &HookPolicy{Timeout: 10 * time.Second, OnFailure: PolicyEndLease},
		After:  &HookPolicy{Timeout: 10 * time.Second, OnFailure: PolicyEndLease}}
}

// phaseStates is a representative state for each phase, as a lease there would have it.
var phaseStates = map[Phase]State{
	PhaseCreated:     {Phase: PhaseCreated},
	PhaseStarting:    {Phase: PhaseStarting},
	PhaseBeforeLease: {Phase: PhaseBeforeLease, Acquired: true, HookRunning: HookBefore},
	PhaseReady:       {Phase: PhaseReady, Acquired: true},
	PhaseEnding:      {Phase: PhaseEnding, Acquired: true, EndRequested: true, EndReason: EndClient},
	PhaseAfterLease:  {Phase: PhaseAfterLease, Acquired: true, EndRequested: true, EndReason: EndClient, HookRunning: HookAfter, AfterStarted: true},
	PhaseReleasing:   {Phase: PhaseReleasing, Acquired: true, EndRequested: true, EndReason: EndClient, AfterStarted: true},
	PhaseDone:        {Phase: PhaseDone, Acquired: true, AfterStarted: true},
	PhaseFailed:      {Phase: PhaseFailed, Acquired: true, Failure: "x"},
}

// tableInputs are the inputs of the table test, by short name.
var tableInputs = []struct {
	name string
	in   Input
}{
	{"start", Start()},
	{"acquired", BoardAcquired()},
	{"before-ok", HookExited(HookBefore, true, "")},
	{"before-fail", HookExited(HookBefore, false, "exit status 1")},
	{"after-ok", HookExited(HookAfter, true, "")},
	{"after-fail", HookExited(HookAfter, false, "exit status 1")},
	{"end", EndRequested(EndClient)},
	{"t-lease", TimerFired(TimerLease)},
	{"t-before", TimerFired(TimerBeforeHook)},
	{"t-after", TimerFired(TimerAfterHook)},
	{"t-release", TimerFired(TimerRelease)},
	{"released", Released()},
	{"extend", Extend(time.Minute)},
	{"abort", Abort("boom")},
	{"before-shim-exited", HookShimExited(HookBefore)},
	{"after-shim-exited", HookShimExited(HookAfter)},
}
