package jobs

import (
	"errors"
	"fmt"
	"time"
)

// InputKind says what happened to a lease.
type InputKind int

// The inputs a lease accepts.
const (
	// InStart starts the lease: it asks for its board.
	InStart InputKind = iota + 1
	// InBoardAcquired says the board is the lease's now (the previous lease on it ended).
	InBoardAcquired
	// InHookExited says a hook finished; OK tells whether it succeeded.
	InHookExited
	// InEndRequested asks the lease to end (client EndSession, coordinator StopJob,
	// operator). It may arrive any number of times, in any phase.
	InEndRequested
	// InTimerFired says a timer the lease armed has expired.
	InTimerFired
	// InReleased says the board confirmed the lease let go of it.
	InReleased
	// InExtend moves the lease's expiry to Duration from now.
	InExtend
	// InAbort fails the lease at once after an internal fault.
	InAbort
	// InHookShimExited says a hook's shim has written the hook's exit status: the hook
	// is over, and what is left is making its last output lines durable before
	// InHookExited. From then on the hook's timer is a watchdog, not a backstop: a hook
	// whose shim reported its exit is never failed for a slow report (its lines wait
	// for the outbox, e.g. while the state dir is full); every DrainCheck without
	// InHookExited logs a warning and re-arms it.
	InHookShimExited
	// InImageFetched says the image fetch ended: OK, or failed with ErrKind (ImageNotFound,
	// ImageInvalid, ImageNotCompatible, ...) and Message. The image is in the store,
	// verified and kept for the lease when OK.
	InImageFetched
	// InImageProgress says how much of the image is fetched: Done of Total bytes.
	InImageProgress
	// InProvisioned says the board's provisioning with the image ended: OK, or failed
	// with ErrKind and Message.
	InProvisioned
)

var inputNames = map[InputKind]string{InStart: "Start", InBoardAcquired: "BoardAcquired",
	InHookExited: "HookExited", InEndRequested: "EndRequested", InTimerFired: "TimerFired",
	InReleased: "Released", InExtend: "Extend", InAbort: "Abort", InHookShimExited: "HookShimExited",
	InImageFetched: "ImageFetched", InImageProgress: "ImageProgress", InProvisioned: "Provisioned"}

// String returns the input's name, e.g. "HookExited".
func (k InputKind) String() string {
	if n, ok := inputNames[k]; ok {
		return n
	}
	return fmt.Sprintf("InputKind(%d)", int(k))
}

// EndReason says who asked a lease to end.
type EndReason int

// Reasons a lease is asked to end.
const (
	EndClient      EndReason = iota + 1 // the client called EndSession
	EndCoordinator                      // the coordinator sent StopJob
	EndExpired                          // the lease's duration ran out
	EndOperator                         // an operator forced it
)

// String returns a phrase for messages, e.g. "requested by the client".
func (r EndReason) String() string {
	switch r {
	case EndClient:
		return "requested by the client"
	case EndCoordinator:
		return "requested by the coordinator"
	case EndExpired:
		return "lease duration expired"
	case EndOperator:
		return "requested by an operator"
	}
	return fmt.Sprintf("EndReason(%d)", int(r))
}

// Timer names one of the timers a lease arms. Each is armed at most once at a time.
type Timer int

// The lease's timers.
const (
	TimerLease      Timer = iota + 1 // the lease's duration
	TimerBeforeHook                  // backstop for the beforeLease hook's exit report
	TimerAfterHook                   // backstop for the afterLease hook's exit report
	TimerRelease                     // the board's release confirmation
	TimerFetch                       // the image fetch
	TimerProvision                   // the board's provisioning with the image
)

// String returns the timer's name, e.g. "lease".
func (t Timer) String() string {
	switch t {
	case TimerLease:
		return "lease"
	case TimerBeforeHook:
		return "beforeLease hook"
	case TimerAfterHook:
		return "afterLease hook"
	case TimerRelease:
		return "release"
	case TimerFetch:
		return "image fetch"
	case TimerProvision:
		return "provisioning"
	}
	return fmt.Sprintf("Timer(%d)", int(t))
}

