// Package connector defines how a supervisor and its coordinator talk, in the shape of
// Treadmill's connector: a Supervisor accepts StartJob and StopJob (an accepted request
// only means "accepted"; the outcome arrives later as events), and a SupervisorConnector
// carries the supervisor's events — job state updates, job errors, console logs and
// everything else — to the coordinator.
package connector

import (
	"context"
	"fmt"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

// StartJobRequest asks a supervisor to start a job: a lease of one board.
type StartJobRequest struct {
	// JobID is the job's (and the lease's) UUID.
	JobID string
	// Board names the board to lease.
	Board string
	// Client names who the lease is for.
	Client string
	// Token is the lease token the client will present; only its holder may use the board.
	Token string
	// Duration bounds the lease; zero means the board's configured default.
	Duration time.Duration
	// Parameters are free-form key/value pairs passed to the hooks' environment.
	Parameters map[string]string
	// Image is the image to provision the board with before its beforeLease hook (nil:
	// none).
	Image *jobs.Image
}

// StopJobRequest asks a supervisor to end a job.
type StopJobRequest struct {
	JobID  string
	Reason string
}

// ExtendJobRequest moves a job's end: it may last Remaining from now.
type ExtendJobRequest struct {
	JobID     string
	Remaining time.Duration
}

// Supervisor is the side that runs jobs. The calls return at once: nil means the
// request was accepted, a *jobs.JobError says why it was not. What happens to an
// accepted job is reported through the SupervisorConnector. ExtendJob is ours, beside
// Treadmill's two: the supervisor bounds every lease itself, so an extension granted by
// the coordinator must reach it.
type Supervisor interface {
	StartJob(ctx context.Context, req StartJobRequest) error
	StopJob(ctx context.Context, req StopJobRequest) error
	ExtendJob(ctx context.Context, req ExtendJobRequest) error
}

// ClearQuarantineRequest is an operator clearing a board's quarantine.
type ClearQuarantineRequest struct {
	Board, Reason string
	// By names the operator.
	By string
}

// QuarantineClearer is a Supervisor whose boards' quarantine an operator may clear
// through the coordinator (the board takes leases again; its new health is reported as
// a BoardStatus event).
type QuarantineClearer interface {
	ClearQuarantine(ctx context.Context, req ClearQuarantineRequest) error
}

// SupervisorConnector carries a supervisor's events to its coordinator and the
// coordinator's requests to the supervisor.
type SupervisorConnector interface {
	// Run serves the connection until ctx is done, handing requests to sup.
	Run(ctx context.Context, sup Supervisor) error
	// UpdateJobState reports a job's state transition (ev.Transition is set).
	UpdateJobState(ev Event)
	// ReportJobError reports an error about a job (ev.Error is set).
	ReportJobError(ev Event)
	// SendJobConsoleLog carries console bytes (ev.Console is set).
	SendJobConsoleLog(ev Event)
	// UpdateEvent carries every other event: hook lines, board status, console gaps.
	UpdateEvent(ev Event)
}

// Deliver hands ev to the connector method for its kind.
func Deliver(c SupervisorConnector, ev Event) {
	switch {
	case ev.Transition != nil:
		c.UpdateJobState(ev)
	case ev.Error != nil:
		c.ReportJobError(ev)
	case ev.Console != nil:
		c.SendJobConsoleLog(ev)
	default:
		c.UpdateEvent(ev)
	}
}

// Event is one thing a supervisor reports. Exactly one of the pointer fields is set.
// Seq numbers every event of one supervisor, gap-free, in the order they happened.
type Event struct {
	Seq   uint64
	Time  time.Time
	Board string
	// JobID is the lease the event belongs to; empty for a board's own events.
	JobID string

	Transition  *Transition
	Error       *jobs.JobError
	Console     *Console
	Hook        *HookLine
	Gap         *ConsoleGap
	BoardStatus *BoardStatus
}

// Transition is a lease's change of phase (see jobs.Transition).
type Transition = jobs.Transition

// Console is a chunk of a board's console output.
type Console struct {
	Source jobs.LogSource
	Data   []byte
	// Offset is where Data starts in the lease's console (the event's JobID), or in the
	// board's console since the supervisor started when there is no lease.
	Offset uint64
}

// HookLine is one line of a hook's output, or of the supervisor's own log for a lease
// (Source SYSTEM).
type HookLine struct {
	Source   jobs.LogSource
	Severity jobs.Severity
	Text     string
	Cut      bool
	// Progress marks a progress line: the state so far of a line the hook redraws
	// with carriage returns, superseded by the next line of the same source.
	Progress bool
	// Offset is the byte offset in the hook's spool just past this line (for a
	// progress line, the start of the line it shows).
	Offset int64
}

// ConsoleGap says console bytes were dropped (never silently).
type ConsoleGap struct {
	Bytes uint64
}

// BoardStatus is a board's status and health.
type BoardStatus struct {
	Status  jobs.ExporterStatus
	Health  jobs.Health
	Message string
}

// Kind returns a short name of the event's kind: "transition", "error", "console",
// "hook", "gap" or "board".
func (ev Event) Kind() string {
	switch {
	case ev.Transition != nil:
		return "transition"
	case ev.Error != nil:
		return "error"
	case ev.Console != nil:
		return "console"
	case ev.Hook != nil:
		return "hook"
	case ev.Gap != nil:
		return "gap"
	case ev.BoardStatus != nil:
		return "board"
	}
	return "empty"
}

// String describes the event on one line, for logs and test failures.
func (ev Event) String() string {
	head := fmt.Sprintf("#%d %s", ev.Seq, ev.Board)
	if ev.JobID != "" {
		head += " job " + ev.JobID
	}
	switch {
	case ev.Transition != nil:
		t := ev.Transition
		return fmt.Sprintf("%s: %s -> %s [%s] %s", head, t.From, t.To, t.Status, t.Message)
	case ev.Error != nil:
		return fmt.Sprintf("%s: error %v", head, ev.Error)
	case ev.Console != nil:
		return fmt.Sprintf("%s: console %d bytes", head, len(ev.Console.Data))
	case ev.Hook != nil:
		return fmt.Sprintf("%s: %s %s: %s", head, ev.Hook.Source, ev.Hook.Severity, ev.Hook.Text)
	case ev.Gap != nil:
		return fmt.Sprintf("%s: console gap of %d bytes", head, ev.Gap.Bytes)
	case ev.BoardStatus != nil:
		return fmt.Sprintf("%s: board %s health %s %s", head, ev.BoardStatus.Status, ev.BoardStatus.Health, ev.BoardStatus.Message)
	}
	return head + ": empty"
}

// Batcher is a connector that takes many events in one call. The outbox hands it every
// run of events it numbered together (a read chunk of hook output, a tick of console
// bytes), in sequence order, so that per-event costs (locks, wake-ups, writes) are paid
// once per batch.
type Batcher interface {
	DeliverBatch(evs []Event)
}

// Syncer is a connector that keeps events durably (the supervisor's on-disk outbox).
// Synced returns a channel closed once every event delivered before the call is
// durable. A failed write is retried, never reported as durable: the channel stays open
// until the events are on disk, or until the connector is closed (then nothing is
// implied; see the connector's own documentation).
type Syncer interface {
	Synced() <-chan struct{}
}

// DeliverAll hands evs to c: in one call if c is a Batcher, else one event at a time.
func DeliverAll(c SupervisorConnector, evs []Event) {
	if b, ok := c.(Batcher); ok {
		b.DeliverBatch(evs)
		return
	}
	for _, ev := range evs {
		Deliver(c, ev)
	}
}
