// Package hook is the actor that watches one hook run of a lease: it starts the hook
// under its shim (or adopts a shim already running), turns its output lines into
// events, and tells the lease when the hook ended.
//
// Output flows in chunks (one read of the spool, up to 64 KiB): the run's tail hands a
// chunk to the watcher, which sends it to the outbox as one EmitBatch and records the
// offset past it; the tail goes on reading while at most ChunksInFlight chunks are not
// yet durable, and waits for the oldest beyond that. A hook printing faster than the
// outbox can write therefore waits in its spool (and, past the shim's terminal, in its
// own write), never in memory. When the shim has
// written the hook's status the lease hears HookShimExited at once (its backstop no
// longer applies); HookExited follows once the last chunk is durable, so that every line
// of a hook is in the outbox before the lease's next transition.
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
	"sync"

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

// ChunksInFlight is how many chunks of a hook's output (one read of its spool, up to
// 64 KiB each) may be on their way to the outbox's disk at once, beyond which the tail
// waits: enough that the tail reads while the outbox commits, few enough that a hook
// printing faster than the disk takes it waits in its spool, not in memory.
const ChunksInFlight = 4

// Messages from a run's goroutines carry the token of the watcher instance that started
// it: after a restart, lines still queued for the old instance are dropped (the new one
// reads them again from the recorded offset), so none is reported twice.
type (
	// token must not be zero-size: distinct pointers to zero-size values may be equal.
	token    struct{ _ byte }
	linesMsg struct {
		tok     *token
		lines   []jhook.Line
		durable chan struct{} // closed by the outbox once the lines are durable
	}
	exitedMsg struct{ tok *token }
	doneMsg   struct {
		tok *token
		run *jhook.Run
	}
)

type watcher struct {
	cfg Config
	tok *token
	run *jhook.Run
	// quit is closed when this instance stops or restarts: it releases its run's tail
	// from waiting for durability, and its goroutines.
	quit chan struct{}
}

func (w *watcher) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		w.start(ctx)
	case *linesMsg:
		if m.tok == w.tok {
			w.lines(ctx, m)
		}
	case *exitedMsg:
		if m.tok == w.tok {
			ctx.Send(ctx.Parent(), &actors.HookShimExited{Kind: w.cfg.Kind})
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
		if w.quit != nil {
			close(w.quit)
			w.quit = nil
		}
		if w.run != nil {
			w.run.Detach()
			w.run = nil
		}
	}
}

func (w *watcher) start(ctx actor.Context) {
	self, root := ctx.Self(), ctx.ActorSystem().Root
	tok, quit := &token{}, make(chan struct{})
	w.tok, w.quit = tok, quit
	// The tail waits until the outbox has the chunk on disk (or this watcher stops).
	// The tail may have up to ChunksInFlight chunks on their way to the disk: it reads
	// the next chunk while the outbox commits the last ones (group commit), and waits
	// for the oldest before it goes further. The outbox makes chunks durable in order,
	// so the newest one's durability says all are.
	var mu sync.Mutex
	var inflight []chan struct{}
	onLine := func(ls []jhook.Line) {
		durable := make(chan struct{})
		root.Send(self, &linesMsg{tok: tok, lines: ls, durable: durable})
		mu.Lock()
		inflight = append(inflight, durable)
		var oldest chan struct{}
		if len(inflight) > ChunksInFlight {
			oldest, inflight = inflight[0], inflight[1:]
		}
		mu.Unlock()
		if oldest != nil {
			select {
			case <-oldest:
			case <-quit:
			}
		}
	}
	newest := func() chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if len(inflight) == 0 {
			return nil
		}
		return inflight[len(inflight)-1]
	}

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
		select {
		case <-run.Exited():
			root.Send(self, &exitedMsg{tok: tok})
		case <-quit:
			return
		}
		select {
		case <-run.Done():
		case <-quit:
			return
		}
		// Every line was handed over; the hook ends once the last chunk is durable.
		if d := newest(); d != nil {
			select {
			case <-d:
			case <-quit:
				return
			}
		}
		root.Send(self, &doneMsg{tok: tok, run: run})
	}()
}

// lines sends a chunk of the hook's output to the outbox, which closes m.durable once
// it is on disk, and records how far the output was handed over (a restarted watcher
// reads on from there).
func (w *watcher) lines(ctx actor.Context, m *linesMsg) {
	src := w.cfg.Kind.Source()
	evs := make([]connector.Event, len(m.lines))
	hls := make([]connector.HookLine, len(m.lines))
	for i, l := range m.lines {
		hls[i] = connector.HookLine{Source: src, Severity: l.Severity, Text: l.Text, Cut: l.Cut, Progress: l.Progress, Offset: l.Offset}
		evs[i] = connector.Event{Board: w.cfg.Board, JobID: w.cfg.JobID, Hook: &hls[i]}
	}
	ctx.Send(w.cfg.Outbox, &actors.EmitBatch{Events: evs, Durable: m.durable})
	if err := w.cfg.Store.SetHookOffset(w.cfg.JobID, m.lines[len(m.lines)-1].Offset); err != nil {
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