func hookTimer(k HookKind) Timer {
	if k == HookAfter {
		return TimerAfterHook
	}
	return TimerBeforeHook
}

// Input is one thing that happened to a lease. Build it with the constructors
// (Start, HookExited, EndRequested, ...).
type Input struct {
	Kind     InputKind
	Hook     HookKind      // InHookExited: which hook
	OK       bool          // InHookExited, InImageFetched, InProvisioned: whether it succeeded
	Message  string        // InHookExited, InImageFetched, InProvisioned: how it failed; InAbort: what went wrong
	Reason   EndReason     // InEndRequested
	Timer    Timer         // InTimerFired
	Duration time.Duration // InExtend
	ErrKind  JobErrorKind  // InImageFetched, InProvisioned: the kind of the failure
	Done     int64         // InImageProgress: bytes fetched so far
	Total    int64         // InImageProgress: bytes to fetch in all
}

// Start is the input that starts a lease.
func Start() Input { return Input{Kind: InStart} }

// BoardAcquired is the input that hands the board to the lease.
func BoardAcquired() Input { return Input{Kind: InBoardAcquired} }

// HookExited is the input that reports a hook's end. message says how it failed.
func HookExited(k HookKind, ok bool, message string) Input {
	return Input{Kind: InHookExited, Hook: k, OK: ok, Message: message}
}

// HookShimExited is the input that reports that a hook's shim wrote its exit status;
// HookExited follows once the hook's output is durable.
func HookShimExited(k HookKind) Input { return Input{Kind: InHookShimExited, Hook: k} }

// EndRequested is the input that asks the lease to end.
func EndRequested(r EndReason) Input { return Input{Kind: InEndRequested, Reason: r} }

// TimerFired is the input that reports an expired timer.
func TimerFired(t Timer) Input { return Input{Kind: InTimerFired, Timer: t} }

// Released is the input that confirms the board was released.
func Released() Input { return Input{Kind: InReleased} }

// Extend is the input that moves the lease's expiry to d from now.
func Extend(d time.Duration) Input { return Input{Kind: InExtend, Duration: d} }

// Abort is the input that fails the lease after an internal fault.
func Abort(message string) Input { return Input{Kind: InAbort, Message: message} }

// ImageFetched is the input that reports the end of the image fetch. A nil err means
// the image is in the store, verified; else err says why not (its kind, when it is a
// *JobError, is reported; any other error is an InternalError).
func ImageFetched(err error) Input {
	in := Input{Kind: InImageFetched, OK: err == nil}
	if err != nil {
		in.ErrKind, in.Message = kindAndMessage(err)
	}
	return in
}

// ImageProgress is the input that reports how much of the image is fetched.
func ImageProgress(done, total int64) Input {
	return Input{Kind: InImageProgress, Done: done, Total: total}
}

// Provisioned is the input that reports the end of the board's provisioning with the
// image; err as for ImageFetched.
func Provisioned(err error) Input {
	in := Input{Kind: InProvisioned, OK: err == nil}
	if err != nil {
		in.ErrKind, in.Message = kindAndMessage(err)
	}
	return in
}

func kindAndMessage(err error) (JobErrorKind, string) {
	var je *JobError
	if errors.As(err, &je) {
		return je.Kind, je.Description
	}
	return KindInternalError, err.Error()
}

// String describes the input for logs.
func (in Input) String() string {
	switch in.Kind {
	case InHookExited:
		if in.OK {
			return fmt.Sprintf("HookExited(%s, ok)", in.Hook)
		}
		return fmt.Sprintf("HookExited(%s, failed: %s)", in.Hook, in.Message)
	case InEndRequested:
		return fmt.Sprintf("EndRequested(%s)", in.Reason)
	case InTimerFired:
		return fmt.Sprintf("TimerFired(%s)", in.Timer)
	case InExtend:
		return fmt.Sprintf("Extend(%s)", in.Duration)
	case InHookShimExited:
		return fmt.Sprintf("HookShimExited(%s)", in.Hook)
	case InAbort:
		return fmt.Sprintf("Abort(%s)", in.Message)
	case InImageFetched, InProvisioned:
		if in.OK {
			return in.Kind.String() + "(ok)"
		}
		return fmt.Sprintf("%s(%s: %s)", in.Kind, in.ErrKind, in.Message)
	case InImageProgress:
		return fmt.Sprintf("ImageProgress(%d/%d)", in.Done, in.Total)
	}
	return in.Kind.String()
}

