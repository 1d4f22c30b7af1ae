// Package lease is the actor that carries one lease through its lifecycle. It holds no
// business rules: it feeds what happens to a jobs.Lease, saves the lease's record, and
// then performs the effects the lease decided, in order.
//
// Supervision: the lease actor's state lives in the Store, written before every
// effect. When the actor panics its board restarts it, and the new instance loads the
// record and goes on in the same phase: timers are re-armed to their recorded
// deadlines and a running hook is re-adopted, never started again. The hook watcher
// below it is restarted the same way (see package actors/hook).
package lease

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	hookactor "github.com/boardvisor/boardvisor/actors/hook"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/hashicorp/go-hclog"
)

// HookConfig says how to run one of the lease's hooks.
type HookConfig struct {
	// Spec holds Script or Exec, Timeout, Grace and WorkDir; Name, Env and Dir are filled
	// in for each run.
	Spec jhook.Spec
	// Policy is the hook's timeout and onFailure policy.
	Policy jobs.HookPolicy
}

// Config is what a lease actor needs. Its parent must be the board actor.
type Config struct {
	Spec jobs.Spec
	// Labels are the board's labels, for the hooks' environment. The job's parameters
	// (Spec.Params) are added to it as BOARDVISOR_PARAM_<KEY>.
	Labels        map[string]string
	Before, After *HookConfig
	Outbox        *actor.PID
	Store         actors.Store
	Runner        *jhook.Runner
	// SpoolDir is where the lease's hook runs keep their output: SpoolDir/<job>/<hook>.
	SpoolDir string
	Logger   hclog.Logger
	// HookSupervisor supervises the hook watcher (nil: restart it, at most 5 times a minute).
	HookSupervisor actor.SupervisorStrategy
	// Middleware and HookMiddleware wrap the lease actor's and its hook watcher's receive
	// functions (fault injection in tests).
	Middleware, HookMiddleware []actor.ReceiverMiddleware
	// HookEnv, if set, adds to each hook's environment (the hook's token and where to
	// call drivers).
	HookEnv func(job string) []string
	// KeepEnded keeps an ended lease's record in the store (with its last transitions):
	// the durable outbox deletes it once those are on disk. Without it the record goes
	// when the lease ends.
	KeepEnded bool
	// Images performs the image effects of a lease with an image (see image.go); nil:
	// the board cannot boot images.
	Images Images
}

// Props returns the props of a lease actor.
func Props(cfg Config) *actor.Props {
	sup := cfg.HookSupervisor
	if sup == nil {
		// A watcher that panics is restarted and adopts the shim again; one that keeps
		// panicking is stopped, and the lease counts the hook as failed.
		sup = actor.NewOneForOneStrategy(5, time.Minute, actor.DefaultDecider)
	}
	return actor.PropsFromProducer(func() actor.Actor {
		return &leaseActor{cfg: cfg, log: cfg.Logger}
	}, actor.WithSupervisor(sup), actor.WithReceiverMiddleware(append([]actor.ReceiverMiddleware{actors.LogPanics(cfg.Logger)}, cfg.Middleware...)...))
}

type timerFired struct {
	timer jobs.Timer
	gen   uint64
}

type slot struct {
	t   *time.Timer
	gen uint64
}

type leaseActor struct {
	cfg       Config
	log       hclog.Logger
	l         *jobs.Lease
	deadlines map[jobs.Timer]time.Time
	timers    map[jobs.Timer]slot
	gen       uint64
	hook      *actor.PID
	hookKind  jobs.HookKind
	// reported are the lease's transitions so far, journalled with its state.
	reported []connector.Transition
	// stopping is set once the actor is stopping (the daemon shuts down): from then on
	// it acts on nothing, and the journal holds where the lease is for the next start.
	stopping bool
	// work is the image fetch or provisioning in flight (image.go).
	work     *imageWork
	imageGen uint64
}

func (a *leaseActor) Receive(ctx actor.Context) {
	if a.stopping {
		return
	}
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.started(ctx)
	case *actors.Acquired:
		a.step(ctx, jobs.BoardAcquired())
	case *actors.Released:
		a.step(ctx, jobs.Released())
	case *actors.EndLease:
		a.step(ctx, jobs.EndRequested(m.Reason))
	case *actors.ExtendLease:
		a.step(ctx, jobs.Extend(m.Remaining))
	case *actors.HookShimExited:
		a.step(ctx, jobs.HookShimExited(m.Kind))
	case *actors.HookExited:
		a.hookExited(ctx, m)
	case *imageProgress, *imageResult:
		a.imageMessage(ctx, m)
	case *timerFired:
		if s, ok := a.timers[m.timer]; ok && s.gen == m.gen {
			delete(a.timers, m.timer)
			delete(a.deadlines, m.timer)
			a.step(ctx, jobs.TimerFired(m.timer))
		}
	case *actor.Terminated:
		if a.hook != nil && m.Who.Equal(a.hook) {
			a.hook = nil
			if a.l != nil && a.l.State.HookRunning == a.hookKind {
				a.step(ctx, jobs.HookExited(a.hookKind, false, "its watcher failed repeatedly"))
			}
		}
	case *actor.Stopping, *actor.Restarting:
		a.stopping = true
		for _, s := range a.timers {
			s.t.Stop()
		}
		clear(a.timers)
		a.stopImage()
	}
}

