// Package host is the root actor of a supervisor: it builds the outbox and one board
// actor per configured board, and routes StartJob, StopJob and EndSession to the board
// that holds the job.
//
// Supervision: the outbox and the boards are resumed, not restarted, after a panic:
// their state (the sequence counter, which lease holds a board) must survive, and a
// restart of a board would stop its leases (protoactor stops a restarted actor's
// children). The panic is logged with its stack by actors.LogPanics.
package host

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/hashicorp/go-hclog"
)

// Config is what the host needs: the boards, and where events go.
type Config struct {
	// Boards are the boards to supervise. Their Outbox is set by the host; a nil Store,
	// Runner or Logger, or an empty StateDir, is taken from this Config.
	Boards []board.Config
	Conn   connector.SupervisorConnector
	// Sinks receive every numbered event, before the connector (see outbox.Sink).
	Sinks    []outbox.Sink
	Store    actors.Store
	Runner   *jhook.Runner
	StateDir string
	Logger   hclog.Logger
	// Restore are the journalled live leases to resume at start-up.
	Restore []jobs.Record
	// CannotResume are leases the journal could not give back; each is reported as a
	// CannotResume error.
	CannotResume []Unresumable
	// Reemit are journalled transitions the outbox never durably held: they are sent
	// first, before any board starts.
	Reemit []connector.Event
	// KeepEnded and HookEnv are passed to every board (see lease.Config).
	KeepEnded bool
	HookEnv   func(job string) []string
	// ConsoleTick is how long unattended console output may wait to be handed to the
	// outbox (zero: board.ConsoleTick).
	ConsoleTick time.Duration
}

// Unresumable is a lease that cannot be resumed after a restart, and why.
type Unresumable struct {
	JobID, Board, Reason string
}

// RequestTimeout bounds how long the host waits for a board to answer a request.
const RequestTimeout = 10 * time.Second

// Props returns the props of the host actor.
func Props(cfg Config) *actor.Props {
	resume := actor.NewOneForOneStrategy(0, 0, func(any) actor.Directive { return actor.ResumeDirective })
	return actor.PropsFromProducer(func() actor.Actor {
		return &hostActor{cfg: cfg, log: cfg.Logger}
	}, actor.WithSupervisor(resume), actor.WithReceiverMiddleware(actors.LogPanics(cfg.Logger)))
}

type hostActor struct {
	cfg    Config
	log    hclog.Logger
	outbox *actor.PID
	// console gathers the boards' unattended console output per tick.
	console *board.ConsoleBatch
	boards  map[string]*actor.PID
	jobs    map[string]string // job ID -> board name
}

func (h *hostActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		h.started(ctx)
	case *actor.Stopping, *actor.Restarting:
		// Before the outbox stops: the console output held for the next tick goes now.
		if h.console != nil {
			h.console.Close()
		}
	case *actors.StartJob:
		h.startJob(ctx, m)
	case *actors.StopJob:
		h.toJobBoard(ctx, m.Req.JobID, m)
	case *actors.EndSession:
		h.toJobBoard(ctx, m.JobID, m)
	case *actors.ExtendJob:
		h.toJobBoard(ctx, m.Req.JobID, m)
	case *actors.JobEnded:
		delete(h.jobs, m.JobID)
	case *actors.GetBoard:
		ctx.Respond(h.boardNames())
	case *BoardRequest:
		if pid, ok := h.boards[m.Board]; ok {
			ctx.RequestWithCustomSender(pid, m.Msg, ctx.Sender())
		} else {
			ctx.Respond(fmt.Errorf("no board named %q", m.Board))
		}
	}
}

// BoardRequest forwards Msg to the named board, which answers the sender.
type BoardRequest struct {
	Board string
	Msg   any
}

// Boards is the host's answer to GetBoard: the board names, in config order.
type Boards []string

func (h *hostActor) boardNames() Boards {
	names := make(Boards, 0, len(h.cfg.Boards))
	for _, b := range h.cfg.Boards {
		names = append(names, b.Name)
	}
	return names
}

