package jobs

import "testing"

// transitionTable states, for every phase and every input, the phase the lease is in
// afterwards and the decision's effects in order (summary format: "FROM>TO[STATUS]"
// for a reported transition). The spec has both hooks with onFailure endLease; each
// phase starts from the representative state in phaseStates.
var transitionTable = []struct {
	phase Phase
	input string
	want  Phase
	does  string
}{
	{PhaseCreated, "start", PhaseStarting, "CREATED>STARTING[AVAILABLE]; arm lease; acquire"},
	{PhaseCreated, "acquired", PhaseCreated, "ignored"},
	{PhaseCreated, "before-ok", PhaseCreated, "ignored"},
	{PhaseCreated, "before-fail", PhaseCreated, "ignored"},
	{PhaseCreated, "after-ok", PhaseCreated, "ignored"},
	{PhaseCreated, "after-fail", PhaseCreated, "ignored"},
	{PhaseCreated, "end", PhaseCreated, "(remembered)"},
	{PhaseCreated, "t-lease", PhaseCreated, "ignored"},
	{PhaseCreated, "t-before", PhaseCreated, "ignored"},
	{PhaseCreated, "t-after", PhaseCreated, "ignored"},
	{PhaseCreated, "t-release", PhaseCreated, "ignored"},
	{PhaseCreated, "released", PhaseCreated, "ignored"},
	{PhaseCreated, "extend", PhaseCreated, "ignored"},
	{PhaseCreated, "abort", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; CREATED>FAILED[AVAILABLE]"},
	{PhaseCreated, "before-shim-exited", PhaseCreated, "ignored"},
	{PhaseCreated, "after-shim-exited", PhaseCreated, "ignored"},
	{PhaseStarting, "start", PhaseStarting, "ignored"},
	{PhaseStarting, "acquired", PhaseBeforeLease, "STARTING>BEFORE_LEASE[BEFORE_LEASE_HOOK]; run beforeLease; arm beforeLease hook"},
	{PhaseStarting, "before-ok", PhaseStarting, "ignored"},
	{PhaseStarting, "before-fail", PhaseStarting, "ignored"},
	{PhaseStarting, "after-ok", PhaseStarting, "ignored"},
	{PhaseStarting, "after-fail", PhaseStarting, "ignored"},
	{PhaseStarting, "end", PhaseReleasing, "cancel lease; STARTING>ENDING[AVAILABLE]; ENDING>AFTER_LEASE[AVAILABLE]; AFTER_LEASE>RELEASING[AVAILABLE]; release; arm release"},
	{PhaseStarting, "t-lease", PhaseReleasing, "cancel lease; STARTING>ENDING[AVAILABLE]; ENDING>AFTER_LEASE[AVAILABLE]; AFTER_LEASE>RELEASING[AVAILABLE]; release; arm release"},
	{PhaseStarting, "t-before", PhaseStarting, "ignored"},
	{PhaseStarting, "t-after", PhaseStarting, "ignored"},
	{PhaseStarting, "t-release", PhaseStarting, "ignored"},
	{PhaseStarting, "released", PhaseStarting, "ignored"},
	{PhaseStarting, "extend", PhaseStarting, "arm lease"},
	{PhaseStarting, "abort", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; STARTING>FAILED[AVAILABLE]"},
	{PhaseStarting, "before-shim-exited", PhaseStarting, "ignored"},
	{PhaseStarting, "after-shim-exited", PhaseStarting, "ignored"},
	{PhaseBeforeLease, "start", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "acquired", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "before-ok", PhaseReady, "cancel beforeLease hook; BEFORE_LEASE>READY[LEASE_READY]"},
	{PhaseBeforeLease, "before-fail", PhaseReleasing, "cancel beforeLease hook; log ERROR; cancel lease; BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED]; ENDING>AFTER_LEASE[BEFORE_LEASE_HOOK_FAILED]; AFTER_LEASE>RELEASING[BEFORE_LEASE_HOOK_FAILED]; release; arm release"},
	{PhaseBeforeLease, "after-ok", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "after-fail", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "end", PhaseBeforeLease, "log INFO"},
	{PhaseBeforeLease, "t-lease", PhaseBeforeLease, "log INFO"},
	{PhaseBeforeLease, "t-before", PhaseReleasing, "stop beforeLease; log ERROR; cancel lease; BEFORE_LEASE>ENDING[BEFORE_LEASE_HOOK_FAILED]; ENDING>AFTER_LEASE[BEFORE_LEASE_HOOK_FAILED]; AFTER_LEASE>RELEASING[BEFORE_LEASE_HOOK_FAILED]; release; arm release"},
	{PhaseBeforeLease, "t-after", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "t-release", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "released", PhaseBeforeLease, "ignored"},
	{PhaseBeforeLease, "extend", PhaseBeforeLease, "arm lease"},
	{PhaseBeforeLease, "abort", PhaseFailed, "stop beforeLease; cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; BEFORE_LEASE>FAILED[AVAILABLE]"},
	{PhaseBeforeLease, "before-shim-exited", PhaseBeforeLease, "arm beforeLease hook"},
	{PhaseBeforeLease, "after-shim-exited", PhaseBeforeLease, "ignored"},
	{PhaseReady, "start", PhaseReady, "ignored"},
	{PhaseReady, "acquired", PhaseReady, "ignored"},
	{PhaseReady, "before-ok", PhaseReady, "ignored"},
	{PhaseReady, "before-fail", PhaseReady, "ignored"},
	{PhaseReady, "after-ok", PhaseReady, "ignored"},
	{PhaseReady, "after-fail", PhaseReady, "ignored"},
	{PhaseReady, "end", PhaseAfterLease, "cancel lease; READY>ENDING[AFTER_LEASE_HOOK]; ENDING>AFTER_LEASE[AFTER_LEASE_HOOK]; run afterLease; arm afterLease hook"},
	{PhaseReady, "t-lease", PhaseAfterLease, "cancel lease; READY>ENDING[AFTER_LEASE_HOOK]; ENDING>AFTER_LEASE[AFTER_LEASE_HOOK]; run afterLease; arm afterLease hook"},
	{PhaseReady, "t-before", PhaseReady, "ignored"},
	{PhaseReady, "t-after", PhaseReady, "ignored"},
	{PhaseReady, "t-release", PhaseReady, "ignored"},
	{PhaseReady, "released", PhaseReady, "ignored"},
	{PhaseReady, "extend", PhaseReady, "arm lease"},
	{PhaseReady, "abort", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; READY>FAILED[AVAILABLE]"},
	{PhaseReady, "before-shim-exited", PhaseReady, "ignored"},
	{PhaseReady, "after-shim-exited", PhaseReady, "ignored"},
	{PhaseEnding, "start", PhaseEnding, "ignored"},
	{PhaseEnding, "acquired", PhaseEnding, "ignored"},
	{PhaseEnding, "before-ok", PhaseEnding, "ignored"},
	{PhaseEnding, "before-fail", PhaseEnding, "ignored"},
	{PhaseEnding, "after-ok", PhaseEnding, "ignored"},
	{PhaseEnding, "after-fail", PhaseEnding, "ignored"},
	{PhaseEnding, "end", PhaseEnding, "ignored"},
	{PhaseEnding, "t-lease", PhaseEnding, "ignored"},
	{PhaseEnding, "t-before", PhaseEnding, "ignored"},
	{PhaseEnding, "t-after", PhaseEnding, "ignored"},
	{PhaseEnding, "t-release", PhaseEnding, "ignored"},
	{PhaseEnding, "released", PhaseEnding, "ignored"},
	{PhaseEnding, "extend", PhaseEnding, "ignored"},
	{PhaseEnding, "abort", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; ENDING>FAILED[AVAILABLE]"},
	{PhaseEnding, "before-shim-exited", PhaseEnding, "ignored"},
	{PhaseEnding, "after-shim-exited", PhaseEnding, "ignored"},
	{PhaseAfterLease, "start", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "acquired", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "before-ok", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "before-fail", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "after-ok", PhaseReleasing, "cancel afterLease hook; AFTER_LEASE>RELEASING[AVAILABLE]; release; arm release"},
	{PhaseAfterLease, "after-fail", PhaseReleasing, "cancel afterLease hook; log ERROR; AFTER_LEASE>RELEASING[AFTER_LEASE_HOOK_FAILED]; release; arm release"},
	{PhaseAfterLease, "end", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "t-lease", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "t-before", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "t-after", PhaseReleasing, "stop afterLease; log ERROR; AFTER_LEASE>RELEASING[AFTER_LEASE_HOOK_FAILED]; release; arm release"},
	{PhaseAfterLease, "t-release", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "released", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "extend", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "abort", PhaseFailed, "stop afterLease; cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; release; error InternalError; AFTER_LEASE>FAILED[AVAILABLE]"},
	{PhaseAfterLease, "before-shim-exited", PhaseAfterLease, "ignored"},
	{PhaseAfterLease, "after-shim-exited", PhaseAfterLease, "arm afterLease hook"},
	{PhaseReleasing, "start", PhaseReleasing, "ignored"},
	{PhaseReleasing, "acquired", PhaseReleasing, "ignored"},
	{PhaseReleasing, "before-ok", PhaseReleasing, "ignored"},
	{PhaseReleasing, "before-fail", PhaseReleasing, "ignored"},
	{PhaseReleasing, "after-ok", PhaseReleasing, "ignored"},
	{PhaseReleasing, "after-fail", PhaseReleasing, "ignored"},
	{PhaseReleasing, "end", PhaseReleasing, "ignored"},
	{PhaseReleasing, "t-lease", PhaseReleasing, "ignored"},
	{PhaseReleasing, "t-before", PhaseReleasing, "ignored"},
	{PhaseReleasing, "t-after", PhaseReleasing, "ignored"},
	{PhaseReleasing, "t-release", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; error InternalError; RELEASING>FAILED[AVAILABLE]"},
	{PhaseReleasing, "released", PhaseDone, "cancel release; RELEASING>DONE[AVAILABLE]"},
	{PhaseReleasing, "extend", PhaseReleasing, "ignored"},
	{PhaseReleasing, "abort", PhaseFailed, "cancel lease; cancel beforeLease hook; cancel afterLease hook; cancel release; error InternalError; RELEASING>FAILED[AVAILABLE]"},
	{PhaseReleasing, "before-shim-exited", PhaseReleasing, "ignored"},
	{PhaseReleasing, "after-shim-exited", PhaseReleasing, "ignored"},
	{PhaseDone, "start", PhaseDone, "ignored"},
	{PhaseDone, "acquired", PhaseDone, "ignored"},
	{PhaseDone, "before-ok", PhaseDone, "ignored"},
	{PhaseDone, "before-fail", PhaseDone, "ignored"},
	{PhaseDone, "after-ok", PhaseDone, "ignored"},
	{PhaseDone, "after-fail", PhaseDone, "ignored"},
	{PhaseDone, "end", PhaseDone, "ignored"},
	{PhaseDone, "t-lease", PhaseDone, "ignored"},
	{PhaseDone, "t-before", PhaseDone, "ignored"},
	{PhaseDone, "t-after", PhaseDone, "ignored"},
	{PhaseDone, "t-release", PhaseDone, "ignored"},
	{PhaseDone, "released", PhaseDone, "ignored"},
	{PhaseDone, "extend", PhaseDone, "ignored"},
	{PhaseDone, "abort", PhaseDone, "ignored"},
	{PhaseDone, "before-shim-exited", PhaseDone, "ignored"},
	{PhaseDone, "after-shim-exited", PhaseDone, "ignored"},
	{PhaseFailed, "start", PhaseFailed, "ignored"},
	{PhaseFailed, "acquired", PhaseFailed, "ignored"},
	{PhaseFailed, "before-ok", PhaseFailed, "ignored"},
	{PhaseFailed, "before-fail", PhaseFailed, "ignored"},
	{PhaseFailed, "after-ok", PhaseFailed, "ignored"},
	{PhaseFailed, "after-fail", PhaseFailed, "ignored"},
	{PhaseFailed, "end", PhaseFailed, "ignored"},
	{PhaseFailed, "t-lease", PhaseFailed, "ignored"},
	{PhaseFailed, "t-before", PhaseFailed, "ignored"},
	{PhaseFailed, "t-after", PhaseFailed, "ignored"},
	{PhaseFailed, "t-release", PhaseFailed, "ignored"},
	{PhaseFailed, "released", PhaseFailed, "ignored"},
	{PhaseFailed, "extend", PhaseFailed, "ignored"},
	{PhaseFailed, "abort", PhaseFailed, "ignored"},
	{PhaseFailed, "before-shim-exited", PhaseFailed, "ignored"},
	{PhaseFailed, "after-shim-exited", PhaseFailed, "ignored"},
}

func TestEveryPhaseInputPair(t *testing.T) {
	if got, want := len(transitionTable), len(Phases)*len(tableInputs); got != want {
		t.Fatalf("table has %d rows, want one per (phase, input) pair: %d", got, want)
	}
	inputs := map[string]Input{}
	for _, ti := range tableInputs {
		inputs[ti.name] = ti.in
	}
	seen := map[[2]string]bool{}
	for _, row := range transitionTable {
		key := [2]string{row.phase.String(), row.input}
		if seen[key] {
			t.Fatalf("duplicate row %v", key)
		}
		seen[key] = true
		in, ok := inputs[row.input]
		if !ok {
			t.Fatalf("unknown input %q", row.input)
		}
		l := Restore(tableSpec(), phaseStates[row.phase])
		d, err := l.Step(in)
		if err != nil {
			t.Errorf("%s + %s: %v", row.phase, row.input, err)
			continue
		}
		if l.Phase() != row.want || summary(d) != row.does {
			t.Errorf("%s + %s:\n got %s, %q\nwant %s, %q", row.phase, row.input, l.Phase(), summary(d), row.want, row.does)
		}
	}
}