// EffectKind says what the caller must do.
type EffectKind int

// The effects a decision can ask for.
const (
	// EffReport: report the transition From -> To with the board's Status and Message
	// (a StateTransition event).
	EffReport EffectKind = iota + 1
	// EffAcquire: ask for the board; answer with BoardAcquired when it is the lease's.
	EffAcquire
	// EffRunHook: start Hook with Timeout; answer with HookExited.
	EffRunHook
	// EffStopHook: stop Hook (its timeout ladder runs); its HookExited is no longer awaited.
	EffStopHook
	// EffArmTimer: (re)arm Timer to fire After from now; answer with TimerFired.
	EffArmTimer
	// EffCancelTimer: disarm Timer. A timer that fires anyway is ignored.
	EffCancelTimer
	// EffRelease: give the board back (cancel the request for it if not yet acquired);
	// answer with Released.
	EffRelease
	// EffLog: write Message with Severity to the lease's SYSTEM log.
	EffLog
	// EffError: report Err (an Error event).
	EffError
	// EffQuarantine: take the board OFFLINE with health bad; no further leases until an
	// operator clears it. Message says why.
	EffQuarantine
	// EffFetchImage: fetch the spec's image into the store, verify every blob and keep
	// it for this lease (never evicted while the lease lives); report ImageProgress along
	// the way and answer with ImageFetched. A fetch already done is a no-op that answers
	// at once.
	EffFetchImage
	// EffProvision: put the image on the board (an emulated board boots it; a physical
	// board gets its files for the beforeLease hook); answer with Provisioned.
	EffProvision
	// EffStopImage: stop the fetch or provisioning in flight at once (a partly fetched
	// blob is discarded); its answer is no longer awaited.
	EffStopImage
	// EffReleaseImage: undo the provisioning and let the store forget that this lease
	// keeps the image. Idempotent.
	EffReleaseImage
)

var effectNames = map[EffectKind]string{EffReport: "Report", EffAcquire: "Acquire",
	EffRunHook: "RunHook", EffStopHook: "StopHook", EffArmTimer: "ArmTimer",
	EffCancelTimer: "CancelTimer", EffRelease: "Release", EffLog: "Log", EffError: "Error",
	EffQuarantine: "Quarantine", EffFetchImage: "FetchImage", EffProvision: "Provision",
	EffStopImage: "StopImage", EffReleaseImage: "ReleaseImage"}

// String returns the effect kind's name, e.g. "RunHook".
func (k EffectKind) String() string {
	if n, ok := effectNames[k]; ok {
		return n
	}
	return fmt.Sprintf("EffectKind(%d)", int(k))
}

// Effect is one thing the caller must do, in the order the decision lists them.
type Effect struct {
	Kind     EffectKind
	From, To Phase          // EffReport
	Stage    InitStage      // EffReport: the image stage entered (StageNone: none)
	Status   ExporterStatus // EffReport: the board's status after the transition
	Hook     HookKind       // EffRunHook, EffStopHook
	Timeout  time.Duration  // EffRunHook
	Timer    Timer          // EffArmTimer, EffCancelTimer
	After    time.Duration  // EffArmTimer
	Severity Severity       // EffLog
	Message  string         // EffReport, EffLog, EffQuarantine
	Err      *JobError      // EffError
}

