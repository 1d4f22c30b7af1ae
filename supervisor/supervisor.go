// Package supervisor assembles the daemon: the actor system with its host actor, the
// connector to the coordinator, and (later) the client-facing gRPC service and metrics.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/host"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/journal"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/hashicorp/go-hclog"
)

// Options configure a Supervisor.
type Options struct {
	// Boards to supervise.
	Boards []board.Config
	// StateDir holds hook spools (StateDir/hooks) and, later, the journal.
	StateDir string
	// Conn is the link to the coordinator (a local connector in the embedded mode).
	Conn connector.SupervisorConnector
	// Sinks receive every numbered event, before the connector (see outbox.Sink).
	Sinks []outbox.Sink
	// ShimCommand runs the hook shim (empty: this executable's hook-shim subcommand).
	ShimCommand []string
	// Store keeps live leases (nil: in memory).
	Store actors.Store
	// Logger is the root logger (nil: no logs).
	Logger hclog.Logger
	// RequestTimeout bounds StartJob, StopJob and EndSession (zero: 10s).
	RequestTimeout time.Duration
	// Exporter, if set, is the client-facing service: it is fed every event and learns
	// the lease tokens of accepted jobs.
	Exporter *exporter.Service
	// HookEnv, if set, adds to every hook's environment (see lease.Config).
	HookEnv func(job string) []string
	// ConsoleTick is how long unattended console output may wait to be handed to the
	// outbox (zero: board.ConsoleTick).
	ConsoleTick time.Duration
	// HookCgroup is the cgroup v2 directory for the hook runs' cgroups (config
	// hookCgroup); empty: found at start (jhook.FindCgroupBase), and without a writable
	// one hooks run without (one warning says what is lost).
	HookCgroup string
	// Images, if set, keeps the images of the leases resumed at start-up from
	// eviction before any lease fetches (supervisor/devices).
	Images interface{ Pin(job, digest string) }
}

// Supervisor is a running supervisor. It implements connector.Supervisor.
type Supervisor struct {
	opts Options
	sys  *actor.ActorSystem
	host *actor.PID
	log  hclog.Logger
}

var (
	_ connector.Supervisor = (*Supervisor)(nil)
	_ actors.Store         = (*journal.Journal)(nil)
)

// Start builds the actor tree and starts every board.
func Start(opts Options) (*Supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Store == nil {
		opts.Store = &actors.MemStore{}
	}
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.Conn == nil {
		return nil, errors.New("supervisor: no connector")
	}
	if opts.StateDir == "" {
		return nil, errors.New("supervisor: no state directory")
	}
	if err := os.MkdirAll(filepath.Join(opts.StateDir, "hooks"), 0o700); err != nil {
		return nil, fmt.Errorf("supervisor: state directory: %w", err)
	}
	seen := map[string]bool{}
	for _, b := range opts.Boards {
		if seen[b.Name] {
			return nil, fmt.Errorf("supervisor: board %q is configured twice", b.Name)
		}
		seen[b.Name] = true
	}
	if opts.Exporter != nil {
		opts.Sinks = append(opts.Sinks, opts.Exporter.Sink)
		if opts.Exporter.MotdFile == nil {
			// Where a lease's hooks find $JMP_MOTD_FILE (actors/lease: <spool>/<job>/motd).
			spool := filepath.Join(opts.StateDir, "hooks")
			opts.Exporter.MotdFile = func(job string) string { return filepath.Join(spool, job, "motd") }
		}
	}
	if len(opts.ShimCommand) == 0 {
		argv, why, err := jhook.DefaultShimCommand()
		if err != nil {
			return nil, fmt.Errorf("supervisor: %w", err)
		}
		opts.ShimCommand = argv
		opts.Logger.Info(why)
	}
	runner := &jhook.Runner{ShimCommand: opts.ShimCommand, Logger: opts.Logger.Named("hook")}
	switch base, err := jhook.FindCgroupBase(opts.HookCgroup); {
	case err != nil && opts.HookCgroup != "":
		return nil, fmt.Errorf("supervisor: hookCgroup %s cannot hold the hooks' cgroups: %w", opts.HookCgroup, err)
	case err != nil:
		opts.Logger.Warn("hooks run without a cgroup of their own: a process a hook starts in a new session outlives the hook if the hook kills its own shim (its shim's subreaper still collects the rest)",
			"reason", err.Error())
	default:
		runner.CgroupBase = base
		opts.Logger.Debug("each hook run gets a cgroup of its own", "under", base)
	}
	restore, lost, reemit, err := resume(opts, runner)
	if err != nil {
		return nil, err
	}
	// With a durable outbox, an ended lease's record stays until its last transitions
	// are on the outbox's disk.
	q, keepEnded := opts.Conn.(interface {
		OnEnded(func(job string))
	})
	if keepEnded {
		store := opts.Store
		q.OnEnded(func(job string) {
			if err := store.Delete(job); err != nil {
				opts.Logger.Error("forget ended lease", "job", job, "error", err)
			}
		})
	}
	s := &Supervisor{opts: opts, log: opts.Logger, sys: actors.NewSystem(opts.Logger)}
	s.host = s.sys.Root.SpawnPrefix(host.Props(host.Config{Boards: opts.Boards, Conn: opts.Conn, Sinks: opts.Sinks,
		Store: opts.Store, Runner: runner, StateDir: opts.StateDir, Logger: opts.Logger.Named("host"),
		Restore: restore, CannotResume: lost, Reemit: reemit, KeepEnded: keepEnded, HookEnv: opts.HookEnv,
		ConsoleTick: opts.ConsoleTick}), "host")
	return s, nil
}

