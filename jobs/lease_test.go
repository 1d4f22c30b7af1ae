package jobs

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const testJob = "2b1f2f5e-5c1e-4f0e-9a43-0a4c4b9c1d11"

func spec(before, after *HookPolicy) Spec {
	return Spec{JobID: testJob, Board: "rpi4-01", Duration: time.Hour, Before: before, After: after}
}

func hookP(p Policy) *HookPolicy { return &HookPolicy{Timeout: 5 * time.Second, OnFailure: p} }

// run feeds inputs and returns every effect, failing the test on an error.
func run(t *testing.T, l *Lease, ins ...Input) []Effect {
	t.Helper()
	var all []Effect
	for _, in := range ins {
		d, err := l.Step(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		all = append(all, d.Effects...)
	}
	return all
}

// chain renders the reported transitions as "A>B[S] B>C[S] ...".
func chain(effs []Effect) string {
	var b []string
	for _, e := range effs {
		if e.Kind == EffReport {
			b = append(b, e.From.String()+">"+e.To.String()+"["+e.Status.String()+"]")
		}
	}
	return strings.Join(b, " ")
}

func count(effs []Effect, k EffectKind, hook HookKind) int {
	n := 0
	for _, e := range effs {
		if e.Kind == k && (hook == HookNone || e.Hook == hook) {
			n++
		}
	}
	return n
}

func TestNoHooksPassesThroughEveryPhase(t *testing.T) {
	l := NewLease(spec(nil, nil))
	effs := run(t, l, Start(), BoardAcquired(), EndRequested(EndClient), Released())
	want := "CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[AVAILABLE] BEFORE_LEASE>READY[LEASE_READY] " +
		"READY>ENDING[AVAILABLE] ENDING>AFTER_LEASE[AVAILABLE] AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]"
	if got := chain(effs); got != want {
		t.Fatalf("transitions:\n got %s\nwant %s", got, want)
	}
	if n := count(effs, EffRunHook, HookNone); n != 0 {
		t.Fatalf("ran %d hooks, want none", n)
	}
}

func TestFullLeaseWithHooks(t *testing.T) {
	l := NewLease(spec(hookP(PolicyEndLease), hookP(PolicyEndLease)))
	effs := run(t, l, Start(), BoardAcquired(), HookExited(HookBefore, true, ""),
		EndRequested(EndCoordinator), HookExited(HookAfter, true, ""), Released())
	want := "CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>READY[LEASE_READY] " +
		"READY>ENDING[AFTER_LEASE_HOOK] ENDING>AFTER_LEASE[AFTER_LEASE_HOOK] AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]"
	if got := chain(effs); got != want {
		t.Fatalf("transitions:\n got %s\nwant %s", got, want)
	}
	if l.Phase() != PhaseDone {
		t.Fatalf("phase %s, want DONE", l.Phase())
	}
	// The hook is told its timeout; a backstop timer covers a missing exit report.
	for _, e := range effs {
		if e.Kind == EffArmTimer && e.Timer == TimerBeforeHook && e.After != 5*time.Second+HookSlack {
			t.Fatalf("before hook backstop armed for %s", e.After)
		}
		if e.Kind == EffRunHook && e.Timeout != 5*time.Second {
			t.Fatalf("hook run with timeout %s", e.Timeout)
		}
	}
}

// Rule 2: an end during BEFORE_LEASE waits for the hook and never yields READY.
func TestEndDuringBeforeLeaseWaitsForHookAndNeverReady(t *testing.T) {
	for _, ok := range []bool{true, false} {
		l := NewLease(spec(hookP(PolicyWarn), hookP(PolicyEndLease)))
		run(t, l, Start(), BoardAcquired())
		d, err := l.Step(EndRequested(EndClient))
		if err != nil || len(d.Transitions()) != 0 || count(d.Effects, EffStopHook, HookNone) != 0 {
			t.Fatalf("end during beforeLease: %v %v; want no transition and the hook left running", d.Effects, err)
		}
		if l.State.ClientAccess() != AccessEnded {
			t.Fatalf("client access %v after end requested, want AccessEnded", l.State.ClientAccess())
		}
		effs := run(t, l, EndRequested(EndCoordinator), TimerFired(TimerLease), HookExited(HookBefore, ok, "exit status 1"))
		if strings.Contains(chain(effs), ">READY") {
			t.Fatalf("READY reported after end requested: %s", chain(effs))
		}
		if got := chain(effs); !strings.HasPrefix(got, "BEFORE_LEASE>ENDING") {
			t.Fatalf("ok=%v: transitions %s, want BEFORE_LEASE>ENDING first", ok, got)
		}
		if count(effs, EffRunHook, HookAfter) != 1 {
			t.Fatalf("ok=%v (warn policy): afterLease ran %d times, want 1", ok, count(effs, EffRunHook, HookAfter))
		}
	}
}

// Rule 3: afterLease runs exactly once whatever the number and order of end requests.
func TestAfterLeaseExactlyOnce(t *testing.T) {
	ends := []Input{EndRequested(EndClient), EndRequested(EndCoordinator), TimerFired(TimerLease), EndRequested(EndOperator)}
	perms := [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 0, 0, 2}, {2, 2, 2, 1}}
	for _, perm := range perms {
		l := NewLease(spec(hookP(PolicyEndLease), hookP(PolicyEndLease)))
		effs := run(t, l, Start(), BoardAcquired(), HookExited(HookBefore, true, ""))
		for _, i := range perm {
			effs = append(effs, run(t, l, ends[i])...)
		}
		effs = append(effs, run(t, l, HookExited(HookAfter, true, ""))...)
		for _, i := range perm {
			effs = append(effs, run(t, l, ends[i])...)
		}
		effs = append(effs, run(t, l, Released(), EndRequested(EndClient))...)
		if n := count(effs, EffRunHook, HookAfter); n != 1 {
			t.Fatalf("order %v: afterLease ran %d times", perm, n)
		}
		if l.Phase() != PhaseDone {
			t.Fatalf("order %v: phase %s", perm, l.Phase())
		}
	}
}