// String describes the effect for logs and test failures.
func (e Effect) String() string {
	switch e.Kind {
	case EffReport:
		if e.Stage != StageNone {
			return fmt.Sprintf("Report(%s->%s{%s} %s %q)", e.From, e.To, e.Stage, e.Status, e.Message)
		}
		return fmt.Sprintf("Report(%s->%s %s %q)", e.From, e.To, e.Status, e.Message)
	case EffRunHook:
		return fmt.Sprintf("RunHook(%s, %s)", e.Hook, e.Timeout)
	case EffStopHook:
		return fmt.Sprintf("StopHook(%s)", e.Hook)
	case EffArmTimer:
		return fmt.Sprintf("ArmTimer(%s, %s)", e.Timer, e.After)
	case EffCancelTimer:
		return fmt.Sprintf("CancelTimer(%s)", e.Timer)
	case EffLog:
		return fmt.Sprintf("Log(%s %q)", e.Severity, e.Message)
	case EffError:
		return fmt.Sprintf("Error(%v)", e.Err)
	case EffQuarantine:
		return fmt.Sprintf("Quarantine(%q)", e.Message)
	}
	return e.Kind.String()
}

// Decision is what a lease decided about one input: the effects to perform, in order.
// A decision with no effects either changed only remembered state (an end requested
// during beforeLease) or was ignored; Ignored then says why.
type Decision struct {
	Effects []Effect
	// Ignored is non-empty when the input changed nothing (a repeated end request, a stale
	// timer, input after the lease ended). Ignoring is how cleanup stays idempotent.
	Ignored string
}

// Transitions returns the decision's EffReport effects.
func (d Decision) Transitions() []Effect {
	var ts []Effect
	for _, e := range d.Effects {
		if e.Kind == EffReport {
			ts = append(ts, e)
		}
	}
	return ts
}

// State is everything a lease remembers. It is plain data, so that it can be journalled
// and restored.
type State struct {
	Phase Phase
	// EndRequested is set by the first end request, in whatever phase it arrives.
	EndRequested bool
	EndReason    EndReason
	// Acquired is set once the board was the lease's: only then do hooks run.
	Acquired bool
	// HookRunning is the hook whose exit is awaited (HookNone when none).
	HookRunning HookKind
	// HookDraining: the running hook's shim reported its exit; its last lines are being
	// made durable (see InHookShimExited).
	HookDraining bool
	// AfterStarted is set when the afterLease hook is started: it never starts twice.
	AfterStarted bool
	// BeforeFailed / AfterFailed: the hook failed under onFailure endLease or exit.
	BeforeFailed, AfterFailed bool
	// Quarantined: a hook failed under onFailure exit; the board goes OFFLINE.
	Quarantined bool
	// Failure says why the lease failed (empty unless it will end FAILED).
	Failure string
	// Stage is the image stage within STARTING of a lease with an image (StageNone
	// before and after).
	Stage InitStage
	// ImageFetched: the image is in the store for this lease. Provisioned: the board
	// was (being) provisioned with it; it is undone when the lease ends.
	ImageFetched, Provisioned bool
	// ImageFailed: fetching or provisioning the image failed; the lease ends FAILED
	// without its hooks.
	ImageFailed bool
}

// Lease is one lease's lifecycle: its spec and its state. Step is the only way its
// state changes. The zero value is not usable; use NewLease.
type Lease struct {
	Spec  Spec
	State State
	out   []Effect
}

// NewLease returns a lease in phase CREATED.
func NewLease(spec Spec) *Lease {
	return &Lease{Spec: spec, State: State{Phase: PhaseCreated}}
}

// Restore returns a lease with a journalled state.
func Restore(spec Spec, st State) *Lease { return &Lease{Spec: spec, State: st} }

// Phase returns the lease's phase.
func (l *Lease) Phase() Phase { return l.State.Phase }

// Step feeds one input to the lease and returns the decision. An error means a phase
// change outside the transition table was attempted; the state is then left as it was
// before the input.
func (l *Lease) Step(in Input) (Decision, error) {
	if l.State.Phase.Terminal() {
		return Decision{Ignored: fmt.Sprintf("lease is %s", l.State.Phase)}, nil
	}
	saved := l.State
	l.out = nil
	ignored, err := l.step(in)
	effects := l.out
	l.out = nil
	if err != nil {
		l.State = saved
		return Decision{}, err
	}
	return Decision{Effects: effects, Ignored: ignored}, nil
}

