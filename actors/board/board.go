// Package board is the actor for one board: its status and health, the one lease that
// holds it, the leases waiting for it (a small queue), and its drivers.
//
// Leases on one board are serialized (DESIGN.md §4 rule 4): a lease asks for the board
// (Acquire) before its beforeLease hook, and the board grants it only once the previous
// holder has released it, after its afterLease hook.
package board

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/hashicorp/go-hclog"
)

// Config describes one board.
type Config struct {
	Name   string
	Labels map[string]string
	// Queue is how many leases may wait while the board is held (0: none).
	Queue int
	// LeaseDuration is used when a StartJob carries no duration.
	LeaseDuration time.Duration
	Before, After *lease.HookConfig
	Drivers       []driver.Driver

	Outbox *actor.PID
	// Console, if set, gathers the board's console output for the outbox per tick
	// (shared by the boards of a host); nil sends each chunk as an event at once.
	Console  *ConsoleBatch
	Store    actors.Store
	Runner   *jhook.Runner
	StateDir string
	Logger   hclog.Logger
	// Strategy supervises the board's drivers and leases (zero: DefaultStrategy).
	Strategy Strategy
	// LeaseMiddleware and HookMiddleware wrap the receive functions of the board's lease
	// actors and hook watchers (fault injection in tests).
	LeaseMiddleware, HookMiddleware []actor.ReceiverMiddleware
	// Restore are the journalled leases of this board to resume at start-up.
	Restore []jobs.Record
	// KeepEnded and HookEnv are passed to the board's leases (see lease.Config).
	KeepEnded bool
	HookEnv   func(job string) []string
	// Images performs the image stages of the board's leases (nil: the board boots no
	// images, and a job with one is refused as ImageNotCompatible). FetchTimeout and
	// ProvisionTimeout bound them (zero: the jobs defaults).
	Images                         lease.Images
	FetchTimeout, ProvisionTimeout time.Duration
}

// Props returns the props of a board actor.
func Props(cfg Config) *actor.Props {
	st := cfg.Strategy
	if st.MaxFailures == 0 {
		st = DefaultStrategy
	}
	return actor.PropsFromProducer(func() actor.Actor {
		return &boardActor{cfg: cfg, log: cfg.Logger}
	}, actor.WithSupervisor(st), actor.WithReceiverMiddleware(actors.LogPanics(cfg.Logger)))
}

type leaseInfo struct {
	pid          *actor.PID
	phase        jobs.Phase
	endRequested bool
}

type boardActor struct {
	cfg     Config
	log     hclog.Logger
	status  jobs.ExporterStatus
	health  jobs.Health
	why     string // why the health is not good
	leases  map[string]*leaseInfo
	holder  string
	waiting []string
	down    map[string]bool // drivers not (yet) up again after a failure
	// stopping is set when the board itself stops (daemon shutdown).
	stopping bool
	// con tags the console's chunks as the drivers read them.
	con  *boardConsole
	root *actor.RootContext
	// restarts are the back-off timers of failed drivers, by child ID.
	restarts   map[string]restartTimer
	restartSeq uint64
}

// boardConsole tags a board's console chunks with the lease the console belongs to and
// their offset there, and hands them on to the console batch (or the outbox). The drivers
// call it in their own goroutines (a console's reader), not through the board's mailbox
// (see driver.PropsTo). The actor publishes the lease after every message it handles, and
// at a release together with the flush of the lease's console: a chunk is tagged as it
// would have been by a DriverOutput message the actor handled at that point, and none of
// a released lease's console is handed on after its flush.
type boardConsole struct {
	mu sync.Mutex
	// job is the lease the console belongs to now ("" for the board's own). Only the
	// actor writes it (under mu), so the actor reads it without mu.
	job string
	// boardOff and leaseOff count console bytes: the board's since start, and the
	// lease's (leaseJob) since it began.
	boardOff, leaseOff uint64
	leaseJob           string
}

type restartTimer struct {
	seq uint64
	t   *time.Timer
}

// restartDriver is a driver's back-off ending: the board restarts it.
type restartDriver struct {
	child *actor.PID
	seq   uint64
}

