// Package hook is the actor that watches one hook run of a lease: it starts the hook
// under its shim (or adopts a shim already running), turns its output lines into
// events, and tells the lease when the hook ended.
//
// Supervision: when this actor panics, its lease restarts it; the new instance adopts the
// running shim from the store (pid + start time) and reads on from the recorded offset,
// so the hook itself is not disturbed. Stopping the actor does not stop the hook: only a
// StopHook message does, so that a daemon shutting down leaves its shims running for the
// next start to adopt.
package hook

import (
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/hashicorp/go-hclog"
)

// Config is what a hook watcher needs.
type Config struct {
	Kind   jobs.HookKind
	Spec   jhook.Spec // complete: Name, Script or Exec, Timeout, Env, Dir
	JobID  string
	Board  string
	Outbox *actor.PID
	Store  actors.Store
	Runner *jhook.Runner
	Logger hclog.Logger
	// Middleware wraps the watcher's receive function (fault injection in tests).
	Middleware []actor.ReceiverMiddleware
}

// Props returns the props of a watcher for one hook run. Its parent (the lease) receives
// HookExited when the hook ended.
func Props(cfg Config) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &watcher{cfg: cfg}
	}, actor.WithReceiverMiddleware(append([]actor.ReceiverMiddleware{actors.LogPanics(cfg.Logger)}, cfg.Middleware...)...))
}

// Messages from a run's goroutines carry the token of the watcher instance that started
// it: after a restart, lines still queued for the old instance are dropped (the new one
// reads them again from the recorded offset), so none is reported twice.
type (
	// token must not be zero-size: distinct pointers to zero-size values may be equal.
	token   struct{ _ byte }
	lineMsg struct {
		tok  *token
		line jhook.Line
	}
	doneMsg struct {
		tok *token
		run *jhook.Run
	}
)

type watcher struct {
	cfg Config
	tok *token
	run *jhook.Run
}

func (w *watcher) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		w.start(ctx)
	case *lineMsg:
		if m.tok == w.tok {
			w.line(ctx, m.line)
		}
	case *doneMsg:
		if m.tok == w.tok {
			ctx.Send(ctx.Parent(), &actors.HookExited{Kind: w.cfg.Kind, Result: m.run.Result()})
		}
	case *actors.StopHook:
		if w.run != nil {
			w.run.Stop()
		}
	case *actor.Stopping, *actor.Restarting:
		if w.run != nil {
			w.run.Detach()
			w.run = nil
		}
	}
}

func (w *watcher) start(ctx actor.Context) {
	self, root := ctx.Self(), ctx.ActorSystem().Root
	tok := &token{}
	w.tok = tok
	onLine := func(l jhook.Line) { root.Send(self, &lineMsg{tok: tok, line: l}) }

	rec, ok, err := w.cfg.Store.Load(w.cfg.JobID)
	if err != nil {
		w.cfg.Logger.Error("load lease record", "error", err)
	}
	var run *jhook.Run
	var startErr error
	if ok && rec.Hook != nil && rec.Hook.Kind == w.cfg.Kind && rec.Hook.Pid != 0 {
		h := rec.Hook
		w.cfg.Logger.Info("adopting hook shim", "hook", w.cfg.Kind.String(), "pid", h.Pid, "offset", h.Offset)
		run, startErr = w.cfg.Runner.Adopt(h.Dir, h.Pid, h.StartTime, h.Offset, onLine)
	} else {
		run, startErr = w.cfg.Runner.Start(w.cfg.Spec, onLine)
		if startErr == nil {
			if err := w.cfg.Store.SaveHook(w.cfg.JobID, &actors.HookRun{Kind: w.cfg.Kind, Dir: run.Dir(),
				Pid: run.Pid(), StartTime: run.StartTime()}); err != nil {
				w.cfg.Logger.Error("record hook run", "error", err)
			}
		}
	}
	if startErr != nil {
		ctx.Send(ctx.Parent(), &actors.HookExited{Kind: w.cfg.Kind,
			Result: jhook.Result{ExitCode: -1, Err: fmt.Errorf("%s hook: %w", w.cfg.Kind, startErr)}})
		return
	}
	w.run = run
	go func() {
		<-run.Done()
		root.Send(self, &doneMsg{tok: tok, run: run})
	}()
}

func (w *watcher) line(ctx actor.Context, l jhook.Line) {
	ctx.Send(w.cfg.Outbox, &actors.Emit{Event: connector.Event{Board: w.cfg.Board, JobID: w.cfg.JobID,
		Hook: &connector.HookLine{Source: w.cfg.Kind.Source(), Severity: l.Severity, Text: l.Text, Cut: l.Cut, Offset: l.Offset}}})
	if err := w.cfg.Store.SetHookOffset(w.cfg.JobID, l.Offset); err != nil {
		w.cfg.Logger.Error("record hook offset", "error", err)
	}
}