func (l *Lease) step(in Input) (ignored string, err error) {
	s := &l.State
	switch in.Kind {
	case InStart:
		if s.Phase != PhaseCreated {
			return "already started", nil
		}
		msg := "waiting for the board"
		fetch := l.Spec.Image != nil && !s.EndRequested
		if fetch {
			// The image is fetched before the board is asked for: a lease waiting for
			// a busy board has its image ready when the board is free.
			s.Stage = StageFetchingImage
			msg = "fetching image " + l.Spec.Image.String()
		}
		if err := l.to(PhaseStarting, msg); err != nil {
			return "", err
		}
		if s.EndRequested {
			return "", l.beginEnding()
		}
		l.emit(Effect{Kind: EffArmTimer, Timer: TimerLease, After: l.Spec.Duration})
		if fetch {
			l.emit(Effect{Kind: EffFetchImage})
			l.emit(Effect{Kind: EffArmTimer, Timer: TimerFetch, After: l.Spec.fetchTimeout()})
			return "", nil
		}
		l.emit(Effect{Kind: EffAcquire})
		return "", nil

	case InBoardAcquired:
		if s.Phase != PhaseStarting || s.Acquired {
			return fmt.Sprintf("board acquired in phase %s", s.Phase), nil
		}
		if l.Spec.Image != nil {
			if s.Stage != StageAllocating {
				return fmt.Sprintf("board acquired in stage %s, before it was asked for", s.Stage), nil
			}
			s.Acquired = true
			return "", l.startProvision()
		}
		s.Acquired = true
		return "", l.enterBefore()

	case InImageFetched, InImageProgress, InProvisioned:
		return l.imageInput(in)

	case InHookExited:
		if s.HookRunning == HookNone || s.HookRunning != in.Hook {
			return fmt.Sprintf("%s hook is not running", in.Hook), nil
		}
		l.emit(Effect{Kind: EffCancelTimer, Timer: hookTimer(in.Hook)})
		return "", l.hookDone(in.Hook, in.OK, in.Message)

	case InHookShimExited:
		if s.HookRunning == HookNone || s.HookRunning != in.Hook {
			return fmt.Sprintf("%s hook is not running", in.Hook), nil
		}
		if s.HookDraining {
			return "shim exit already reported", nil
		}
		s.HookDraining = true
		l.emit(Effect{Kind: EffArmTimer, Timer: hookTimer(in.Hook), After: DrainCheck})
		return "", nil

	case InEndRequested:
		return l.requestEnd(in.Reason)

	case InTimerFired:
		switch in.Timer {
		case TimerLease:
			if s.Phase == PhaseCreated {
				return "lease timer is stale", nil
			}
			return l.requestEnd(EndExpired)
		case TimerBeforeHook, TimerAfterHook:
			k := HookBefore
			if in.Timer == TimerAfterHook {
				k = HookAfter
			}
			if s.HookRunning != k {
				return fmt.Sprintf("%s timer is stale", in.Timer), nil
			}
			if s.HookDraining {
				l.emit(Effect{Kind: EffLog, Severity: SeverityWarn, Message: fmt.Sprintf(
					"the %s hook has exited, but its last output lines are not durable yet; waiting for them (is the state directory full?)", k)})
				l.emit(Effect{Kind: EffArmTimer, Timer: in.Timer, After: DrainCheck})
				return "", nil
			}
			l.emit(Effect{Kind: EffStopHook, Hook: k})
			timeout := l.Spec.hook(k).Timeout
			return "", l.hookDone(k, false, fmt.Sprintf("no exit report within %s of its %s timeout", HookSlack, timeout))
		case TimerRelease:
			if s.Phase != PhaseReleasing {
				return "release timer is stale", nil
			}
			return "", l.fail(fmt.Sprintf("the board did not confirm its release within %s", ReleaseTimeout))
		case TimerFetch:
			if s.Phase != PhaseStarting || s.Stage != StageFetchingImage {
				return "image fetch timer is stale", nil
			}
			l.emit(Effect{Kind: EffStopImage})
			return "", l.imageFailed(KindImageNotFound, fmt.Sprintf("image %s could not be fetched within %s", l.Spec.Image, l.Spec.fetchTimeout()))
		case TimerProvision:
			if s.Phase != PhaseStarting || s.Stage != StageProvisioning {
				return "provisioning timer is stale", nil
			}
			l.emit(Effect{Kind: EffStopImage})
			return "", l.imageFailed(KindInternalError, fmt.Sprintf("the board was not provisioned with image %s within %s", l.Spec.Image.Digest, l.Spec.provisionTimeout()))
		}
		return fmt.Sprintf("unknown timer %d", in.Timer), nil

	case InReleased:
		if s.Phase != PhaseReleasing {
			return fmt.Sprintf("released in phase %s", s.Phase), nil
		}
		l.emit(Effect{Kind: EffCancelTimer, Timer: TimerRelease})
		if s.BeforeFailed || s.AfterFailed || s.ImageFailed {
			return "", l.to(PhaseFailed, s.Failure)
		}
		return "", l.to(PhaseDone, "lease ended")

	case InExtend:
		if s.Phase == PhaseCreated || s.EndRequested || s.Phase > PhaseReady || in.Duration <= 0 {
			return fmt.Sprintf("cannot extend a lease in phase %s (end requested: %t) by %s", s.Phase, s.EndRequested, in.Duration), nil
		}
		l.emit(Effect{Kind: EffArmTimer, Timer: TimerLease, After: in.Duration})
		return "", nil

	case InAbort:
		return "", l.fail(in.Message)
	}
	return fmt.Sprintf("unknown input %d", in.Kind), nil
}