func (b *boardActor) Receive(ctx actor.Context) {
	defer b.publishConsole()
	switch m := ctx.Message().(type) {
	case *actor.Started:
		b.started(ctx)
	case *actors.StartJob:
		ctx.Respond(&actors.JobReply{Err: b.startJob(ctx, m.Req)})
	case *actors.StopJob:
		ctx.Respond(&actors.JobReply{Err: b.endJob(ctx, m.Req.JobID, jobs.EndCoordinator)})
	case *actors.EndSession:
		ctx.Respond(&actors.JobReply{Err: b.endJob(ctx, m.JobID, jobs.EndClient)})
	case *actors.ExtendJob:
		if li, ok := b.leases[m.Req.JobID]; ok && !li.phase.Terminal() {
			ctx.Send(li.pid, &actors.ExtendLease{Remaining: m.Req.Remaining})
		}
		ctx.Respond(&actors.JobReply{})
	case *actors.Acquire:
		b.acquire(ctx, m.JobID)
	case *actors.Release:
		b.release(ctx, m.JobID)
	case *actors.LeaseChanged:
		b.leaseChanged(ctx, m)
	case *actors.Quarantine:
		b.setHealth(ctx, jobs.HealthBad, "a hook failed with onFailure: exit: "+m.Reason)
	case *actors.ClearQuarantine:
		ctx.Respond(&actors.JobReply{Err: b.clearQuarantine(ctx, m)})
	case *driverFault:
		b.driverFault(ctx, m)
	case *actors.DriverUp:
		delete(b.down, m.Driver)
		if len(b.down) == 0 && b.health == jobs.HealthUnknown {
			b.setHealth(ctx, jobs.HealthGood, "")
		}
	case *actors.DriverOutput:
		at := m.At
		if at.IsZero() {
			at = time.Now()
		}
		b.consoleOutput(m.Driver, m.Data, at)
	case *actors.GetBoard:
		ctx.Respond(&actors.BoardState{Name: b.cfg.Name, Status: b.status, Health: b.health, Holder: b.holder,
			Waiting: append([]string(nil), b.waiting...)})
	case *actor.Terminated:
		b.terminated(ctx, m.Who)
	case *restartDriver:
		if rt, ok := b.restarts[m.child.Id]; ok && rt.seq == m.seq {
			delete(b.restarts, m.child.Id)
			if sup, ok := ctx.(actor.Supervisor); ok {
				sup.RestartChildren(m.child)
			}
		}
	case *actor.Stopping:
		// The daemon is shutting down: leases stop with the board, and their records stay
		// in the store for the next start to resume them.
		b.stopping = true
		for _, rt := range b.restarts {
			rt.t.Stop()
		}
		b.restarts = nil
	}
}

func (b *boardActor) started(ctx actor.Context) {
	b.leases = map[string]*leaseInfo{}
	b.down = map[string]bool{}
	b.restarts = map[string]restartTimer{}
	b.status, b.health = jobs.StatusAvailable, jobs.HealthGood
	b.con, b.root = &boardConsole{}, ctx.ActorSystem().Root
	b.restore(ctx)
	b.publishConsole() // before the drivers read: a restored lease's console is its own
	for _, d := range b.cfg.Drivers {
		name := d.Name()
		out := func(data []byte) { b.consoleOutput(name, data, time.Now()) }
		if _, err := ctx.SpawnNamed(driver.PropsTo(d, b.log.Named("driver").With("driver", name), out), "driver/"+name); err != nil {
			b.log.Error("start driver", "driver", d.Name(), "error", err)
		}
	}
	b.publish(ctx, "")
}