func (a *leaseActor) started(ctx actor.Context) {
	a.timers = map[jobs.Timer]slot{}
	a.deadlines = map[jobs.Timer]time.Time{}
	rec, ok, err := a.cfg.Store.Load(a.cfg.Spec.JobID)
	if err != nil {
		a.log.Error("load lease record; starting afresh", "error", err)
	}
	if !ok {
		a.l = jobs.NewLease(a.cfg.Spec)
		a.step(ctx, jobs.Start())
		return
	}
	// Resuming after a restart of this actor: same phase, same deadlines, same hook.
	a.l = jobs.Restore(rec.Spec, rec.State)
	a.reported = rec.Reported
	a.log.Info("resuming lease", "phase", a.l.Phase().String())
	for t, d := range rec.Deadlines {
		a.arm(ctx, t, time.Until(d))
	}
	st := a.l.State
	switch {
	case st.HookRunning != jobs.HookNone:
		a.spawnHook(ctx, st.HookRunning)
	case st.Phase == jobs.PhaseStarting:
		ctx.Send(ctx.Parent(), &actors.Acquire{JobID: a.cfg.Spec.JobID})
	case st.Phase == jobs.PhaseReleasing:
		ctx.Send(ctx.Parent(), &actors.Release{JobID: a.cfg.Spec.JobID})
	}
	for _, e := range a.l.Resume() {
		a.perform(ctx, e) // the image work in flight, or the board's image, again
	}
}

// hookExited feeds a hook's end to the lease. The hook's record is left in the store:
// the journalled phase says whether a hook runs, and the next hook's watcher replaces it.
func (a *leaseActor) hookExited(ctx actor.Context, m *actors.HookExited) {
	if a.hook != nil {
		ctx.Poison(a.hook)
	}
	a.hook = nil
	res := m.Result
	a.step(ctx, jobs.HookExited(m.Kind, res.OK(), describe(res)))
}

// describe says how a hook run failed, in words for a person.
func describe(r jhook.Result) string {
	switch {
	case r.Err != nil:
		return r.Err.Error()
	case r.TimedOut:
		return "timed out"
	case r.Signal != "":
		return "killed by " + r.Signal
	case r.ExitCode != 0:
		return fmt.Sprintf("exit status %d", r.ExitCode)
	}
	return "ok"
}

// step feeds one input to the lease, saves the record, and performs the effects.
func (a *leaseActor) step(ctx actor.Context, in jobs.Input) {
	d, err := a.l.Step(in)
	if err != nil {
		a.log.Error("lease state machine refused input; failing the lease", "input", in.String(), "error", err)
		d, err = a.l.Step(jobs.Abort(err.Error()))
		if err != nil {
			panic(fmt.Errorf("lease %s: abort refused: %w", a.cfg.Spec.JobID, err))
		}
	}
	if d.Ignored != "" {
		a.log.Debug("input ignored", "input", in.String(), "why", d.Ignored)
		return
	}
	a.log.Debug("input", "input", in.String(), "phase", a.l.Phase().String())
	// Journal first: the deadlines the effects will arm, the transitions they will
	// report (numbered), and the new state.
	now := time.Now()
	var steps []int
	for _, e := range d.Effects {
		switch e.Kind {
		case jobs.EffArmTimer:
			a.deadlines[e.Timer] = now.Add(e.After)
		case jobs.EffCancelTimer:
			delete(a.deadlines, e.Timer)
		case jobs.EffReport:
			t := connector.Transition{From: e.From, To: e.To, Status: e.Status, Message: e.Message, Step: len(a.reported) + 1, Stage: e.Stage}
			a.reported = append(a.reported, t)
			steps = append(steps, t.Step)
		}
	}
	if a.l.Phase().Terminal() && !a.cfg.KeepEnded {
		err = a.cfg.Store.Delete(a.cfg.Spec.JobID)
	} else {
		err = a.cfg.Store.SaveLease(a.l.Spec, a.l.State, a.deadlines, a.reported...)
	}
	if err != nil {
		a.log.Error("journal lease", "error", err)
	}
	if a.l.Phase().Terminal() {
		// The hooks are over: their spools go (the events hold their output).
		if err := os.RemoveAll(filepath.Join(a.cfg.SpoolDir, a.cfg.Spec.JobID)); err != nil {
			a.log.Warn("remove hook spools", "error", err)
		}
	}
	for _, e := range d.Effects {
		if e.Kind == jobs.EffReport {
			a.report(ctx, a.reported[steps[0]-1])
			steps = steps[1:]
			continue
		}
		a.perform(ctx, e)
	}
	if a.l.Phase().Terminal() {
		ctx.Stop(ctx.Self())
	}
}