// requestEnd handles an end request from any source (rules 2, 3 and 7 of DESIGN.md §4).
func (l *Lease) requestEnd(r EndReason) (string, error) {
	s := &l.State
	if s.EndRequested {
		return "end already requested", nil
	}
	if s.Phase >= PhaseEnding {
		return "lease is already ending", nil
	}
	s.EndRequested, s.EndReason = true, r
	switch s.Phase {
	case PhaseCreated:
		// Remembered; Start goes straight to ending.
		return "", nil
	case PhaseBeforeLease:
		// The hook is not cancelled: the end waits for it, and READY is never reached.
		l.emit(Effect{Kind: EffLog, Severity: SeverityInfo,
			Message: fmt.Sprintf("end %s; the lease ends when the beforeLease hook finishes", r)})
		return "", nil
	case PhaseStarting:
		switch s.Stage {
		case StageFetchingImage:
			// A fetch is interrupted at once: the lease does not wait for it.
			l.emit(Effect{Kind: EffCancelTimer, Timer: TimerFetch})
			l.emit(Effect{Kind: EffStopImage})
		case StageProvisioning:
			// Like a beforeLease hook, provisioning is not cut short (a board half
			// written is worse than one written); the end waits for it, bounded by
			// its timer.
			l.emit(Effect{Kind: EffLog, Severity: SeverityInfo,
				Message: fmt.Sprintf("end %s; the lease ends when the board's provisioning finishes", r)})
			return "", nil
		}
	}
	return "", l.beginEnding()
}

func (l *Lease) enterBefore() error {
	msg := "no beforeLease hook to run"
	if p := l.Spec.Before; p != nil {
		// The client shows the hook's time against its timeout from this line.
		msg = fmt.Sprintf("running the beforeLease hook (timeout %s)", p.Timeout)
	}
	if err := l.to(PhaseBeforeLease, msg); err != nil {
		return err
	}
	if l.Spec.Before == nil {
		return l.beforeDone()
	}
	l.runHook(HookBefore)
	return nil
}