func (b *boardActor) startJob(ctx actor.Context, req connector.StartJobRequest) error {
	if _, ok := b.leases[req.JobID]; ok {
		return jobs.NewJobError(jobs.KindJobAlreadyExists, fmt.Sprintf("job %s already exists on board %s", req.JobID, b.cfg.Name))
	}
	if !b.health.Leasable() {
		return jobs.NewJobError(jobs.KindMaxConcurrentJobs, fmt.Sprintf("board %s takes no jobs: health %s (%s)", b.cfg.Name, b.health, b.why))
	}
	if live := b.live(); live > b.cfg.Queue {
		if b.cfg.Queue == 0 {
			return jobs.NewJobError(jobs.KindAlreadyRunning, fmt.Sprintf("board %s is running job %s", b.cfg.Name, b.holderOrAny()))
		}
		return jobs.NewJobError(jobs.KindMaxConcurrentJobs, fmt.Sprintf("board %s is busy and %d job(s) wait for it (queue %d)", b.cfg.Name, live-1, b.cfg.Queue))
	}
	d := req.Duration
	if d == 0 {
		d = b.cfg.LeaseDuration
	}
	spec := jobs.Spec{JobID: req.JobID, Board: b.cfg.Name, Client: req.Client, Duration: d, Params: req.Parameters, Image: req.Image,
		FetchTimeout: b.cfg.FetchTimeout, ProvisionTimeout: b.cfg.ProvisionTimeout}
	if req.Image != nil {
		if b.cfg.Images == nil {
			return jobs.NewJobError(jobs.KindImageNotCompatible, fmt.Sprintf("board %s cannot boot images: it is not set up for them", b.cfg.Name))
		}
		if err := req.Image.Validate(); err != nil {
			return jobs.NewJobError(jobs.KindImageInvalid, err.Error())
		}
	}
	if req.Token != "" {
		spec.TokenHash = jobs.TokenHash(req.Token)
	} else {
		spec.TokenHash = req.TokenHash // the coordinator sent only the hash
	}
	if b.cfg.Before != nil {
		p := b.cfg.Before.Policy
		spec.Before = &p
	}
	if b.cfg.After != nil {
		p := b.cfg.After.Policy
		spec.After = &p
	}
	if err := spec.Validate(); err != nil {
		return jobs.NewJobError(jobs.KindInternalError, err.Error())
	}
	pid, err := b.spawnLease(ctx, spec)
	if err != nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("start lease actor: %v", err))
	}
	b.leases[req.JobID] = &leaseInfo{pid: pid, phase: jobs.PhaseCreated}
	b.log.Info("job accepted", "job", req.JobID, "client", req.Client, "duration", d.String())
	return nil
}

func (b *boardActor) spawnLease(ctx actor.Context, spec jobs.Spec) (*actor.PID, error) {
	return ctx.SpawnNamed(lease.Props(lease.Config{Spec: spec, Labels: b.cfg.Labels,
		Before: b.cfg.Before, After: b.cfg.After, Outbox: b.cfg.Outbox, Store: b.cfg.Store, Runner: b.cfg.Runner,
		SpoolDir: filepath.Join(b.cfg.StateDir, "hooks"), Logger: b.log.Named("lease").With("job", spec.JobID),
		Middleware: b.cfg.LeaseMiddleware, HookMiddleware: b.cfg.HookMiddleware, KeepEnded: b.cfg.KeepEnded, HookEnv: b.cfg.HookEnv,
		Images: b.cfg.Images}), "lease/"+spec.JobID)
}

// restore brings back the leases the journal holds for this board, after a restart of
// the daemon: each lease actor resumes in its phase from its record. The lease that had
// acquired the board holds it again; the others wait for it as before.
func (b *boardActor) restore(ctx actor.Context) {
	for _, rec := range b.cfg.Restore {
		pid, err := b.spawnLease(ctx, rec.Spec)
		if err != nil {
			b.log.Error("resume lease", "job", rec.Spec.JobID, "error", err)
			b.emit(ctx, rec.Spec.JobID, connector.Event{Error: jobs.NewJobError(jobs.KindCannotResume, fmt.Sprintf("resume lease actor: %v", err))})
			continue
		}
		st := rec.State
		b.leases[rec.Spec.JobID] = &leaseInfo{pid: pid, phase: st.Phase, endRequested: st.EndRequested}
		if st.Acquired && st.Phase < jobs.PhaseReleasing && b.holder == "" {
			b.holder = rec.Spec.JobID
			b.status = jobs.Restore(rec.Spec, rec.State).Status()
		}
		b.log.Info("lease resumed", "job", rec.Spec.JobID, "phase", st.Phase.String())
	}
}

// live counts the leases that have not ended (an ended one may not have stopped yet).
func (b *boardActor) live() int {
	n := 0
	for _, li := range b.leases {
		if !li.phase.Terminal() {
			n++
		}
	}
	return n
}

func (b *boardActor) holderOrAny() string {
	if b.holder != "" {
		return b.holder
	}
	for id := range b.leases {
		return id
	}
	return "?"
}

// endJob asks a lease to end. A job that is gone is a no-op; one already ending is
// AlreadyStopping (harmless either way: the lease ends once).
func (b *boardActor) endJob(ctx actor.Context, jobID string, r jobs.EndReason) error {
	li, ok := b.leases[jobID]
	if !ok || li.phase.Terminal() {
		b.log.Debug("end of a job that is not here: nothing to do", "job", jobID)
		return nil
	}
	if li.endRequested || li.phase >= jobs.PhaseEnding {
		return jobs.NewJobError(jobs.KindAlreadyStopping, fmt.Sprintf("job %s is already ending", jobID))
	}
	li.endRequested = true
	ctx.Send(li.pid, &actors.EndLease{Reason: r})
	return nil
}

