package actors

import (
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/jobs/hook"
)

// Emit asks the outbox to number an event and deliver it.
type Emit struct{ Event connector.Event }

// EmitBatch asks the outbox to number events and deliver them together, in order. If
// Durable is not nil, the outbox closes it once every event of the batch is durable
// (at once when the connector keeps nothing on disk).
type EmitBatch struct {
	Events  []connector.Event
	Durable chan struct{}
}

// StartJob asks the host (and then the board) to start a job. The answer is a *JobReply.
type StartJob struct{ Req connector.StartJobRequest }

// StopJob asks the host (and then the board) to end a job. The answer is a *JobReply.
type StopJob struct{ Req connector.StopJobRequest }

// EndSession is a client's request to end its lease. The answer is a *JobReply.
type EndSession struct{ Board, JobID string }

// JobReply answers StartJob, StopJob and EndSession: Err is nil when accepted, else a
// *jobs.JobError.
type JobReply struct{ Err error }

// Acquire is a lease asking its board for the board. The board answers with Acquired
// when the lease may have it (at once, or when the previous lease is released).
type Acquire struct{ JobID string }

// Acquired tells a lease that the board is its own.
type Acquired struct{}

// Release is a lease giving its board back (or withdrawing its Acquire). The board
// answers with Released.
type Release struct{ JobID string }

// Released confirms a Release.
type Released struct{}

// LeaseChanged tells a board that one of its leases changed phase.
type LeaseChanged struct {
	JobID        string
	Phase        jobs.Phase
	Status       jobs.ExporterStatus
	EndRequested bool
}

// Quarantine tells a board that a hook failed under onFailure: exit: it goes OFFLINE
// with health bad and takes no further leases until an operator clears it.
type Quarantine struct{ JobID, Reason string }

// ExtendLease tells a lease it may last Remaining from now.
type ExtendLease struct{ Remaining time.Duration }

// EndLease asks a lease to end.
type EndLease struct{ Reason jobs.EndReason }

// HookExited tells a lease that its hook finished.
type HookExited struct {
	Kind   jobs.HookKind
	Result hook.Result
}

// HookShimExited tells a lease that its hook's shim wrote the hook's exit status; the
// HookExited follows once the hook's last lines are durable.
type HookShimExited struct{ Kind jobs.HookKind }

// StopHook asks a hook watcher to stop its hook (the timeout ladder runs).
type StopHook struct{}

// DriverOutput carries bytes a driver read (a console) to its board.
type DriverOutput struct {
	Driver string
	Data   []byte
	At     time.Time // when the driver read it
}

// DriverUp tells a board that a driver (re)started.
type DriverUp struct{ Driver string }

// GetBoard asks a board for its state; the answer is a *BoardState.
type GetBoard struct{}

// BoardState is a board's state, as GetBoard answers it.
type BoardState struct {
	Name    string
	Status  jobs.ExporterStatus
	Health  jobs.Health
	Holder  string   // the job holding the board, if any
	Waiting []string // jobs waiting for the board, in order
}

// JobEnded tells the host that a job's lease actor is gone.
type JobEnded struct{ JobID string }

// ExtendJob asks the host (and then the board and the lease) to move a job's end. The
// answer is a *JobReply.
type ExtendJob struct{ Req connector.ExtendJobRequest }

// ClearQuarantine is an operator clearing a board's quarantine (health bad after a hook
// failed with onFailure: exit). The board answers with a *JobReply.
type ClearQuarantine struct{ Reason, By string }