func (l *Lease) runHook(k HookKind) {
	p := l.Spec.hook(k)
	l.State.HookRunning = k
	if k == HookAfter {
		l.State.AfterStarted = true
	}
	l.emit(Effect{Kind: EffRunHook, Hook: k, Timeout: p.Timeout})
	l.emit(Effect{Kind: EffArmTimer, Timer: hookTimer(k), After: p.Timeout + HookSlack})
}

// hookDone applies a hook's outcome and its onFailure policy (rule 6).
func (l *Lease) hookDone(k HookKind, ok bool, message string) error {
	s := &l.State
	s.HookRunning, s.HookDraining = HookNone, false
	if !ok {
		policy := l.Spec.hook(k).OnFailure
		what := fmt.Sprintf("%s hook failed: %s", k, message)
		switch policy {
		case PolicyWarn:
			l.emit(Effect{Kind: EffLog, Severity: SeverityWarn, Message: what + " (onFailure: warn, going on)"})
			ok = true
		case PolicyEndLease, PolicyExit:
			if k == HookBefore {
				s.BeforeFailed = true
			} else {
				s.AfterFailed = true
			}
			s.Failure = what
			l.emit(Effect{Kind: EffLog, Severity: SeverityError, Message: fmt.Sprintf("%s (onFailure: %s)", what, policy)})
			if policy == PolicyExit {
				s.Quarantined = true
				l.emit(Effect{Kind: EffQuarantine, Message: what})
			}
		}
	}
	if k == HookAfter {
		return l.release()
	}
	if !ok {
		return l.beginEnding()
	}
	return l.beforeDone()
}

// beforeDone moves on after a successful (or passed-through) beforeLease hook.
func (l *Lease) beforeDone() error {
	if l.State.EndRequested {
		return l.beginEnding()
	}
	return l.to(PhaseReady, "ready")
}

// beginEnding takes the lease from any live phase before ENDING through ENDING and
// AFTER_LEASE. The afterLease hook runs only if the board was acquired, the
// beforeLease hook did not fail the lease, a hook is configured, and it never ran.
func (l *Lease) beginEnding() error {
	s := &l.State
	l.emit(Effect{Kind: EffCancelTimer, Timer: TimerLease})
	msg := "lease ending"
	if s.EndRequested {
		msg = "lease ending: " + s.EndReason.String()
	} else if s.Failure != "" {
		msg = "lease ending: " + s.Failure
	}
	if err := l.to(PhaseEnding, msg); err != nil {
		return err
	}
	runAfter := l.runsAfter()
	afterMsg := "no afterLease hook to run"
	if runAfter {
		afterMsg = fmt.Sprintf("running the afterLease hook (timeout %s)", l.Spec.After.Timeout)
	}
	if err := l.to(PhaseAfterLease, afterMsg); err != nil {
		return err
	}
	if runAfter {
		l.runHook(HookAfter)
		return nil
	}
	return l.release()
}

func (l *Lease) runsAfter() bool {
	s := l.State
	return s.Acquired && !s.BeforeFailed && !s.ImageFailed && l.Spec.After != nil && !s.AfterStarted
}

func (l *Lease) release() error {
	if err := l.to(PhaseReleasing, "releasing the board"); err != nil {
		return err
	}
	if l.Spec.Image != nil {
		l.emit(Effect{Kind: EffReleaseImage})
	}
	l.emit(Effect{Kind: EffRelease})
	l.emit(Effect{Kind: EffArmTimer, Timer: TimerRelease, After: ReleaseTimeout})
	return nil
}

