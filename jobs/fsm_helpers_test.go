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
			if e.Stage != StageNone {
				parts = append(parts, fmt.Sprintf("%s>%s{%s}[%s]", e.From, e.To, e.Stage, e.Status))
				continue
			}
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
		case EffFetchImage:
			parts = append(parts, "fetch")
		case EffProvision:
			parts = append(parts, "provision")
		case EffStopImage:
			parts = append(parts, "stop image")
		case EffReleaseImage:
			parts = append(parts, "release image")
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
	{"image-ok", ImageFetched(nil)},
	{"image-notfound", ImageFetched(NewJobError(KindImageNotFound, "no location has it"))},
	{"image-progress", ImageProgress(1<<20, 4<<20)},
	{"prov-ok", Provisioned(nil)},
	{"prov-fail", Provisioned(NewJobError(KindImageNotCompatible, "built for arm64"))},
	{"t-fetch", TimerFired(TimerFetch)},
	{"t-provision", TimerFired(TimerProvision)},
}

// imageSpec is the spec of the image table test: tableSpec with an image.
func imageSpec() Spec {
	s := tableSpec()
	s.Image = &Image{Digest: "sha256:" + strings.Repeat("ab", 32),
		Locations: []ImageLocation{{Registry: "127.0.0.1:5000", Repository: "boards/kernel"}}}
	return s
}

// imageStates is a representative state of a lease with an image at each point of its
// life: the phases, with STARTING split into its image stages.
var imageStates = []struct {
	name string
	st   State
}{
	{"CREATED", State{Phase: PhaseCreated}},
	{"FETCHING", State{Phase: PhaseStarting, Stage: StageFetchingImage}},
	{"ALLOCATING", State{Phase: PhaseStarting, Stage: StageAllocating, ImageFetched: true}},
	{"PROVISIONING", State{Phase: PhaseStarting, Stage: StageProvisioning, ImageFetched: true, Acquired: true, Provisioned: true}},
	{"BEFORE_LEASE", State{Phase: PhaseBeforeLease, ImageFetched: true, Acquired: true, Provisioned: true, HookRunning: HookBefore}},
	{"READY", State{Phase: PhaseReady, ImageFetched: true, Acquired: true, Provisioned: true}},
	{"ENDING", State{Phase: PhaseEnding, ImageFetched: true, Acquired: true, Provisioned: true, EndRequested: true, EndReason: EndClient}},
	{"AFTER_LEASE", State{Phase: PhaseAfterLease, ImageFetched: true, Acquired: true, Provisioned: true, EndRequested: true, EndReason: EndClient, HookRunning: HookAfter, AfterStarted: true}},
	{"RELEASING", State{Phase: PhaseReleasing, ImageFetched: true, Acquired: true, Provisioned: true, EndRequested: true, EndReason: EndClient, AfterStarted: true}},
	{"DONE", State{Phase: PhaseDone, ImageFetched: true, Acquired: true, Provisioned: true, AfterStarted: true}},
	{"FAILED", State{Phase: PhaseFailed, ImageFailed: true, Failure: "x"}},
}

// stateName names a state as imageStates does: its phase, or its image stage in
// STARTING.
func stateName(s State) string {
	if s.Phase == PhaseStarting {
		switch s.Stage {
		case StageFetchingImage:
			return "FETCHING"
		case StageAllocating:
			return "ALLOCATING"
		case StageProvisioning:
			return "PROVISIONING"
		}
	}
	return s.Phase.String()
}
