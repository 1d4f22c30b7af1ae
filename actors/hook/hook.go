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
	"os"
	"path/filepath"

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
	token    struct{ _ byte }
	linesMsg struct {
		tok   *token
		lines []jhook.Line
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
	case *linesMsg:
		if m.tok == w.tok {
			w.lines(ctx, m.lines)
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
	onLine := func(ls []jhook.Line) { root.Send(self, &linesMsg{tok: tok, lines: ls}) }

	rec, ok, err := w.cfg.Store.Load(w.cfg.JobID)
	if err != nil {
		w.cfg.Logger.Error("load lease record", "error", err)
	}
	var run *jhook.Run
	var startErr error
	var offset int64
	if ok && rec.Hook != nil && rec.Hook.Kind == w.cfg.Kind {
		offset = rec.Hook.Offset
	}
	switch {
	case ok && rec.Hook != nil && rec.Hook.Kind == w.cfg.Kind && rec.Hook.Pid != 0:
		h := rec.Hook
		w.cfg.Logger.Info("adopting hook shim", "hook", w.cfg.Kind.String(), "pid", h.Pid, "offset", h.Offset)
		run, startErr = w.cfg.Runner.Adopt(h.Dir, h.Pid, h.StartTime, h.Offset, onLine)
	case started(w.cfg.Spec.Dir):
		// A run was started, but the daemon died before it recorded the shim's pid: find
		// the shim by its spool directory, or its result if it already finished.
		run, startErr = w.find(offset, onLine)
	default:
		run, startErr = w.startRun(onLine)
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

func (w *watcher) lines(ctx actor.Context, ls []jhook.Line) {
	for _, l := range ls {
		ctx.Send(w.cfg.Outbox, &actors.Emit{Event: connector.Event{Board: w.cfg.Board, JobID: w.cfg.JobID,
			Hook: &connector.HookLine{Source: w.cfg.Kind.Source(), Severity: l.Severity, Text: l.Text, Cut: l.Cut, Progress: l.Progress, Offset: l.Offset}}})
	}
	if err := w.cfg.Store.SetHookOffset(w.cfg.JobID, ls[len(ls)-1].Offset); err != nil {
		w.cfg.Logger.Error("record hook offset", "error", err)
	}
}

// started reports whether a run was started in dir (it exists and is not empty).
func started(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

func (w *watcher) startRun(onLine func([]jhook.Line)) (*jhook.Run, error) {
	run, err := w.cfg.Runner.Start(w.cfg.Spec, onLine)
	if err == nil {
		w.record(run.Pid(), run.StartTime(), 0)
	}
	return run, err
}

func (w *watcher) record(pid int, startTime uint64, offset int64) {
	if err := w.cfg.Store.SaveHook(w.cfg.JobID, &jobs.HookRun{Kind: w.cfg.Kind, Dir: w.cfg.Spec.Dir,
		Pid: pid, StartTime: startTime, Offset: offset}); err != nil {
		w.cfg.Logger.Error("record hook run", "error", err)
	}
}

// find picks up a run whose shim pid was never recorded: alive, it is adopted; finished,
// its output and status are read; never forked (the spool holds no status and no shim
// serves it), the hook never ran, and it is started afresh.
func (w *watcher) find(offset int64, onLine func([]jhook.Line)) (*jhook.Run, error) {
	dir := w.cfg.Spec.Dir
	if pid, st, ok := jhook.FindShim(dir); ok {
		w.cfg.Logger.Info("found the hook's shim by its spool", "hook", w.cfg.Kind.String(), "pid", pid, "offset", offset)
		w.record(pid, st, offset)
		return w.cfg.Runner.Adopt(dir, pid, st, offset, onLine)
	}
	if _, err := os.Stat(filepath.Join(dir, "status")); err == nil {
		w.cfg.Logger.Info("the hook finished while the daemon was down", "hook", w.cfg.Kind.String(), "offset", offset)
		return w.cfg.Runner.Adopt(dir, 0, 0, offset, onLine)
	}
	w.cfg.Logger.Info("the hook's shim never started; starting it now", "hook", w.cfg.Kind.String())
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	return w.startRun(onLine)
}
