package board_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/internal/actortest"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
	"github.com/google/uuid"
)

// These tests run one board actor under a probe that stands in for the host, with its
// real lease actors below it (no hooks: their phases are passed through, so no process
// runs) and a real outbox recording its events. What they check is what the board
// decides and sends: its answers, its BoardStatus events, whom it grants the board to
// and when, JobEnded to the host.

func config(p *actortest.Probe, name string, queue int) board.Config {
	return board.Config{Name: name, Labels: map[string]string{"device": "rpi4"}, Queue: queue,
		LeaseDuration: time.Minute, Outbox: p.Outbox, Store: &actors.MemStore{}, Logger: p.Logger.Named(name)}
}

func spawn(t *testing.T, p *actortest.Probe, cfg board.Config) *actor.PID {
	t.Helper()
	return p.Spawn(board.Props(cfg), "board/"+cfg.Name)
}

// id is the job ID (a UUID) of the test's job called name.
func id(name string) string { return uuid.NewSHA1(uuid.Nil, []byte(name)).String() }

func start(t *testing.T, p *actortest.Probe, job string) error {
	t.Helper()
	r, ok := p.Request(&actors.StartJob{Req: connector.StartJobRequest{JobID: id(job), Board: "rpi", Client: "alice"}}).(*actors.JobReply)
	if !ok {
		t.Fatalf("StartJob %s: the board did not answer a JobReply", job)
	}
	return r.Err
}

func stop(t *testing.T, p *actortest.Probe, job string) error {
	t.Helper()
	return p.Request(&actors.StopJob{Req: connector.StopJobRequest{JobID: id(job)}}).(*actors.JobReply).Err
}

func state(t *testing.T, p *actortest.Probe) *actors.BoardState {
	t.Helper()
	return p.Request(&actors.GetBoard{}).(*actors.BoardState)
}

func kind(err error) string {
	if k, ok := jobs.KindOf(err); ok {
		return k.String()
	}
	return fmt.Sprint(err)
}

// boardStatuses lists the board's BoardStatus events as "STATUS/health".
func boardStatuses(evs []connector.Event) []string {
	var out []string
	for _, ev := range evs {
		if ev.BoardStatus != nil {
			out = append(out, ev.BoardStatus.Status.String()+"/"+ev.BoardStatus.Health.String())
		}
	}
	return out
}

func hasStatus(want string) func([]connector.Event) bool {
	return func(evs []connector.Event) bool { return slices.Contains(boardStatuses(evs), want) }
}

// A board announces itself AVAILABLE and good when it starts, and a lease's status
// while the lease holds it.
func TestBoardStatusFollowsItsLease(t *testing.T) {
	p := actortest.New(t)
	spawn(t, p, config(p, "rpi", 0))
	p.WaitEvents("the board's first status", hasStatus("AVAILABLE/good"))
	if err := start(t, p, "job-1"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("job-1"), jobs.PhaseReady)
	evs := p.WaitEvents("LEASE_READY", hasStatus("LEASE_READY/good"))
	if st := state(t, p); st.Holder != id("job-1") || st.Status != jobs.StatusLeaseReady {
		t.Errorf("GetBoard: holder %q status %s, want job-1 LEASE_READY", st.Holder, st.Status)
	}
	// The board's status event during the lease belongs to the lease.
	i := actortest.Index(evs, func(ev connector.Event) bool {
		return ev.BoardStatus != nil && ev.BoardStatus.Status == jobs.StatusLeaseReady
	})
	if evs[i].JobID != id("job-1") {
		t.Errorf("LEASE_READY status event has job %q, want job-1", evs[i].JobID)
	}
	if err := stop(t, p, "job-1"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("job-1"), jobs.PhaseDone)
	evs = p.WaitEvents("AVAILABLE again", func(evs []connector.Event) bool {
		s := boardStatuses(evs)
		return len(s) > 2 && s[len(s)-1] == "AVAILABLE/good"
	})
	t.Logf("statuses: %v", boardStatuses(evs))
}

