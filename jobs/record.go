package jobs

import "time"

// Transition is a lease's change of phase, with the board status that follows from it:
// what a lease reports, and what its journal record keeps of what it reported.
type Transition struct {
	From, To Phase
	Status   ExporterStatus
	Message  string
	// Step numbers the lease's transitions from 1; a transition sent again after a
	// restart keeps its number.
	Step int
	// Stage is the image stage entered, for a lease with an image in STARTING
	// (StageNone otherwise).
	Stage InitStage
}

// Record is what is kept of one live lease so that its actor can be rebuilt in the same
// phase: after a panic of the actor (in memory) and after a restart of the daemon (the
// journal, jobs/journal).
type Record struct {
	Spec  Spec
	State State
	// Deadlines holds when each armed timer fires.
	Deadlines map[Timer]time.Time
	// Hook is the hook run being watched, if any.
	Hook *HookRun
	// Reported are the transitions the lease reported so far, numbered by Step: after a
	// crash, those the outbox did not durably hold are sent again.
	Reported []Transition
}

// HookRun identifies a running hook shim so that a new watcher can adopt it.
type HookRun struct {
	Kind      HookKind
	Dir       string // spool directory
	Pid       int
	StartTime uint64 // the shim's start time (from /proc), so a reused pid is not mistaken for it
	Offset    int64  // spool offset just past the last line reported
}