// Rule 5: a lease nobody connects to still ends by its timeout, also while waiting for
// its board.
func TestLeaseEndsByItsTimeout(t *testing.T) {
	l := NewLease(spec(nil, hookP(PolicyEndLease)))
	effs := run(t, l, Start())
	if count(effs, EffArmTimer, HookNone) != 1 || effs[1].Timer != TimerLease || effs[1].After != time.Hour {
		t.Fatalf("start effects %v: want the lease timer armed for 1h", effs)
	}
	effs = run(t, l, TimerFired(TimerLease), Released())
	if l.Phase() != PhaseDone || count(effs, EffRunHook, HookAfter) != 0 {
		t.Fatalf("board never acquired: phase %s, effects %v; want DONE without afterLease", l.Phase(), effs)
	}

	l = NewLease(spec(nil, hookP(PolicyEndLease)))
	run(t, l, Start(), BoardAcquired())
	effs = run(t, l, TimerFired(TimerLease))
	if !strings.Contains(chain(effs), "READY>ENDING") || count(effs, EffRunHook, HookAfter) != 1 {
		t.Fatalf("expiry in READY: %s; want ending with afterLease", chain(effs))
	}
}

func TestHookFailurePolicies(t *testing.T) {
	cases := []struct {
		name        string
		policy      Policy
		failBefore  bool
		wantPhase   Phase
		wantChain   string
		wantAfter   int
		quarantined bool
	}{
		{"before warn", PolicyWarn, true, PhaseDone,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>READY[LEASE_READY] READY>ENDING[AFTER_LEASE_HOOK] ENDING>AFTER_LEASE[AFTER_LEASE_HOOK] AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]", 1, false},
		{"before endLease", PolicyEndLease, true, PhaseFailed,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED] ENDING>AFTER_LEASE[BEFORE_LEASE_HOOK_FAILED] AFTER_LEASE>RELEASING[BEFORE_LEASE_HOOK_FAILED] RELEASING>FAILED[AVAILABLE]", 0, false},
		{"before exit", PolicyExit, true, PhaseFailed,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED] ENDING>AFTER_LEASE[BEFORE_LEASE_HOOK_FAILED] AFTER_LEASE>RELEASING[BEFORE_LEASE_HOOK_FAILED] RELEASING>FAILED[OFFLINE]", 0, true},
		{"after warn", PolicyWarn, false, PhaseDone,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>READY[LEASE_READY] READY>ENDING[AFTER_LEASE_HOOK] ENDING>AFTER_LEASE[AFTER_LEASE_HOOK] AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]", 1, false},
		{"after endLease", PolicyEndLease, false, PhaseFailed,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>READY[LEASE_READY] READY>ENDING[AFTER_LEASE_HOOK] ENDING>AFTER_LEASE[AFTER_LEASE_HOOK] AFTER_LEASE>RELEASING[AFTER_LEASE_HOOK_FAILED] RELEASING>FAILED[AVAILABLE]", 1, false},
		{"after exit", PolicyExit, false, PhaseFailed,
			"CREATED>STARTING[AVAILABLE] STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK] BEFORE_LEASE>READY[LEASE_READY] READY>ENDING[AFTER_LEASE_HOOK] ENDING>AFTER_LEASE[AFTER_LEASE_HOOK] AFTER_LEASE>RELEASING[AFTER_LEASE_HOOK_FAILED] RELEASING>FAILED[OFFLINE]", 1, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before, after := hookP(PolicyEndLease), hookP(PolicyEndLease)
			if c.failBefore {
				before.OnFailure = c.policy
			} else {
				after.OnFailure = c.policy
			}
			l := NewLease(spec(before, after))
			effs := run(t, l, Start(), BoardAcquired(), HookExited(HookBefore, !c.failBefore, "exit status 2"),
				EndRequested(EndClient), HookExited(HookAfter, c.failBefore, "exit status 2"), Released())
			if got := chain(effs); got != c.wantChain {
				t.Fatalf("transitions:\n got %s\nwant %s", got, c.wantChain)
			}
			if l.Phase() != c.wantPhase || count(effs, EffRunHook, HookAfter) != c.wantAfter {
				t.Fatalf("phase %s, afterLease runs %d; want %s, %d", l.Phase(), count(effs, EffRunHook, HookAfter), c.wantPhase, c.wantAfter)
			}
			if got := count(effs, EffQuarantine, HookNone) == 1; got != c.quarantined {
				t.Fatalf("quarantined %v, want %v", got, c.quarantined)
			}
			var logged bool
			for _, e := range effs {
				if e.Kind == EffLog && strings.Contains(e.Message, "exit status 2") {
					logged = true
					wantSev := SeverityError
					if c.policy == PolicyWarn {
						wantSev = SeverityWarn
					}
					if e.Severity != wantSev {
						t.Fatalf("failure logged as %s, want %s", e.Severity, wantSev)
					}
				}
			}
			if !logged {
				t.Fatalf("hook failure not logged: %v", effs)
			}
			if c.wantPhase == PhaseFailed && !strings.Contains(l.State.Failure, "exit status 2") {
				t.Fatalf("failure %q does not say why", l.State.Failure)
			}
		})
	}
}