// resume reads the live leases back from a durable store (the journal), and prepares
// what else must know them before the actors start: the client service (their tokens),
// the coordinator link (its Hello lists them), the read offsets of their hooks, and the
// transitions the outbox never durably held (sent again, with their step numbers).
func resume(opts Options, runner *jhook.Runner) (live []jobs.Record, lost []host.Unresumable, reemit []connector.Event, err error) {
	j, ok := opts.Store.(interface {
		LoadAll() ([]jobs.Record, []journal.Damaged, error)
	})
	if !ok {
		return nil, nil, nil, nil
	}
	recs, damaged, err := j.LoadAll()
	if err != nil {
		return nil, nil, nil, err
	}
	for _, d := range damaged {
		lost = append(lost, host.Unresumable{JobID: d.JobID, Reason: "its journal record is unreadable: " + d.Reason})
		if err := opts.Store.Delete(d.JobID); err != nil {
			opts.Logger.Error("forget damaged lease record", "job", d.JobID, "error", err)
		}
	}
	offsets, _ := opts.Conn.(interface {
		HookOffset(job string, source jobs.LogSource) (int64, bool)
	})
	seeds, _ := opts.Conn.(interface {
		Resume(job, board string, phase jobs.Phase)
	})
	steps, _ := opts.Conn.(interface {
		TransitionStep(job string) int
	})
	for _, r := range recs {
		job := r.Spec.JobID
		var unsent []connector.Event
		// A hook that finished while its last lines were not yet on the outbox's disk:
		// they are read again from its spool.
		if r.Hook != nil && r.Hook.Dir != "" && (r.State.HookRunning == jobs.HookNone || r.State.HookRunning != r.Hook.Kind) && offsets != nil {
			reemit = append(reemit, finishedHookLines(opts, runner, r, offsets)...)
		}
		if steps != nil {
			held := steps.TransitionStep(job)
			for _, t := range r.Reported {
				if t.Step > held {
					unsent = append(unsent, connector.Event{Board: r.Spec.Board, JobID: job, Transition: &t})
				}
			}
			if len(unsent) > 0 {
				opts.Logger.Info("sending transitions the outbox did not hold", "job", job, "count", len(unsent), "outbox_step", held)
			}
			reemit = append(reemit, unsent...)
		}
		if seeds != nil {
			seeds.Resume(job, r.Spec.Board, r.State.Phase)
		}
		if r.State.Phase.Terminal() {
			// Over: once its last transitions are on the outbox's disk the record goes
			// (at once if they already are).
			if len(unsent) == 0 {
				if err := opts.Store.Delete(job); err != nil {
					opts.Logger.Error("forget ended lease", "job", job, "error", err)
				}
			}
			continue
		}
		// A running hook's output resumes where the outbox durably has it (0 if none of
		// its lines reached it): no line is lost or doubled.
		if k := r.State.HookRunning; k != jobs.HookNone && offsets != nil {
			off, _ := offsets.HookOffset(job, k.Source())
			if r.Hook == nil || r.Hook.Kind != k {
				r.Hook = &jobs.HookRun{Kind: k}
			}
			if off != r.Hook.Offset {
				opts.Logger.Info("hook output resumes where the outbox has it", "job", job, "journal_offset", r.Hook.Offset, "outbox_offset", off)
			}
			r.Hook.Offset = off
			if err := opts.Store.SaveHook(job, r.Hook); err != nil {
				return nil, nil, nil, err
			}
		}
		if opts.Exporter != nil {
			opts.Exporter.Restore(job, r.Spec.Board, r.Spec.TokenHash, r.State.Phase)
		}
		if opts.Images != nil && r.Spec.Image != nil {
			opts.Images.Pin(job, r.Spec.Image.Digest)
		}
		opts.Logger.Info("resuming lease", "job", job, "board", r.Spec.Board, "phase", r.State.Phase.String())
		live = append(live, r)
	}
	return live, lost, reemit, nil
}

func (s *Supervisor) request(ctx context.Context, msg any) error {
	timeout := s.opts.RequestTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	res, err := s.sys.Root.RequestFuture(s.host, msg, timeout).Result()
	if err != nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("supervisor did not answer: %v", err))
	}
	r, ok := res.(*actors.JobReply)
	if !ok {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("supervisor answered %T", res))
	}
	return r.Err
}