// Leases on one board are serialized (DESIGN rule 4): a lease waits in STARTING, holding
// nothing, until the lease before it has released the board after its afterLease phase;
// the board grants it then. (Which of two leases started together gets the board first
// is the order of their Acquire messages, not of their StartJobs.)
func TestBoardSerializesLeases(t *testing.T) {
	p := actortest.New(t)
	spawn(t, p, config(p, "rpi", 1))
	for _, j := range []string{"one", "two"} {
		if err := start(t, p, j); err != nil {
			t.Fatalf("StartJob %s: %v", j, err)
		}
	}
	evs := p.WaitEvents("a lease READY", func(evs []connector.Event) bool {
		return actortest.Index(evs, func(ev connector.Event) bool { return ev.Transition != nil && ev.Transition.To == jobs.PhaseReady }) >= 0
	})
	first := evs[actortest.Index(evs, func(ev connector.Event) bool { return ev.Transition != nil && ev.Transition.To == jobs.PhaseReady })].JobID
	second := id("one")
	if first == second {
		second = id("two")
	}
	// The second lease's Acquire reaches the board after its STARTING event: poll the
	// board (bounded) until it waits.
	deadline := time.Now().Add(actortest.Wait)
	for st := state(t, p); !slices.Equal(st.Waiting, []string{second}) || st.Holder != first; st = state(t, p) {
		if time.Now().After(deadline) {
			t.Fatalf("GetBoard: holder %q waiting %v, want %s holding and %s waiting", st.Holder, st.Waiting, first, second)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := actortest.Transitions(p.WaitTransition(second, jobs.PhaseStarting), second); !slices.Equal(got, []string{"CREATED->STARTING"}) {
		t.Fatalf("the second lease went on while the first held the board: %v", got)
	}
	if err := p.Request(&actors.StopJob{Req: connector.StopJobRequest{JobID: first}}).(*actors.JobReply).Err; err != nil {
		t.Fatal(err)
	}
	evs = p.WaitTransition(second, jobs.PhaseReady)
	// The board is granted once the first lease has given it back (RELEASING); the
	// first's DONE follows the board's confirmation, and may be numbered after the
	// second's next transition.
	released := actortest.Index(evs, func(ev connector.Event) bool {
		return ev.JobID == first && ev.Transition != nil && ev.Transition.To == jobs.PhaseReleasing
	})
	began := actortest.Index(evs, func(ev connector.Event) bool {
		return ev.JobID == second && ev.Transition != nil && ev.Transition.To == jobs.PhaseBeforeLease
	})
	if released < 0 || began < released {
		t.Errorf("the second lease began (event %d) before the first released the board (event %d):%s", began, released, actortest.EventList(evs))
	}
	if st := state(t, p); st.Holder != second || len(st.Waiting) != 0 {
		t.Errorf("GetBoard: holder %q waiting %v, want %s holding", st.Holder, st.Waiting, second)
	}
}

// A board refuses what it cannot take, with Treadmill's error kinds: a job it already
// has, a job beyond its queue, any job while it is quarantined.
func TestBoardRefusesWhatItCannotTake(t *testing.T) {
	t.Run("NoQueue", func(t *testing.T) {
		p := actortest.New(t)
		spawn(t, p, config(p, "rpi", 0))
		if err := start(t, p, "a"); err != nil {
			t.Fatal(err)
		}
		if err := start(t, p, "a"); kind(err) != "JobAlreadyExists" {
			t.Errorf("the same job again: %v, want JobAlreadyExists", err)
		}
		if err := start(t, p, "b"); kind(err) != "AlreadyRunning" {
			t.Errorf("a second job on a board without a queue: %v, want AlreadyRunning", err)
		}
	})
	t.Run("QueueFull", func(t *testing.T) {
		p := actortest.New(t)
		spawn(t, p, config(p, "rpi", 1))
		for _, j := range []string{"a", "b"} {
			if err := start(t, p, j); err != nil {
				t.Fatal(err)
			}
		}
		if err := start(t, p, "c"); kind(err) != "MaxConcurrentJobs" {
			t.Errorf("a job past the queue: %v, want MaxConcurrentJobs", err)
		}
	})
	t.Run("Quarantined", func(t *testing.T) {
		p := actortest.New(t)
		spawn(t, p, config(p, "rpi", 0))
		p.Send(&actors.Quarantine{JobID: "x", Reason: "flash failed"})
		p.WaitEvents("OFFLINE and bad", hasStatus("OFFLINE/bad"))
		if err := start(t, p, "a"); kind(err) != "MaxConcurrentJobs" {
			t.Errorf("a job on a quarantined board: %v, want MaxConcurrentJobs", err)
		}
		if st := state(t, p); st.Health != jobs.HealthBad || st.Status != jobs.StatusOffline {
			t.Errorf("GetBoard: %s/%s, want OFFLINE/bad", st.Status, st.Health)
		}
	})
}

// Ending a job is idempotent (DESIGN rule 7): a job that is not there is a no-op, a
// second end request while the lease ends (here: its afterLease hook runs) is
// AlreadyStopping, and the lease ends once.
func TestBoardEndsAJobOnce(t *testing.T) {
	p := actortest.New(t)
	g := actortest.NewGate(t)
	cfg := config(p, "rpi", 0)
	cfg.After = &lease.HookConfig{Spec: jhook.Spec{Script: "read x < " + string(g)}, Policy: jobs.HookPolicy{Timeout: 20 * time.Second}}
	cfg.Runner, cfg.StateDir = &jhook.Runner{ShimCommand: hooktest.ShimCommand()}, t.TempDir()
	spawn(t, p, cfg)
	if err := stop(t, p, "nobody"); err != nil {
		t.Errorf("StopJob of a job that is not here: %v, want nil", err)
	}
	if err := start(t, p, "a"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("a"), jobs.PhaseReady)
	if err := stop(t, p, "a"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("a"), jobs.PhaseAfterLease)
	end := p.Request(&actors.EndSession{Board: "rpi", JobID: id("a")}).(*actors.JobReply).Err
	if kind(end) != "AlreadyStopping" {
		t.Errorf("EndSession while the lease ends: %v, want AlreadyStopping", end)
	}
	if err := stop(t, p, "a"); kind(err) != "AlreadyStopping" {
		t.Errorf("StopJob again while the lease ends: %v, want AlreadyStopping", err)
	}
	g.Open(t)
	evs := p.WaitTransition(id("a"), jobs.PhaseDone)
	want := []string{"CREATED->STARTING", "STARTING->BEFORE_LEASE", "BEFORE_LEASE->READY", "READY->ENDING",
		"ENDING->AFTER_LEASE", "AFTER_LEASE->RELEASING", "RELEASING->DONE"}
	if got := actortest.Transitions(evs, id("a")); !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
	// The host hears that the job is gone, so that it forgets it.
	if m := actortest.Want[*actors.JobEnded](p); m.JobID != id("a") {
		t.Errorf("JobEnded %q, want a", m.JobID)
	}
	if err := stop(t, p, "a"); err != nil {
		t.Errorf("StopJob of an ended job: %v, want nil", err)
	}
}

// A quarantine (a hook failed with onFailure: exit) while a lease holds the board makes
// it bad at once and OFFLINE once the lease has released it; it takes no lease after,
// and its health is never good again (an operator clears it).
func TestBoardQuarantinedDuringALeaseGoesOfflineAfterIt(t *testing.T) {
	p := actortest.New(t)
	spawn(t, p, config(p, "rpi", 0))
	if err := start(t, p, "a"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("a"), jobs.PhaseReady)
	p.Send(&actors.Quarantine{JobID: id("a"), Reason: "flash failed"})
	p.WaitEvents("health bad", hasStatus("LEASE_READY/bad"))
	if err := stop(t, p, "a"); err != nil {
		t.Fatal(err)
	}
	evs := p.WaitEvents("OFFLINE", hasStatus("OFFLINE/bad"))
	s := boardStatuses(evs)
	if i := slices.Index(s, "LEASE_READY/bad"); slices.ContainsFunc(s[i:], func(st string) bool { return strings.HasSuffix(st, "/good") }) {
		t.Errorf("the board's health was good again after its quarantine: %v", s)
	}
	if err := start(t, p, "b"); kind(err) != "MaxConcurrentJobs" {
		t.Errorf("a job after the quarantine: %v, want MaxConcurrentJobs", err)
	}
}

// Console bytes belong to the lease that holds the board while it uses it, with offsets
// from 0 in that lease's console; outside a lease they are the board's own.
func TestBoardConsoleBytesBelongToTheHolder(t *testing.T) {
	p := actortest.New(t)
	spawn(t, p, config(p, "rpi", 0))
	p.Send(&actors.DriverOutput{Driver: "console", Data: []byte("boot\n")})
	p.Send(&actors.DriverOutput{Driver: "console", Data: []byte("login: ")})
	if err := start(t, p, "a"); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(id("a"), jobs.PhaseReady)
	p.Send(&actors.DriverOutput{Driver: "console", Data: []byte("root\n")})
	evs := p.WaitEvents("three console chunks", func(evs []connector.Event) bool {
		n := 0
		for _, ev := range evs {
			if ev.Console != nil {
				n++
			}
		}
		return n == 3
	})
	var got []string
	for _, ev := range evs {
		if ev.Console != nil {
			got = append(got, fmt.Sprintf("%q@%d job=%q", ev.Console.Data, ev.Console.Offset, ev.JobID))
		}
	}
	want := []string{`"boot\n"@0 job=""`, `"login: "@5 job=""`, `"root\n"@0 job="` + id("a") + `"`}
	if !slices.Equal(got, want) {
		t.Errorf("console events %v, want %v", got, want)
	}
}

// A board restored after a restart of the daemon gives itself back to the lease that
// held it: the lease resumes READY, without going through STARTING again.
func TestBoardRestoresTheLeaseThatHeldIt(t *testing.T) {
	p := actortest.New(t)
	cfg := config(p, "rpi", 0)
	spec := jobs.Spec{JobID: id("held"), Board: "rpi", Duration: time.Minute}
	st := jobs.State{Phase: jobs.PhaseReady, Acquired: true}
	reported := []jobs.Transition{{From: jobs.PhaseCreated, To: jobs.PhaseStarting, Step: 1},
		{From: jobs.PhaseStarting, To: jobs.PhaseBeforeLease, Step: 2}, {From: jobs.PhaseBeforeLease, To: jobs.PhaseReady, Step: 3}}
	if err := cfg.Store.SaveLease(spec, st, nil, reported...); err != nil {
		t.Fatal(err)
	}
	rec, _, _ := cfg.Store.Load(id("held"))
	cfg.Restore = []jobs.Record{rec}
	spawn(t, p, cfg)
	p.WaitEvents("LEASE_READY", hasStatus("LEASE_READY/good"))
	if s := state(t, p); s.Holder != id("held") {
		t.Fatalf("GetBoard: holder %q, want the restored lease", s.Holder)
	}
	if err := stop(t, p, "held"); err != nil {
		t.Fatal(err)
	}
	evs := p.WaitTransition(id("held"), jobs.PhaseDone)
	want := []string{"READY->ENDING", "ENDING->AFTER_LEASE", "AFTER_LEASE->RELEASING", "RELEASING->DONE"}
	if got := actortest.Transitions(evs, id("held")); !slices.Equal(got, want) {
		t.Errorf("the restored lease reported %v, want %v", got, want)
	}
}

// failing is a driver that fails its first `fails` runs with err, then runs until it
// is stopped. (A fake: a real device does not fail on demand.)
type failing struct {
	fails int32
	err   error
	runs  atomic.Int32
}

func (f *failing) Name() string { return "console" }

func (f *failing) Run(ctx context.Context, _ func([]byte)) error {
	if f.runs.Add(1) <= f.fails {
		return f.err
	}
	<-ctx.Done()
	return nil
}

var _ driver.Driver = (*failing)(nil)

// The board supervises its drivers: a driver that fails is restarted after a back-off
// (the board's health is unknown until it is up again); one that keeps failing
// quarantines the board; an absent device is retried for as long as it takes and never
// quarantines it.
func TestBoardSupervisesItsDrivers(t *testing.T) {
	quick := board.Strategy{Backoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond, MaxFailures: 3, Window: time.Minute}
	cases := []struct {
		name  string
		drv   *failing
		want  []string // the board's statuses, in order
		runs  int32
		avoid string
	}{
		{"Recovers", &failing{fails: 2, err: errors.New("EIO")}, []string{"AVAILABLE/good", "AVAILABLE/unknown", "AVAILABLE/good"}, 3, "OFFLINE/bad"},
		{"KeepsFailing", &failing{fails: 1000, err: errors.New("EIO")}, []string{"AVAILABLE/good", "AVAILABLE/unknown", "OFFLINE/bad"}, 4, "AVAILABLE/good"},
		{"Absent", &failing{fails: 8, err: fmt.Errorf("open /dev/ttyUSB0: %w", drivers.ErrDeviceAbsent)}, []string{"AVAILABLE/good", "AVAILABLE/unknown", "AVAILABLE/good"}, 9, "OFFLINE/bad"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := actortest.New(t)
			cfg := config(p, "rpi", 0)
			cfg.Strategy, cfg.Drivers = quick, []driver.Driver{c.drv}
			spawn(t, p, cfg)
			evs := p.WaitEvents(fmt.Sprint(c.want), func(evs []connector.Event) bool {
				return slices.Equal(boardStatuses(evs), c.want)
			})
			if got := c.drv.runs.Load(); got != c.runs {
				t.Errorf("the driver ran %d times, want %d", got, c.runs)
			}
			if slices.Contains(boardStatuses(evs)[1:], c.avoid) {
				t.Errorf("statuses %v hold %s", boardStatuses(evs), c.avoid)
			}
		})
	}
}

// flooding is a console driver that reads chunks as fast as it can, from its own
// goroutine as a console reader does, until it is stopped.
type flooding struct{}

func (flooding) Name() string { return "console" }

func (flooding) Run(ctx context.Context, out func([]byte)) error {
	for ctx.Err() == nil {
		out([]byte("0123456789abcdef"))
		runtime.Gosched()
	}
	return nil
}

// Console chunks reach the board from the driver's goroutine, not through its mailbox;
// still, none of a lease's console is handed on after the lease released the board: with
// a console streaming all along, every chunk tagged with a lease is numbered before the
// lease's end, over many leases, and the chunks after the end are the board's own.
// With ticks of a millisecond, batches are joined and sent outside the batch's lock all
// along, while the board flushes at each release: no deadlock, and the order holds. (The
// race it guards against is too narrow to hit here without the guard:
// TestConsoleBatchJoinsOutsideItsLock holds a batch in its join to check it.)
func TestBoardConsoleOfAReleasedLeaseComesBeforeItsEnd(t *testing.T) {
	for _, tick := range []time.Duration{time.Hour, time.Millisecond} { // an hour: sent on flushes only
		t.Run(tick.String(), func(t *testing.T) { testConsoleOfAReleasedLease(t, tick) })
	}
}

func testConsoleOfAReleasedLease(t *testing.T, tick time.Duration) {
	p := actortest.New(t)
	cfg := config(p, "rpi", 0)
	batch := board.NewConsoleBatch(p.Sys.Root, p.Outbox, tick)
	t.Cleanup(batch.Close)
	cfg.Console, cfg.Drivers = batch, []driver.Driver{flooding{}}
	spawn(t, p, cfg)
	const leases = 20
	for i := range leases {
		job := fmt.Sprint("lease-", i)
		if err := start(t, p, job); err != nil {
			t.Fatal(err)
		}
		p.WaitTransition(id(job), jobs.PhaseReady)
		if err := stop(t, p, job); err != nil {
			t.Fatal(err)
		}
		p.WaitTransition(id(job), jobs.PhaseDone)
		// What the board read after the release goes with the next tick (here: now).
		batch.Flush("rpi")
	}
	end := map[string]int{} // job -> index of its end among the events
	evs := p.WaitEvents("every lease's end and console", func(evs []connector.Event) bool {
		for i, ev := range evs {
			if ev.Transition != nil && ev.Transition.To == jobs.PhaseDone {
				end[ev.JobID] = i
			}
		}
		return len(end) == leases
	})
	tagged := map[string]int{}
	for i, ev := range evs {
		if ev.Console == nil || ev.JobID == "" {
			continue
		}
		tagged[ev.JobID]++
		if e, ok := end[ev.JobID]; ok && i > e {
			t.Errorf("console event %d (offset %d) of lease %s comes after its end (event %d)", i, ev.Console.Offset, ev.JobID, e)
		}
	}
	if len(tagged) == 0 {
		t.Errorf("no console event is tagged with a lease (%d events)", len(evs))
	}
}