func TestHookBackstopTimerStopsHookAndAppliesPolicy(t *testing.T) {
	l := NewLease(spec(hookP(PolicyEndLease), hookP(PolicyEndLease)))
	run(t, l, Start(), BoardAcquired())
	effs := run(t, l, TimerFired(TimerBeforeHook))
	if effs[0].Kind != EffStopHook || effs[0].Hook != HookBefore {
		t.Fatalf("first effect %v, want StopHook(beforeLease)", effs[0])
	}
	if l.Phase() != PhaseReleasing || !l.State.BeforeFailed {
		t.Fatalf("phase %s, before failed %v", l.Phase(), l.State.BeforeFailed)
	}
	// The real exit report arriving late is stale.
	d, _ := l.Step(HookExited(HookBefore, true, ""))
	if d.Ignored == "" {
		t.Fatalf("late exit report was not ignored: %v", d.Effects)
	}
}

func TestEndBeforeStart(t *testing.T) {
	l := NewLease(spec(hookP(PolicyEndLease), hookP(PolicyEndLease)))
	effs := run(t, l, EndRequested(EndCoordinator), Start(), BoardAcquired(), Released())
	want := "CREATED>STARTING[AVAILABLE] STARTING>ENDING[AVAILABLE] ENDING>AFTER_LEASE[AVAILABLE] AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]"
	if got := chain(effs); got != want || count(effs, EffRunHook, HookNone) != 0 || count(effs, EffAcquire, HookNone) != 0 {
		t.Fatalf("got %s with %d hooks and %d acquires; want %s and none", got, count(effs, EffRunHook, HookNone), count(effs, EffAcquire, HookNone), want)
	}
}

func TestReleaseTimeoutFails(t *testing.T) {
	l := NewLease(spec(nil, nil))
	effs := run(t, l, Start(), BoardAcquired(), EndRequested(EndClient), TimerFired(TimerRelease))
	if l.Phase() != PhaseFailed || count(effs, EffError, HookNone) != 1 {
		t.Fatalf("phase %s, effects %v", l.Phase(), effs)
	}
}