func (b *boardActor) acquire(ctx actor.Context, jobID string) {
	li, ok := b.leases[jobID]
	if !ok {
		return
	}
	switch {
	case b.holder == "" || b.holder == jobID:
		b.holder = jobID
		ctx.Send(li.pid, &actors.Acquired{})
	case !slices.Contains(b.waiting, jobID):
		b.waiting = append(b.waiting, jobID)
	}
}

func (b *boardActor) release(ctx actor.Context, jobID string) {
	// The lease's console output is numbered before its end, which follows Released:
	// flushed, and no more of it tagged, under one lock.
	b.con.mu.Lock()
	if b.cfg.Console != nil {
		b.cfg.Console.Flush(b.cfg.Name)
	}
	if b.con.job == jobID {
		b.con.job = ""
	}
	b.con.mu.Unlock()
	if li, ok := b.leases[jobID]; ok {
		ctx.Send(li.pid, &actors.Released{})
	}
	b.waiting = slices.DeleteFunc(b.waiting, func(id string) bool { return id == jobID })
	if b.holder == jobID {
		b.holder = ""
		b.grantNext(ctx)
	}
}

func (b *boardActor) grantNext(ctx actor.Context) {
	for len(b.waiting) > 0 {
		next := b.waiting[0]
		b.waiting = b.waiting[1:]
		if li, ok := b.leases[next]; ok {
			b.holder = next
			ctx.Send(li.pid, &actors.Acquired{})
			return
		}
	}
	// Nobody waits: the board is free (or OFFLINE if it was quarantined meanwhile).
	b.setStatus(ctx, jobs.StatusAvailable, "")
}

func (b *boardActor) leaseChanged(ctx actor.Context, m *actors.LeaseChanged) {
	li, ok := b.leases[m.JobID]
	if !ok {
		return
	}
	li.phase, li.endRequested = m.Phase, li.endRequested || m.EndRequested
	// The board's status follows the lease that holds it.
	if m.JobID == b.holder && !m.Phase.Terminal() {
		b.setStatus(ctx, m.Status, "")
	}
}

func (b *boardActor) terminated(ctx actor.Context, who *actor.PID) {
	for id, li := range b.leases {
		if !li.pid.Equal(who) {
			continue
		}
		delete(b.leases, id)
		if b.stopping {
			return
		}
		ctx.Send(ctx.Parent(), &actors.JobEnded{JobID: id})
		// A lease that ended journalled it first (or deleted its record); the
		// LeaseChanged of its last transition may still be queued behind this system
		// message.
		if rec, ok, _ := b.cfg.Store.Load(id); ok && !rec.State.Phase.Terminal() && !li.phase.Terminal() {
			// Stopped by supervision after repeated panics: the lease is lost.
			msg := fmt.Sprintf("lease actor failed repeatedly in phase %s; the lease is abandoned", li.phase)
			b.log.Error(msg, "job", id)
			b.emit(ctx, id, connector.Event{Error: jobs.NewJobError(jobs.KindInternalError, msg)})
			if err := b.cfg.Store.Delete(id); err != nil {
				b.log.Error("forget lease", "job", id, "error", err)
			}
		}
		b.release(ctx, id)
		return
	}
}

func (b *boardActor) driverFault(ctx actor.Context, m *driverFault) {
	name := m.child.Id[strings.LastIndex(m.child.Id, "/")+1:]
	if m.quarantined {
		b.setHealth(ctx, jobs.HealthBad, fmt.Sprintf("driver %s keeps failing: %v", name, m.reason))
		return
	}
	b.log.Warn("driver failed; restarting it after a back-off", "driver", name, "error", fmt.Sprint(m.reason), "backoff", m.backoff.String())
	if b.restarts != nil {
		if old, ok := b.restarts[m.child.Id]; ok {
			old.t.Stop()
		}
		b.restartSeq++
		self, root, child, seq := ctx.Self(), ctx.ActorSystem().Root, m.child, b.restartSeq
		b.restarts[m.child.Id] = restartTimer{seq: seq, t: time.AfterFunc(m.backoff, func() {
			root.Send(self, &restartDriver{child: child, seq: seq})
		})}
	}
	b.down[name] = true
	if b.health == jobs.HealthGood {
		b.setHealth(ctx, jobs.HealthUnknown, fmt.Sprintf("driver %s failed: %v", name, m.reason))
	}
}