func (a *leaseActor) perform(ctx actor.Context, e jobs.Effect) {
	job := a.cfg.Spec.JobID
	switch e.Kind {
	case jobs.EffAcquire:
		ctx.Send(ctx.Parent(), &actors.Acquire{JobID: job})
	case jobs.EffRelease:
		ctx.Send(ctx.Parent(), &actors.Release{JobID: job})
	case jobs.EffRunHook:
		a.spawnHook(ctx, e.Hook)
	case jobs.EffStopHook:
		if a.hook != nil {
			ctx.Send(a.hook, &actors.StopHook{})
		}
	case jobs.EffArmTimer:
		a.arm(ctx, e.Timer, e.After)
	case jobs.EffCancelTimer:
		if s, ok := a.timers[e.Timer]; ok {
			s.t.Stop()
			delete(a.timers, e.Timer)
		}
	case jobs.EffLog:
		a.emit(ctx, connector.Event{Hook: &connector.HookLine{Source: jobs.SourceSystem, Severity: e.Severity, Text: e.Message}})
	case jobs.EffError:
		a.emit(ctx, connector.Event{Error: e.Err})
	case jobs.EffQuarantine:
		ctx.Send(ctx.Parent(), &actors.Quarantine{JobID: job, Reason: e.Message})
	case jobs.EffFetchImage, jobs.EffProvision, jobs.EffStopImage, jobs.EffReleaseImage:
		a.image(ctx, e)
	}
}

// report tells the board and the world of a transition. The board hears first: whoever
// sees the event and then asks the board about the lease finds the board already knowing.
func (a *leaseActor) report(ctx actor.Context, t connector.Transition) {
	ctx.Send(ctx.Parent(), &actors.LeaseChanged{JobID: a.cfg.Spec.JobID, Phase: t.To, Status: t.Status, EndRequested: a.l.State.EndRequested})
	a.emit(ctx, connector.Event{Transition: &t})
}

func (a *leaseActor) emit(ctx actor.Context, ev connector.Event) {
	ev.Board, ev.JobID = a.cfg.Spec.Board, a.cfg.Spec.JobID
	ctx.Send(a.cfg.Outbox, &actors.Emit{Event: ev})
}

func (a *leaseActor) arm(ctx actor.Context, t jobs.Timer, after time.Duration) {
	if s, ok := a.timers[t]; ok {
		s.t.Stop()
	}
	a.gen++
	gen, self, root := a.gen, ctx.Self(), ctx.ActorSystem().Root
	a.timers[t] = slot{gen: gen, t: time.AfterFunc(max(after, 0), func() {
		root.Send(self, &timerFired{timer: t, gen: gen})
	})}
}

func (a *leaseActor) spawnHook(ctx actor.Context, k jobs.HookKind) {
	hc := a.cfg.Before
	if k == jobs.HookAfter {
		hc = a.cfg.After
	}
	if hc == nil {
		a.step(ctx, jobs.HookExited(k, false, "no "+k.String()+" hook is configured"))
		return
	}
	spec := hc.Spec
	spec.Name = k.String()
	spec.Timeout = hc.Policy.Timeout
	job := a.cfg.Spec.JobID
	spec.Dir = filepath.Join(a.cfg.SpoolDir, job, k.String())
	spec.Env = append(jhook.Env(job, a.cfg.Spec.Client, a.cfg.Spec.Board,
		filepath.Join(a.cfg.SpoolDir, job, "motd"), a.cfg.Labels), paramEnv(a.cfg.Spec.Params)...)
	if a.cfg.HookEnv != nil {
		spec.Env = append(spec.Env, a.cfg.HookEnv(job)...)
	}
	pid, err := ctx.SpawnNamed(hookactor.Props(hookactor.Config{Kind: k, Spec: spec, JobID: job, Board: a.cfg.Spec.Board,
		Outbox: a.cfg.Outbox, Store: a.cfg.Store, Runner: a.cfg.Runner, Logger: a.log.With("hook", k.String()),
		Middleware: a.cfg.HookMiddleware}), "hook/"+k.String())
	if err != nil {
		a.step(ctx, jobs.HookExited(k, false, fmt.Sprintf("cannot start its watcher: %v", err)))
		return
	}
	a.hook, a.hookKind = pid, k
}

func paramEnv(params map[string]string) []string {
	var env []string
	for k, v := range params {
		env = append(env, "BOARDVISOR_PARAM_"+jhook.EnvName(k)+"="+v)
	}
	sort.Strings(env)
	return env
}