func TestExtendRearmsLeaseTimer(t *testing.T) {
	l := NewLease(spec(nil, nil))
	run(t, l, Start(), BoardAcquired())
	effs := run(t, l, Extend(2*time.Hour))
	if len(effs) != 1 || effs[0].Kind != EffArmTimer || effs[0].Timer != TimerLease || effs[0].After != 2*time.Hour {
		t.Fatalf("extend: %v", effs)
	}
	if d, _ := l.Step(Extend(-time.Second)); d.Ignored == "" {
		t.Fatal("negative extension accepted")
	}
}

func TestAbortFailsAndCleansUp(t *testing.T) {
	l := NewLease(spec(hookP(PolicyWarn), nil))
	run(t, l, Start(), BoardAcquired())
	effs := run(t, l, Abort("journal write failed"))
	if l.Phase() != PhaseFailed || count(effs, EffStopHook, HookBefore) != 1 || count(effs, EffRelease, HookNone) != 1 {
		t.Fatalf("abort: phase %s effects %v", l.Phase(), effs)
	}
	for _, e := range effs {
		if e.Kind == EffError && (e.Err.Kind != KindInternalError || e.Err.Description != "journal write failed") {
			t.Fatalf("error %v", e.Err)
		}
	}
}

// Rule 1: a phase change outside the table is an error, and the state is unchanged.
func TestInvalidTransitionIsAnError(t *testing.T) {
	st := State{Phase: PhaseReleasing, Acquired: true, HookRunning: HookBefore}
	l := Restore(spec(hookP(PolicyWarn), nil), st)
	_, err := l.Step(HookExited(HookBefore, true, ""))
	var ite *InvalidTransitionError
	if !errors.As(err, &ite) || ite.From != PhaseReleasing || ite.To != PhaseReady {
		t.Fatalf("err = %v, want invalid transition RELEASING -> READY", err)
	}
	if l.State != st {
		t.Fatalf("state changed on error: %+v", l.State)
	}
	if !strings.Contains(err.Error(), "RELEASING -> READY") {
		t.Fatalf("message %q", err)
	}
}

func TestTransitionTableShape(t *testing.T) {
	for _, from := range Phases {
		for _, to := range Phases {
			allowed := CanTransition(from, to)
			if allowed && to <= from {
				t.Errorf("%s -> %s goes backwards", from, to)
			}
			if from.Terminal() && allowed {
				t.Errorf("terminal %s has an exit to %s", from, to)
			}
			if !from.Terminal() && to == PhaseFailed && !allowed {
				t.Errorf("%s cannot fail", from)
			}
		}
	}
}

func TestClientAccessAndWaitPoints(t *testing.T) {
	cases := []struct {
		st   State
		want Access
	}{
		{State{Phase: PhaseCreated}, AccessWait},
		{State{Phase: PhaseStarting}, AccessWait},
		{State{Phase: PhaseBeforeLease}, AccessWait},
		{State{Phase: PhaseBeforeLease, EndRequested: true}, AccessEnded},
		{State{Phase: PhaseReady}, AccessAllowed},
		{State{Phase: PhaseEnding}, AccessEnded},
		{State{Phase: PhaseDone}, AccessEnded},
	}
	for _, c := range cases {
		if got := c.st.ClientAccess(); got != c.want {
			t.Errorf("%+v: access %v, want %v", c.st, got, c.want)
		}
	}
	if (State{Phase: PhaseReady}).Complete() || !(State{Phase: PhaseFailed}).Complete() {
		t.Fatal("Complete is wrong")
	}
}

func TestRunningStateOf(t *testing.T) {
	want := map[Phase]string{PhaseCreated: "Initializing/Starting", PhaseStarting: "Initializing/Starting",
		PhaseBeforeLease: "Initializing/Provisioning", PhaseReady: "Ready/", PhaseEnding: "Terminating/",
		PhaseAfterLease: "Terminating/", PhaseReleasing: "Terminating/", PhaseDone: "Terminated/", PhaseFailed: "Terminated/"}
	for p, w := range want {
		s, st := RunningStateOf(p)
		if got := s.String() + "/" + st.String(); got != w {
			t.Errorf("%s: %s, want %s", p, got, w)
		}
	}
	if s, _ := RunningStateOf(Phase(42)); s != 0 {
		t.Fatal("unknown phase has a running state")
	}
}