func (h *hostActor) started(ctx actor.Context) {
	h.jobs = map[string]string{}
	h.boards = map[string]*actor.PID{}
	var err error
	h.outbox, err = ctx.SpawnNamed(outbox.Props(h.cfg.Conn, h.cfg.Sinks...), "outbox")
	if err != nil {
		panic(fmt.Errorf("start outbox: %w", err))
	}
	h.console = board.NewConsoleBatch(ctx.ActorSystem().Root, h.outbox, h.cfg.ConsoleTick)
	known := map[string]bool{}
	for _, bc := range h.cfg.Boards {
		known[bc.Name] = true
	}
	lost := append([]Unresumable(nil), h.cfg.CannotResume...)
	for _, r := range h.cfg.Restore {
		if known[r.Spec.Board] {
			h.jobs[r.Spec.JobID] = r.Spec.Board
			continue
		}
		lost = append(lost, Unresumable{JobID: r.Spec.JobID, Board: r.Spec.Board, Reason: fmt.Sprintf("board %q is no longer configured", r.Spec.Board)})
		if err := h.cfg.Store.Delete(r.Spec.JobID); err != nil {
			h.log.Error("forget lease", "job", r.Spec.JobID, "error", err)
		}
	}
	for _, ev := range h.cfg.Reemit {
		ctx.Send(h.outbox, &actors.Emit{Event: ev})
	}
	for _, u := range lost {
		h.log.Error("lease cannot be resumed", "job", u.JobID, "board", u.Board, "reason", u.Reason)
		ctx.Send(h.outbox, &actors.Emit{Event: connector.Event{Board: u.Board, JobID: u.JobID,
			Error: jobs.NewJobError(jobs.KindCannotResume, u.Reason)}})
	}
	byBoard := map[string][]jobs.Record{}
	for _, r := range h.cfg.Restore {
		byBoard[r.Spec.Board] = append(byBoard[r.Spec.Board], r)
	}
	for _, bc := range h.cfg.Boards {
		bc.Restore = byBoard[bc.Name]
		bc.KeepEnded = h.cfg.KeepEnded
		if bc.HookEnv == nil {
			bc.HookEnv = h.cfg.HookEnv
		}
		bc.Outbox, bc.Console = h.outbox, h.console
		if bc.Store == nil {
			bc.Store = h.cfg.Store
		}
		if bc.Runner == nil {
			bc.Runner = h.cfg.Runner
		}
		if bc.StateDir == "" {
			bc.StateDir = h.cfg.StateDir
		}
		if bc.Logger == nil {
			bc.Logger = h.log.Named("board").With("board", bc.Name)
		}
		pid, err := ctx.SpawnNamed(board.Props(bc), "board/"+bc.Name)
		if err != nil {
			h.log.Error("start board", "board", bc.Name, "error", err)
			continue
		}
		h.boards[bc.Name] = pid
	}
	h.log.Info("supervising boards", "boards", len(h.boards))
}

func (h *hostActor) startJob(ctx actor.Context, m *actors.StartJob) {
	pid, ok := h.boards[m.Req.Board]
	if !ok {
		h.refuse(ctx, m.Req, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("no board named %q on this supervisor", m.Req.Board)))
		return
	}
	if b, ok := h.jobs[m.Req.JobID]; ok && b != m.Req.Board {
		h.refuse(ctx, m.Req, jobs.NewJobError(jobs.KindJobAlreadyExists, fmt.Sprintf("job %s already exists on board %s", m.Req.JobID, b)))
		return
	}
	ctx.ReenterAfter(ctx.RequestFuture(pid, m, RequestTimeout), func(res any, err error) {
		reply := replyOf(res, err, m.Req.Board)
		if reply.Err == nil {
			h.jobs[m.Req.JobID] = m.Req.Board
			ctx.Respond(reply)
			return
		}
		h.refuse(ctx, m.Req, reply.Err)
	})
}

// refuse answers a StartJob with err, and reports err as an Error event: over the
// coordinator link, events are how a refusal is heard.
func (h *hostActor) refuse(ctx actor.Context, req connector.StartJobRequest, err error) {
	je, ok := err.(*jobs.JobError)
	if !ok {
		je = jobs.NewJobError(jobs.KindInternalError, err.Error())
	}
	ctx.Send(h.outbox, &actors.Emit{Event: connector.Event{Board: req.Board, JobID: req.JobID, Error: je}})
	ctx.Respond(&actors.JobReply{Err: je})
}

// toJobBoard forwards a request about a job to its board; a job that is not here is a no-op.
func (h *hostActor) toJobBoard(ctx actor.Context, jobID string, m any) {
	name, ok := h.jobs[jobID]
	if !ok {
		ctx.Respond(&actors.JobReply{})
		return
	}
	ctx.ReenterAfter(ctx.RequestFuture(h.boards[name], m, RequestTimeout), func(res any, err error) {
		ctx.Respond(replyOf(res, err, name))
	})
}

func replyOf(res any, err error, board string) *actors.JobReply {
	if err != nil {
		return &actors.JobReply{Err: jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("board %s did not answer: %v", board, err))}
	}
	if r, ok := res.(*actors.JobReply); ok {
		return r
	}
	return &actors.JobReply{Err: jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("board %s answered %T", board, res))}
}