// StartJob asks for a job to be started. nil means accepted; the lease's progress is
// reported as events.
func (s *Supervisor) StartJob(ctx context.Context, req connector.StartJobRequest) error {
	return s.request(ctx, &actors.StartJob{Req: req})
}

// StopJob asks for a job to end. Stopping a job that is not here is a no-op.
func (s *Supervisor) StopJob(ctx context.Context, req connector.StopJobRequest) error {
	return s.request(ctx, &actors.StopJob{Req: req})
}

// ExtendJob moves a job's end to req.Remaining from now. A job that is gone or ending
// is left alone.
func (s *Supervisor) ExtendJob(ctx context.Context, req connector.ExtendJobRequest) error {
	return s.request(ctx, &actors.ExtendJob{Req: req})
}

// ClearQuarantine clears a board's quarantine (an operator's request through the
// coordinator). A board that is not quarantined is left as it is.
func (s *Supervisor) ClearQuarantine(ctx context.Context, req connector.ClearQuarantineRequest) error {
	return s.request(ctx, &host.BoardRequest{Board: req.Board, Msg: &actors.ClearQuarantine{Reason: req.Reason, By: req.By}})
}

// EndSession is a client ending its lease.
func (s *Supervisor) EndSession(ctx context.Context, board, jobID string) error {
	return s.request(ctx, &actors.EndSession{Board: board, JobID: jobID})
}

// Board returns a board's state.
func (s *Supervisor) Board(name string) (actors.BoardState, error) {
	res, err := s.sys.Root.RequestFuture(s.host, &host.BoardRequest{Board: name, Msg: &actors.GetBoard{}}, s.opts.RequestTimeout).Result()
	if err != nil {
		return actors.BoardState{}, fmt.Errorf("board %s: %w", name, err)
	}
	switch r := res.(type) {
	case *actors.BoardState:
		return *r, nil
	case error:
		return actors.BoardState{}, r
	}
	return actors.BoardState{}, fmt.Errorf("board %s: unexpected answer %T", name, res)
}

// Run serves the connector until ctx is done, then stops the supervisor.
func (s *Supervisor) Run(ctx context.Context) error {
	var sup connector.Supervisor = s
	if s.opts.Exporter != nil {
		// The client service sees every job request; an operator's clearing of a
		// quarantine goes straight to the boards.
		sup = clearsQuarantine{Supervisor: s.opts.Exporter.Wrap(s), s: s}
	}
	err := s.opts.Conn.Run(ctx, sup)
	s.Stop()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// clearsQuarantine is a wrapped Supervisor that still clears quarantines
// (connector.QuarantineClearer).
type clearsQuarantine struct {
	connector.Supervisor
	s *Supervisor
}

func (c clearsQuarantine) ClearQuarantine(ctx context.Context, req connector.ClearQuarantineRequest) error {
	return c.s.ClearQuarantine(ctx, req)
}

// StopTimeout bounds Stop.
const StopTimeout = 15 * time.Second

// Stop stops every actor. Hooks that are running go on under their shims (they end by
// their own timeout); nothing is killed on the way out.
func (s *Supervisor) Stop() {
	if err := s.sys.Root.PoisonFuture(s.host).Wait(); err != nil {
		s.log.Warn("actors did not stop in time", "error", err)
	}
	s.sys.Shutdown()
}

// finishedHookLines reads a finished hook's output from where the outbox durably has it
// to the end, as events to send again. A spool that is gone yields nothing.
func finishedHookLines(opts Options, runner *jhook.Runner, r jobs.Record, offsets interface {
	HookOffset(job string, source jobs.LogSource) (int64, bool)
}) []connector.Event {
	job, k := r.Spec.JobID, r.Hook.Kind
	off, _ := offsets.HookOffset(job, k.Source())
	// Nothing past the outbox's offset (the usual case): no need to read the spool.
	if fi, err := os.Stat(filepath.Join(r.Hook.Dir, "output")); err != nil || fi.Size() <= off {
		return nil
	}
	var evs []connector.Event
	run, err := runner.Adopt(r.Hook.Dir, 0, 0, off, func(ls []jhook.Line) {
		for _, l := range ls {
			evs = append(evs, connector.Event{Board: r.Spec.Board, JobID: job, Hook: &connector.HookLine{
				Source: k.Source(), Severity: l.Severity, Text: l.Text, Cut: l.Cut, Progress: l.Progress, Offset: l.Offset}})
		}
	})
	if err != nil {
		opts.Logger.Warn("read a finished hook's spool", "job", job, "hook", k.String(), "error", err)
		return nil
	}
	select {
	case <-run.Done():
	case <-time.After(10 * time.Second):
		run.Detach()
	}
	if len(evs) > 0 {
		opts.Logger.Info("sending hook lines the outbox did not hold", "job", job, "hook", k.String(), "count", len(evs), "outbox_offset", off)
	}
	return evs
}