func TestSpecValidate(t *testing.T) {
	good := spec(hookP(PolicyExit), hookP(PolicyWarn))
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		mut  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.JobID = "job-1" }, "not a UUID"},
		{func(s *Spec) { s.Board = " " }, "no board"},
		{func(s *Spec) { s.Duration = 0 }, "must be positive"},
		{func(s *Spec) { s.Before = &HookPolicy{} }, "beforeLease hook timeout"},
		{func(s *Spec) { s.After = &HookPolicy{Timeout: time.Second, OnFailure: 7} }, "afterLease hook: Policy(7)"},
	}
	for _, b := range bad {
		s := spec(hookP(PolicyExit), hookP(PolicyWarn))
		b.mut(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("err = %v, want %q", err, b.want)
		}
	}
}

func TestNamesAndParsing(t *testing.T) {
	for _, p := range Phases {
		q, err := ParsePhase(p.String())
		if err != nil || q != p {
			t.Fatalf("ParsePhase(%s) = %v, %v", p, q, err)
		}
	}
	if _, err := ParsePhase("RUNNING"); err == nil {
		t.Fatal("ParsePhase accepted RUNNING")
	}
	for _, p := range []Policy{PolicyWarn, PolicyEndLease, PolicyExit} {
		q, err := ParsePolicy(p.String())
		if err != nil || q != p {
			t.Fatalf("ParsePolicy(%s) = %v, %v", p, q, err)
		}
	}
	if _, err := ParsePolicy("retry"); err == nil || !strings.Contains(err.Error(), "want warn, endLease or exit") {
		t.Fatalf("ParsePolicy(retry) = %v", err)
	}
	// Every enum prints a name, and an out-of-range value prints its number.
	named := []interface{ String() string }{PhaseReady, StatusLeaseReady, HealthBad, KindCannotResume,
		SeverityWarn, SourceMessage, HookAfter, PolicyExit, RunningReady, StageProvisioning, InAbort,
		EndExpired, TimerRelease, EffQuarantine}
	for _, n := range named {
		if s := n.String(); s == "" || strings.Contains(s, "(") {
			t.Errorf("%T %v has no name: %q", n, n, s)
		}
	}
	unknown := []interface{ String() string }{Phase(99), ExporterStatus(99), Health(99), JobErrorKind(99),
		Severity(99), LogSource(99), HookKind(99), Policy(99), RunningState(99), InitStage(99), InputKind(99),
		EndReason(99), Timer(99), EffectKind(99)}
	for _, n := range unknown {
		if s := n.String(); !strings.Contains(s, "99") {
			t.Errorf("%T(99).String() = %q, want the number", n, s)
		}
	}
	if len(JobErrorKinds) != 10 {
		t.Fatalf("%d job error kinds, want Treadmill's ten", len(JobErrorKinds))
	}
	if !HealthGood.Leasable() || HealthMaintenance.Leasable() {
		t.Fatal("Leasable is wrong")
	}
	if HookBefore.Source() != SourceBeforeLeaseHook || HookAfter.Source() != SourceAfterLeaseHook {
		t.Fatal("hook sources are wrong")
	}
}

func TestJobError(t *testing.T) {
	err := error(NewJobError(KindMaxConcurrentJobs, "board rpi4-01 has a queue of 1"))
	if err.Error() != "MaxConcurrentJobs: board rpi4-01 has a queue of 1" {
		t.Fatalf("Error() = %q", err)
	}
	wrapped := errors.Join(errors.New("start job"), err)
	if !errors.Is(wrapped, &JobError{Kind: KindMaxConcurrentJobs}) || errors.Is(wrapped, &JobError{Kind: KindJobNotFound}) {
		t.Fatal("errors.Is by kind is wrong")
	}
	if k, ok := KindOf(wrapped); !ok || k != KindMaxConcurrentJobs {
		t.Fatalf("KindOf = %v, %v", k, ok)
	}
	if _, ok := KindOf(errors.New("plain")); ok {
		t.Fatal("KindOf found a kind in a plain error")
	}
	if NewJobError(KindJobNotFound, "").Error() != "JobNotFound" {
		t.Fatal("empty description")
	}
}

