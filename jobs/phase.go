package jobs

import (
	"fmt"
	"strconv"
)

// Phase is where a lease is in its lifecycle (Jumpstarter JEP-0012). The numbers are
// those of boardvisor.v1.LeasePhase.
type Phase int

// The phases of a lease, in the order a lease normally passes through them. Done and
// Failed are terminal.
const (
	PhaseCreated     Phase = 1 // the lease exists; nothing has been done
	PhaseStarting    Phase = 2 // waiting for the board (the previous lease must finish)
	PhaseBeforeLease Phase = 3 // the beforeLease hook runs (or is passed through)
	PhaseReady       Phase = 4 // the client may use the board
	PhaseEnding      Phase = 5 // an end was acted on; the board is taken back from the client
	PhaseAfterLease  Phase = 6 // the afterLease hook runs (or is passed through)
	PhaseReleasing   Phase = 7 // the board is being returned to the pool
	PhaseDone        Phase = 8 // the lease ended normally
	PhaseFailed      Phase = 9 // the lease ended in failure
)

var phaseNames = [...]string{
	PhaseCreated:     "CREATED",
	PhaseStarting:    "STARTING",
	PhaseBeforeLease: "BEFORE_LEASE",
	PhaseReady:       "READY",
	PhaseEnding:      "ENDING",
	PhaseAfterLease:  "AFTER_LEASE",
	PhaseReleasing:   "RELEASING",
	PhaseDone:        "DONE",
	PhaseFailed:      "FAILED",
}

// Phases lists every phase in lifecycle order.
var Phases = []Phase{PhaseCreated, PhaseStarting, PhaseBeforeLease, PhaseReady, PhaseEnding,
	PhaseAfterLease, PhaseReleasing, PhaseDone, PhaseFailed}

// String returns the phase's name, e.g. "BEFORE_LEASE".
func (p Phase) String() string {
	if p.Valid() {
		return phaseNames[p]
	}
	return "Phase(" + strconv.Itoa(int(p)) + ")"
}

// Valid reports whether p is one of the defined phases.
func (p Phase) Valid() bool { return p >= PhaseCreated && p <= PhaseFailed }

// Terminal reports whether p is Done or Failed: a lease there takes no further input.
func (p Phase) Terminal() bool { return p == PhaseDone || p == PhaseFailed }