// consoleOutput makes a console event of a chunk a driver read at at, tagged with the
// lease the console belongs to (or none) and its offset there. An attended console's
// chunk goes to the outbox at once; an unattended one's waits for the console batch's
// tick. It runs in the driver's goroutine (see boardConsole).
func (b *boardActor) consoleOutput(driver string, data []byte, at time.Time) {
	c := b.con
	c.mu.Lock()
	defer c.mu.Unlock()
	job, off := c.job, &c.boardOff
	if job != "" {
		if c.leaseJob != job {
			c.leaseJob, c.leaseOff = job, 0
		}
		off = &c.leaseOff
	}
	// Time is when the chunk was read: a console watcher that attached later does not get
	// it, although a tick's batch may reach the sink after the watcher attached.
	ev := connector.Event{Board: b.cfg.Name, JobID: job, Time: at,
		Console: &connector.Console{Source: jobs.SourceDriver, Data: data, Offset: *off}}
	*off += uint64(len(data))
	switch {
	case b.cfg.Console == nil:
		b.root.Send(b.cfg.Outbox, &actors.Emit{Event: ev})
	case b.attended(driver):
		b.cfg.Console.Now(ev)
	default:
		b.cfg.Console.Add(ev)
	}
}

// publishConsole tells the console which lease it belongs to now, if that changed.
func (b *boardActor) publishConsole() {
	if b.con == nil {
		return
	}
	if job := b.consoleJob(); job != b.con.job {
		b.con.mu.Lock()
		b.con.job = job
		b.con.mu.Unlock()
	}
}

// attended reports whether someone interacts with the driver's console now (see
// serial.Driver.SetAttended); a driver that cannot tell is not.
func (b *boardActor) attended(name string) bool {
	for _, d := range b.cfg.Drivers {
		if d.Name() == name {
			a, ok := d.(interface{ Attended() bool })
			return ok && a.Attended()
		}
	}
	return false
}

// consoleJob is the lease console bytes belong to: the holder while it uses the board.
func (b *boardActor) consoleJob() string {
	// A lease holds the board from STARTING on (a board provisioned with an image boots
	// in STARTING: its console is the lease's).
	if li, ok := b.leases[b.holder]; ok && li.phase >= jobs.PhaseStarting && li.phase <= jobs.PhaseAfterLease {
		return b.holder
	}
	return ""
}

// clearQuarantine is an operator clearing the board's quarantine after a hook failed
// with onFailure: exit: health good again (unknown while a driver is down), AVAILABLE
// if no lease holds it. A board quarantined because a driver kept failing has lost that
// driver: only a restart of the supervisor brings it back.
func (b *boardActor) clearQuarantine(ctx actor.Context, m *actors.ClearQuarantine) error {
	if b.health != jobs.HealthBad {
		return nil
	}
	if strings.HasPrefix(b.why, "driver ") {
		return fmt.Errorf("board %s was quarantined because %s: restart the supervisor once the device is fixed", b.cfg.Name, b.why)
	}
	h := jobs.HealthGood
	if len(b.down) > 0 {
		h = jobs.HealthUnknown
	}
	b.log.Info("quarantine cleared", "by", m.By, "reason", m.Reason, "was", b.why)
	b.health, b.why = h, ""
	if b.holder == "" {
		b.status = jobs.StatusAvailable
	}
	b.publish(ctx, "quarantine cleared by "+m.By)
	return nil
}

func (b *boardActor) setHealth(ctx actor.Context, h jobs.Health, why string) {
	if b.health == jobs.HealthBad && h != jobs.HealthBad {
		return // quarantine is cleared by an operator, not by a driver coming back
	}
	if h == b.health {
		return
	}
	b.health, b.why = h, why
	if h == jobs.HealthBad {
		b.log.Error("board quarantined", "reason", why)
	}
	b.publish(ctx, why)
}

func (b *boardActor) setStatus(ctx actor.Context, s jobs.ExporterStatus, msg string) {
	if b.holder == "" && b.health == jobs.HealthBad {
		s = jobs.StatusOffline
	}
	if s == b.status {
		return
	}
	b.status = s
	b.publish(ctx, msg)
}

func (b *boardActor) publish(ctx actor.Context, msg string) {
	if b.holder == "" && b.health == jobs.HealthBad {
		b.status = jobs.StatusOffline
	}
	b.emit(ctx, b.holder, connector.Event{BoardStatus: &connector.BoardStatus{Status: b.status, Health: b.health, Message: msg}})
}

func (b *boardActor) emit(ctx actor.Context, jobID string, ev connector.Event) {
	ev.Board, ev.JobID = b.cfg.Name, jobID
	ctx.Send(b.cfg.Outbox, &actors.Emit{Event: ev})
}