func TestInputAndEffectStrings(t *testing.T) {
	for _, in := range []Input{Start(), HookExited(HookBefore, true, ""), HookExited(HookAfter, false, "x"),
		EndRequested(EndClient), TimerFired(TimerLease), Extend(time.Second), Abort("x"), Released()} {
		if in.String() == "" {
			t.Fatal("empty input string")
		}
	}
	for _, e := range []Effect{{Kind: EffReport}, {Kind: EffRunHook}, {Kind: EffStopHook}, {Kind: EffArmTimer},
		{Kind: EffCancelTimer}, {Kind: EffLog}, {Kind: EffError, Err: NewJobError(KindInternalError, "x")},
		{Kind: EffQuarantine}, {Kind: EffRelease}} {
		if e.String() == "" {
			t.Fatal("empty effect string")
		}
	}
	if d := (Decision{Effects: []Effect{{Kind: EffLog}, {Kind: EffReport}}}); len(d.Transitions()) != 1 {
		t.Fatal("Transitions")
	}
	l := NewLease(spec(nil, nil))
	if d, _ := l.Step(Input{Kind: 99}); d.Ignored == "" {
		t.Fatal("unknown input not ignored")
	}
	if d, _ := l.Step(Input{Kind: InTimerFired, Timer: 99}); d.Ignored == "" {
		t.Fatal("unknown timer not ignored")
	}
}

func TestTokenHash(t *testing.T) {
	// SHA-256 of "abc" (FIPS 180-2 test vector), in hex.
	if got := TokenHash("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("TokenHash(abc) = %s", got)
	}
	if TokenHash("a") == TokenHash("b") {
		t.Fatal("different tokens hash alike")
	}
}

func TestEveryEnumName(t *testing.T) {
	sources := map[LogSource]string{SourceUnspecified: "UNSPECIFIED", SourceDriver: "DRIVER", SourceBeforeLeaseHook: "BEFORE_LEASE_HOOK",
		SourceAfterLeaseHook: "AFTER_LEASE_HOOK", SourceSystem: "SYSTEM", SourceMessage: "MESSAGE"}
	for s, want := range sources {
		if s.String() != want {
			t.Errorf("LogSource(%d) = %s, want %s", s, s, want)
		}
	}
	healths := map[Health]string{HealthUnspecified: "unspecified", HealthGood: "good", HealthUnknown: "unknown", HealthBad: "bad", HealthMaintenance: "maintenance"}
	for h, want := range healths {
		if h.String() != want {
			t.Errorf("Health(%d) = %s, want %s", h, h, want)
		}
	}
	for s := StatusUnspecified; s <= StatusAfterLeaseHookFailed; s++ {
		if strings.Contains(s.String(), "(") {
			t.Errorf("ExporterStatus(%d) has no name", s)
		}
	}
	for _, s := range []Severity{SeverityInfo, SeverityWarn, SeverityError} {
		if strings.Contains(s.String(), "(") {
			t.Errorf("Severity(%d) has no name", s)
		}
	}
}

// A hook whose shim reported its exit is never failed by its backstop while its last
// lines are made durable: the timer becomes a watchdog that warns and re-arms, and the
// hook's own result decides (issue 13: a successful hook printing 40,000 lines was
// failed with "no exit report within 30s").
func TestShimExitedHookIsNeverFailedByItsBackstop(t *testing.T) {
	l := NewLease(Spec{JobID: "2b1f2f5e-5c1e-4f0e-9a43-0a4c4b9c1d11", Board: "b", Duration: time.Hour,
		Before: &HookPolicy{Timeout: 5 * time.Second, OnFailure: PolicyEndLease}})
	for _, in := range []Input{Start(), BoardAcquired(), HookShimExited(HookBefore)} {
		if _, err := l.Step(in); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		d, err := l.Step(TimerFired(TimerBeforeHook))
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(d); got != "log WARN; arm beforeLease hook" {
			t.Fatalf("backstop after the shim's exit: %s, want a warning and a re-armed watchdog", got)
		}
		if l.Phase() != PhaseBeforeLease || l.State.BeforeFailed {
			t.Fatalf("lease %s, failed %v", l.Phase(), l.State.BeforeFailed)
		}
	}
	d, err := l.Step(HookExited(HookBefore, true, ""))
	if err != nil {
		t.Fatal(err)
	}
	if got := summary(d); got != "cancel beforeLease hook; BEFORE_LEASE>READY[LEASE_READY]" {
		t.Fatalf("hook exit after draining: %s", got)
	}
	if l.State.HookDraining {
		t.Fatal("draining flag left set")
	}
}