// ParsePhase returns the phase with the given name ("READY").
func ParsePhase(s string) (Phase, error) {
	for _, p := range Phases {
		if phaseNames[p] == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown lease phase %q", s)
}

// transitions is the one table of allowed phase changes. Every change of a lease's phase
// is checked against it. Failed is reachable from every live phase (an internal fault);
// every other edge moves forward.
var transitions = map[Phase][]Phase{
	PhaseCreated:     {PhaseStarting, PhaseFailed},
	PhaseStarting:    {PhaseBeforeLease, PhaseEnding, PhaseFailed},
	PhaseBeforeLease: {PhaseReady, PhaseEnding, PhaseFailed},
	PhaseReady:       {PhaseEnding, PhaseFailed},
	PhaseEnding:      {PhaseAfterLease, PhaseFailed},
	PhaseAfterLease:  {PhaseReleasing, PhaseFailed},
	PhaseReleasing:   {PhaseDone, PhaseFailed},
	PhaseDone:        nil,
	PhaseFailed:      nil,
}

// CanTransition reports whether the table allows a lease to move from one phase to another.
func CanTransition(from, to Phase) bool {
	for _, p := range transitions[from] {
		if p == to {
			return true
		}
	}
	return false
}

// InvalidTransitionError is returned when a phase change is not in the table.
type InvalidTransitionError struct {
	From, To Phase
}

func (e *InvalidTransitionError) Error() string {
	return fmt.Sprintf("invalid lease transition %s -> %s", e.From, e.To)
}

// RunningState is Treadmill's RunningJobState, reported beside the phase.
type RunningState int

// Treadmill's running job states. Initializing has a stage (InitStage).
const (
	RunningInitializing RunningState = 1
	RunningReady        RunningState = 2
	RunningTerminating  RunningState = 3
	RunningTerminated   RunningState = 4
)

// String returns the Treadmill name, e.g. "Initializing".
func (s RunningState) String() string {
	switch s {
	case RunningInitializing:
		return "Initializing"
	case RunningReady:
		return "Ready"
	case RunningTerminating:
		return "Terminating"
	case RunningTerminated:
		return "Terminated"
	}
	return "RunningState(" + strconv.Itoa(int(s)) + ")"
}

// InitStage is the stage of an Initializing job (Treadmill's JobInitializingStage).
type InitStage int

// Stages of an initializing job. A hook may report a finer stage as text. A lease with
// an image passes through FetchingImage, Allocating and Provisioning within the phase
// STARTING (State.Stage); each stage change is reported as a transition STARTING ->
// STARTING that names the new stage.
const (
	StageNone          InitStage = 0
	StageStarting      InitStage = 1
	StageProvisioning  InitStage = 2 // the board is provisioned with the image (and, for BEFORE_LEASE, the hook runs)
	StageFetchingImage InitStage = 3 // the image is fetched and verified
	StageAllocating    InitStage = 4 // the image is ready; waiting for the board
)

// String returns Treadmill's name, e.g. "FetchingImage", or "" for StageNone.
func (s InitStage) String() string {
	switch s {
	case StageStarting:
		return "Starting"
	case StageProvisioning:
		return "Provisioning"
	case StageFetchingImage:
		return "FetchingImage"
	case StageAllocating:
		return "Allocating"
	case StageNone:
		return ""
	}
	return "InitStage(" + strconv.Itoa(int(s)) + ")"
}

// stageOrder is the order of the image stages within STARTING: a lease only moves
// forward through it (see Lease.toStage).
var stageOrder = map[InitStage]int{StageNone: 0, StageStarting: 0, StageFetchingImage: 1, StageAllocating: 2, StageProvisioning: 3}

// CanStage reports whether a lease in STARTING may move from one stage to another.
func CanStage(from, to InitStage) bool {
	f, ok1 := stageOrder[from]
	t, ok2 := stageOrder[to]
	return ok1 && ok2 && to != StageNone && to != StageStarting && t > f
}

// InvalidStageError is returned when a stage change is not allowed.
type InvalidStageError struct {
	From, To InitStage
}

func (e *InvalidStageError) Error() string {
	return fmt.Sprintf("invalid stage change %q -> %q within STARTING", e.From, e.To)
}

// RunningStateOf maps a phase to Treadmill's running job state (DESIGN.md §8):
// CREATED and STARTING are Initializing{Starting}, BEFORE_LEASE is
// Initializing{Provisioning}, READY is Ready, ENDING, AFTER_LEASE and RELEASING are
// Terminating, DONE and FAILED are Terminated.
func RunningStateOf(p Phase) (RunningState, InitStage) {
	switch p {
	case PhaseCreated, PhaseStarting:
		return RunningInitializing, StageStarting
	case PhaseBeforeLease:
		return RunningInitializing, StageProvisioning
	case PhaseReady:
		return RunningReady, StageNone
	case PhaseEnding, PhaseAfterLease, PhaseReleasing:
		return RunningTerminating, StageNone
	case PhaseDone, PhaseFailed:
		return RunningTerminated, StageNone
	}
	return 0, StageNone
}

// RunningState maps a transition to Treadmill's running job state: as RunningStateOf
// its phase, with the stage it names when it names one (the image stages of STARTING).
func (t Transition) RunningState() (RunningState, InitStage) {
	rs, st := RunningStateOf(t.To)
	if rs == RunningInitializing && t.Stage != StageNone {
		st = t.Stage
	}
	return rs, st
}