// fail ends the lease at once in FAILED after an internal fault: the running hook is
// stopped, every timer disarmed, the board given back and an InternalError reported.
func (l *Lease) fail(message string) error {
	s := &l.State
	if s.HookRunning != HookNone {
		l.emit(Effect{Kind: EffStopHook, Hook: s.HookRunning})
		s.HookRunning, s.HookDraining = HookNone, false
	}
	for _, t := range []Timer{TimerLease, TimerBeforeHook, TimerAfterHook, TimerRelease} {
		l.emit(Effect{Kind: EffCancelTimer, Timer: t})
	}
	if l.Spec.Image != nil {
		if s.Phase == PhaseStarting && (s.Stage == StageFetchingImage || s.Stage == StageProvisioning) {
			l.emit(Effect{Kind: EffStopImage})
		}
		l.emit(Effect{Kind: EffCancelTimer, Timer: TimerFetch})
		l.emit(Effect{Kind: EffCancelTimer, Timer: TimerProvision})
		l.emit(Effect{Kind: EffReleaseImage})
	}
	if s.Phase != PhaseReleasing {
		l.emit(Effect{Kind: EffRelease})
	}
	s.Failure = message
	l.emit(Effect{Kind: EffError, Err: NewJobError(KindInternalError, message)})
	return l.to(PhaseFailed, message)
}

// to moves the lease to phase p, checked against the table, and reports it. Leaving
// STARTING ends its image stages.
func (l *Lease) to(p Phase, message string) error {
	from := l.State.Phase
	if !CanTransition(from, p) {
		return &InvalidTransitionError{From: from, To: p}
	}
	l.State.Phase = p
	if p != PhaseStarting {
		l.State.Stage = StageNone
	}
	l.emit(Effect{Kind: EffReport, From: from, To: p, Stage: l.State.Stage, Status: l.Status(), Message: message})
	return nil
}

// toStage moves a lease in STARTING to an image stage, checked against the stage order,
// and reports it as a transition STARTING -> STARTING naming the stage.
func (l *Lease) toStage(st InitStage, message string) error {
	s := &l.State
	if s.Phase != PhaseStarting || !CanStage(s.Stage, st) {
		return &InvalidStageError{From: s.Stage, To: st}
	}
	s.Stage = st
	l.emit(Effect{Kind: EffReport, From: PhaseStarting, To: PhaseStarting, Stage: st, Status: l.Status(), Message: message})
	return nil
}

func (l *Lease) emit(e Effect) { l.out = append(l.out, e) }

// Status derives the board's ExporterStatus from the lease: a failed hook shows as
// *_HOOK_FAILED until the lease is over; a quarantined board is OFFLINE once it is.
func (l *Lease) Status() ExporterStatus {
	s := l.State
	switch {
	case s.Phase.Terminal() && s.Quarantined:
		return StatusOffline
	case s.Phase.Terminal():
		return StatusAvailable
	case s.AfterFailed:
		return StatusAfterLeaseHookFailed
	case s.BeforeFailed:
		return StatusBeforeLeaseHookFailed
	}
	switch s.Phase {
	case PhaseBeforeLease:
		if l.Spec.Before != nil {
			return StatusBeforeLeaseHook
		}
	case PhaseReady:
		return StatusLeaseReady
	case PhaseEnding:
		if l.runsAfter() {
			return StatusAfterLeaseHook
		}
	case PhaseAfterLease:
		if s.HookRunning == HookAfter || l.runsAfter() {
			return StatusAfterLeaseHook
		}
	}
	return StatusAvailable
}

// Access says what a client's driver call may do now.
type Access int

// Driver-call access for clients (the wait points of JEP-0012).
const (
	// AccessWait: the lease is not READY yet; the call waits (or fails at once with
	// FAILED_PRECONDITION when the caller asked not to wait).
	AccessWait Access = iota + 1
	// AccessAllowed: the lease is READY.
	AccessAllowed
	// AccessEnded: the lease is ending or over (or an end was requested); it will never be
	// READY again.
	AccessEnded
)

// ClientAccess tells whether a client's driver call may proceed, must wait, or is too late.
func (s State) ClientAccess() Access {
	switch {
	case s.Phase == PhaseReady:
		return AccessAllowed
	case s.EndRequested || s.Phase >= PhaseEnding:
		return AccessEnded
	}
	return AccessWait
}

// Complete reports whether the lease is over (DONE or FAILED): the WaitComplete point.
func (s State) Complete() bool { return s.Phase.Terminal() }
