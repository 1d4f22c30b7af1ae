package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/coordinator/pgtest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The fleet scenario (issue 24): the real coordinator binary on SQLite, with light
// supervisors in this process that speak the real link protocol over loopback (Hello,
// numbered events, acks, replay after a reconnect) and answer StartJob and StopJob at
// once with the event sequence a supervisor without hooks sends (transitions, a hook
// line each way, board status: 10 events a lease). Clients ask for leases at a steady
// rate (open loop: one goroutine per lease, started on a ticker), by board name and
// one in ten by selector, hold each for FleetHold once READY and release it.
const (
	FleetSupervisors = 100
	FleetPerSup      = 100
	FleetRate        = 100 // leases per second
	FleetHold        = time.Second
	// FleetBaselineSups is the same-run baseline: the same load on 1,000 boards.
	FleetBaselineSups = 10
	// FleetDefaultDuration is the load's length unless -fleet-duration says otherwise.
	FleetDefaultDuration = 60 * time.Second
)

func runFleet(e *env) error {
	raiseNoFile()
	d := e.durFlag("duration")
	if d <= 0 {
		d = FleetDefaultDuration
	}
	base := max(d/4, 10*time.Second)
	logf("fleet: baseline %d boards for %s", FleetBaselineSups*FleetPerSup, base)
	b, err := fleetRun(e, "baseline", FleetBaselineSups, base, false, "")
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	logf("fleet: %d boards for %s", FleetSupervisors*FleetPerSup, d)
	r, err := fleetRun(e, "fleet", FleetSupervisors, d, true, "")
	if err != nil {
		return err
	}
	defer fleetOnPostgres(e, d)
	boards := FleetSupervisors * FleetPerSup
	load := fmt.Sprintf("%d boards (%d light supervisors over loopback), %d leases/s for %s, real coordinator on SQLite", boards, FleetSupervisors, FleetRate, d)
	p99, bp99 := r.grant.pct(99), b.grant.pct(99)
	e.add(Row{Figure: "fleet: lease grant p99 (CreateLease to READY)", Value: ms(p99), Num: float64(p99) / float64(time.Millisecond), Unit: "ms",
		Target: "< 100 ms", Baseline: ms(bp99) + " at 1,000 boards", Ratio: ratio(float64(bp99), float64(p99)), Met: met(p99 < 100*time.Millisecond),
		Note: fmt.Sprintf("%s; p50 %s; %d leases granted (baseline p50 %s, %d leases)", load, ms(r.grant.pct(50)), r.grant.n(), ms(b.grant.pct(50)), b.grant.n())})
	e.add(Row{Figure: "fleet: leases failed", Value: fmt.Sprint(r.failed.Load()), Num: float64(r.failed.Load()), Target: "0",
		Baseline: fmt.Sprint(b.failed.Load()), Met: met(r.failed.Load() == 0),
		Note: fmt.Sprintf("of %d requested; a failure is an error, a lease that ends FAILED, or no READY or DONE within 30 s; %s", r.requested.Load(), r.firstFailure())})
	evRate := float64(r.evAcked) / d.Seconds()
	want := 9 * float64(FleetRate)
	e.add(Row{Figure: "fleet: events stored during the load", Value: fmt.Sprintf("%.0f events/s", evRate), Num: evRate, Unit: "events/s",
		Target: fmt.Sprintf(">= %.0f events/s", want), Baseline: fmt.Sprintf("%.0f events/s", float64(b.evAcked)/base.Seconds()), Met: met(evRate >= want && r.lagAfter < 5*time.Second),
		Note: fmt.Sprintf("acknowledged by the coordinator while the load ran (10 events a lease); all stored %s after the load stopped", r.lagAfter.Round(time.Millisecond))})
	e.add(Row{Figure: "fleet: coordinator RSS", Value: fmt.Sprintf("%.0f MB", r.rssMB), Num: r.rssMB, Unit: "MB", Target: "< 500 MB",
		Baseline: fmt.Sprintf("%.0f MB", b.rssMB), Met: met(r.rssMB < 500),
		Note: fmt.Sprintf("highest VmRSS sampled each second; CPU %.0f %% of a core during the load (baseline %.0f %%)", r.cpu*100, b.cpu*100)})
	e.add(Row{Figure: "fleet: events stored, a storm from every supervisor at once", Value: fmt.Sprintf("%.0f events/s", r.stormRate), Num: r.stormRate, Unit: "events/s",
		Target: ">= 20,000 events/s", Met: met(r.stormRate >= 20000),
		Note: fmt.Sprintf("%d supervisors x %d hook lines as fast as they send, half of them reconnecting halfway (their unacknowledged events sent again, stored once); first sent to last acknowledged; coordinator %.0f %% of a core; SQLite", FleetSupervisors, FleetStormEach, r.stormCPU*100)})
	e.add(Row{Figure: "fleet: Hello with 100 boards, to Welcome", Value: "p50 " + ms(r.hello.pct(50)) + ", p99 " + ms(r.hello.pct(99)), Num: float64(r.hello.pct(99)) / 1e6, Unit: "ms",
		Note: fmt.Sprintf("%d reconnects one after another, the other %d supervisors connected, %d boards in all; %.1f ms of coordinator CPU each", r.hello.n(), FleetSupervisors-1, boards, r.helloCPU)})
	e.add(Row{Figure: "fleet: coordinator CPU while idle (periodic reconciliation and ticks)", Value: fmt.Sprintf("%.1f%% of a core", r.idleCPU*100), Num: r.idleCPU * 100, Unit: "%",
		Note: fmt.Sprintf("%d boards connected, no lease asked for, over %s: reconciliation with every supervisor each 10 s, the state loop's tick each second", boards, FleetIdle)})
	e.add(Row{Figure: "fleet: kill -9 of the coordinator to a new lease READY", Value: fmt.Sprintf("%.2f s", r.restart.Seconds()), Num: r.restart.Seconds(), Unit: "s",
		Target: "< 5 s", Ratio: ratio(r.restart.Seconds(), 5), Met: met(r.restart < 5*time.Second && r.heldLost == 0),
		Note: fmt.Sprintf("%d boards, %d leases held across the kill (%d lost); serving again %s after the kill", boards, r.held, r.heldLost, r.serving.Round(time.Millisecond))})
	return nil
}

// fleetResult is what one run measured.
type fleetResult struct {
	grant     latencies
	began     time.Time
	winMu     sync.Mutex
	windows   map[int]*latencies // by 5 s window of the load, for the log
	requested atomic.Int64
	failed    atomic.Int64
	failMu    sync.Mutex
	failures  []string
	evAcked   uint64
	lagAfter  time.Duration
	rssMB     float64
	cpu       float64
	restart   time.Duration
	serving   time.Duration
	held      int
	heldLost  int

	stormEvents int     // events sent in the storm
	stormRate   float64 // events/s stored (acknowledged) in the storm
	stormCPU    float64 // coordinator CPU in the storm, in cores
	idleCPU     float64 // coordinator CPU while idle with every board connected, in cores
	hello       latencies
	helloCPU    float64 // coordinator CPU per Hello, in ms
}

// The storm: every supervisor sends FleetStormEach hook lines as fast as it can.
const (
	FleetStormEach = 2000
	// FleetIdle is how long the idle coordinator's CPU is measured.
	FleetIdle = 20 * time.Second
)

// storm has every light supervisor send FleetStormEach hook lines as fast as it can,
// and half of them lose their stream halfway (they send what is unacknowledged again,
// so some events reach the coordinator twice: it stores them once). It measures the
// events stored a second, from the first sent to the last acknowledged.
func (r *fleetResult) storm(fleet []*lightSup, pid int, acked, sent func() uint64) error {
	from := acked()
	began, cpu0 := time.Now(), cpuTime(pid)
	var wg sync.WaitGroup
	for i, ls := range fleet {
		wg.Add(1)
		go func() {
			defer wg.Done()
			const chunk = 100
			for k := 0; k < FleetStormEach; k += chunk {
				if i%2 == 1 && k == FleetStormEach/2 {
					ls.reconnect()
				}
				evs := make([]*pb.Event, chunk)
				for j := range evs {
					evs[j] = fleetHookLine("", fleetBoard(ls.index, j%FleetPerSup), jpb.LogSource_LOG_SOURCE_SYSTEM, fmt.Sprintf("storm line %d of %s", k+j, ls.id))
				}
				ls.mu.Lock()
				ls.emit(evs...)
				ls.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	r.stormEvents = len(fleet) * FleetStormEach
	deadline := time.Now().Add(2 * time.Minute)
	for acked() < sent() {
		if time.Now().After(deadline) {
			return fmt.Errorf("storm: %d of %d events acknowledged 2 minutes after the start", acked()-from, r.stormEvents)
		}
		time.Sleep(5 * time.Millisecond) // acks come per supervisor: polling their counters
	}
	el := time.Since(began)
	r.stormRate = float64(acked()-from) / el.Seconds()
	r.stormCPU = (cpuTime(pid) - cpu0).Seconds() / el.Seconds()
	logf("storm: %d events from %d supervisors stored in %s: %.0f events/s, coordinator %.0f %% of a core", r.stormEvents, len(fleet), el.Round(time.Millisecond), r.stormRate, r.stormCPU*100)
	return nil
}

// measureIdle returns the process's CPU, in cores, over d.
func measureIdle(pid int, d time.Duration) float64 {
	cpu0 := cpuTime(pid)
	time.Sleep(d) // measuring over a span: nothing to await
	return (cpuTime(pid) - cpu0).Seconds() / d.Seconds()
}

// hellosOf reconnects each supervisor in turn and times its Hello (100 boards, their
// live jobs) to the Welcome, with the coordinator's CPU over all of them less its idle
// share.
func (r *fleetResult) hellosOf(fleet []*lightSup, pid int) error {
	began, cpu0 := time.Now(), cpuTime(pid)
	for _, ls := range fleet {
		n := ls.hellos.n()
		ls.reconnect()
		deadline := time.Now().Add(30 * time.Second)
		for ls.hellos.n() == n {
			if time.Now().After(deadline) {
				return fmt.Errorf("supervisor %s: no Welcome within 30 s of a reconnect", ls.id)
			}
			time.Sleep(time.Millisecond) // the light supervisor's session says nothing else
		}
		r.hello.add(ls.hellos.last())
	}
	el := time.Since(began)
	busy := (cpuTime(pid) - cpu0).Seconds() - r.idleCPU*el.Seconds()
	r.helloCPU = max(busy, 0) * 1000 / float64(len(fleet))
	return nil
}

func (r *fleetResult) fail(format string, args ...any) {
	r.failed.Add(1)
	r.failMu.Lock()
	if len(r.failures) < 3 {
		r.failures = append(r.failures, fmt.Sprintf(format, args...))
	}
	r.failMu.Unlock()
}

func (r *fleetResult) firstFailure() string {
	r.failMu.Lock()
	defer r.failMu.Unlock()
	if len(r.failures) == 0 {
		return "none"
	}
	return "first: " + r.failures[0]
}

func fleetBoard(s, i int) string { return fmt.Sprintf("f%03d-%03d", s, i) }

// fleetOnPostgres runs the 10,000-board load again with the coordinator on PostgreSQL
// (a private server started here), for the rows side by side with SQLite's.
func fleetOnPostgres(e *env, d time.Duration) {
	s, err := pgtest.StartDurable()
	if err != nil {
		e.add(Row{Figure: "fleet on PostgreSQL", Value: "skipped", Note: oneLine(err.Error())})
		return
	}
	defer s.Stop()
	url, err := s.NewDatabase()
	if err == nil {
		logf("fleet: %d boards for %s, coordinator on PostgreSQL", FleetSupervisors*FleetPerSup, d)
		var r *fleetResult
		if r, err = fleetRun(e, "fleet-pg", FleetSupervisors, d, true, url); err == nil {
			p99 := r.grant.pct(99)
			e.add(Row{Figure: "fleet on PostgreSQL: lease grant p99", Value: ms(p99), Num: float64(p99) / float64(time.Millisecond), Unit: "ms",
				Target: "< 100 ms", Met: met(p99 < 100*time.Millisecond),
				Note: fmt.Sprintf("the same load; p50 %s; %d of %d leases failed; %.0f events/s stored; coordinator RSS %.0f MB; kill -9 to a new lease READY %.2f s (%d of %d held leases lost); private server on this host's disk, fsync and synchronous_commit on",
					ms(r.grant.pct(50)), r.failed.Load(), r.requested.Load(), float64(r.evAcked)/d.Seconds(), r.rssMB, r.restart.Seconds(), r.heldLost, r.held)})
			e.add(Row{Figure: "fleet on PostgreSQL: events stored, a storm from every supervisor at once", Value: fmt.Sprintf("%.0f events/s", r.stormRate), Num: r.stormRate, Unit: "events/s",
				Target: ">= 20,000 events/s", Met: met(r.stormRate >= 20000),
				Note: fmt.Sprintf("as on SQLite: %d x %d hook lines, half reconnecting halfway; coordinator %.0f %% of a core; private server, fsync and synchronous_commit on", FleetSupervisors, FleetStormEach, r.stormCPU*100)})
			e.add(Row{Figure: "fleet on PostgreSQL: Hello with 100 boards, to Welcome", Value: "p50 " + ms(r.hello.pct(50)) + ", p99 " + ms(r.hello.pct(99)), Num: float64(r.hello.pct(99)) / 1e6, Unit: "ms",
				Note: fmt.Sprintf("%d reconnects; %.1f ms of coordinator CPU each; idle coordinator %.1f%% of a core", r.hello.n(), r.helloCPU, r.idleCPU*100)})
		}
	}
	if err != nil {
		e.add(Row{Figure: "fleet on PostgreSQL", Value: "error", Note: oneLine(err.Error())})
	}
}

func fleetRun(e *env, name string, sups int, d time.Duration, restart bool, database string) (*fleetResult, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	stateDir := filepath.Join(e.dir, name)
	args := []string{"coordinator", "--listen", addr, "--state-dir", stateDir, "--log-format", "text", "--log-level", "warn", "--grace", "60s"}
	if database != "" {
		args = append(args, "--database", database)
	}
	// With -profile, the coordinator's own profiler (--pprof) gives a CPU profile of
	// the load, next to this process's.
	profile := e.flags.Lookup("cpuprofile").Value.String()
	metricsAddr := ""
	if profile != "" && restart && database == "" {
		if metricsAddr, err = freeAddr(); err != nil {
			return nil, err
		}
		args = append(args, "--metrics", metricsAddr, "--pprof")
	}
	coord, err := startDaemon(e.bin, nil, args...)
	if err != nil {
		return nil, err
	}
	defer func() { coord.kill() }()
	if err := waitPort(addr, 30*time.Second); err != nil {
		return nil, fmt.Errorf("coordinator: %w\n%s", err, tail(coord.output(), 2000))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var fleet []*lightSup
	for s := range sups {
		ls, err := newLightSup(addr, fmt.Sprintf("fleet-%03d", s), s)
		if err != nil {
			return nil, err
		}
		defer ls.close()
		fleet = append(fleet, ls)
		wg.Add(1)
		go func() { defer wg.Done(); ls.run(ctx) }()
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	api := pb.NewLeaseServiceClient(cc)
	boards := sups * FleetPerSup
	if err := waitAvailable(ctx, api, boards); err != nil {
		return nil, err
	}
	logf("%s: %d boards AVAILABLE", name, boards)

	r := &fleetResult{}
	acked := func() uint64 {
		var n uint64
		for _, ls := range fleet {
			n += ls.acked.Load()
		}
		return n
	}
	sent := func() uint64 {
		var n uint64
		for _, ls := range fleet {
			n += ls.sent.Load()
		}
		return n
	}
	pid := coord.cmd.Process.Pid
	cpu0, ack0 := cpuTime(pid), acked()
	began := time.Now()
	r.began = began
	var leases sync.WaitGroup
	var rssMax int64
	if metricsAddr != "" {
		go fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", metricsAddr, int(d.Seconds()*3/4)),
			strings.TrimSuffix(profile, ".cpu.pprof")+".coordinator.cpu.pprof")
	}
	tick := time.NewTicker(time.Second / FleetRate)
	sample := time.NewTicker(time.Second)
	i := 0
	for time.Since(began) < d {
		select {
		case <-tick.C:
			i++
			leases.Add(1)
			go func(i int) { defer leases.Done(); r.oneLease(ctx, api, i, boards) }(i)
		case <-sample.C:
			if st, err := procStatus(pid); err == nil {
				rssMax = max(rssMax, st["VmRSS"])
			}
		}
	}
	tick.Stop()
	sample.Stop()
	r.evAcked = acked() - ack0
	r.cpu = (cpuTime(pid) - cpu0).Seconds() / time.Since(began).Seconds()
	leases.Wait()
	stopped := time.Now()
	for acked() < sent() && time.Since(stopped) < 30*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	r.lagAfter = time.Since(stopped)
	if st, err := procStatus(pid); err == nil {
		rssMax = max(rssMax, st["VmRSS"])
	}
	r.rssMB = float64(rssMax) / 1024
	logf("%s: %d leases, %d failed (%s), grant p50 %s p99 %s, %d events acked, RSS %.0f MB", name, r.requested.Load(), r.failed.Load(),
		r.firstFailure(), ms(r.grant.pct(50)), ms(r.grant.pct(99)), r.evAcked, r.rssMB)
	logf("%s: grant by 5 s window:%s", name, r.windowLine())
	if !restart {
		return r, nil
	}
	if err := r.storm(fleet, pid, acked, sent); err != nil {
		return nil, err
	}
	r.idleCPU = measureIdle(pid, FleetIdle)
	logf("%s: idle with %d boards: %.1f %% of a core over %s (reconciliation every 10 s, ticks every 1 s)", name, boards, r.idleCPU*100, FleetIdle)
	if err := r.hellosOf(fleet, pid); err != nil {
		return nil, err
	}
	logf("%s: Hello with %d boards: p50 %s p99 %s, %.1f ms of coordinator CPU each (%d)", name, FleetPerSup, ms(r.hello.pct(50)), ms(r.hello.pct(99)), r.helloCPU, r.hello.n())

	// A lease on one board of each supervisor, held across a kill -9 of the coordinator.
	var held []string
	for s := range sups {
		l, err := api.CreateLease(ctx, &pb.CreateLeaseRequest{Board: fleetBoard(s, 0), Duration: durationpb.New(time.Hour), ClientName: "held"})
		if err != nil {
			return nil, fmt.Errorf("held lease: %w", err)
		}
		if _, err := waitPhase(ctx, api, l.GetLease().GetId(), pb.LeasePhase_LEASE_PHASE_READY, 30*time.Second); err != nil {
			return nil, fmt.Errorf("held lease: %w", err)
		}
		held = append(held, l.GetLease().GetId())
	}
	r.held = len(held)
	killed := time.Now()
	coord.kill()
	coord, err = startDaemon(e.bin, nil, args...)
	if err != nil {
		return nil, err
	}
	if err := waitPort(addr, 30*time.Second); err != nil {
		return nil, fmt.Errorf("coordinator after kill -9: %w\n%s", err, tail(coord.output(), 2000))
	}
	r.serving = time.Since(killed)
	// A new lease, asked for until the coordinator takes it (a board is free once its
	// supervisor is back).
	var id string
	for id == "" {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		l, err := api.CreateLease(cctx, &pb.CreateLeaseRequest{Selector: "group=g000", Duration: durationpb.New(time.Minute), ClientName: "after-restart"})
		ccancel()
		switch {
		case err == nil:
			id = l.GetLease().GetId()
		case time.Since(killed) > 60*time.Second:
			return nil, fmt.Errorf("no lease accepted within 60s of the restart: %w", err)
		default:
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := waitPhase(ctx, api, id, pb.LeasePhase_LEASE_PHASE_READY, 60*time.Second); err != nil {
		return nil, fmt.Errorf("lease after the restart: %w", err)
	}
	r.restart = time.Since(killed)
	for _, h := range held {
		g, err := api.GetLease(ctx, &pb.GetLeaseRequest{Id: h})
		if err != nil || g.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
			r.heldLost++
		}
	}
	logf("%s: restart: serving after %s, new lease READY after %s, %d of %d held leases lost", name, r.serving.Round(time.Millisecond),
		r.restart.Round(time.Millisecond), r.heldLost, r.held)
	return r, nil
}

// oneLease is one client: a lease by name (one in ten by selector), READY, held,
// released, DONE.
func (r *fleetResult) oneLease(ctx context.Context, api pb.LeaseServiceClient, i, boards int) {
	r.requested.Add(1)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req := &pb.CreateLeaseRequest{Duration: durationpb.New(time.Minute), ClientName: "bench"}
	// Boards in turn, skipping board 0 of each supervisor (held in the restart test).
	n := i % (boards - boards/FleetPerSup)
	s, b := n/(FleetPerSup-1), n%(FleetPerSup-1)+1
	if i%10 == 0 {
		req.Selector = fmt.Sprintf("group=g%03d", s)
	} else {
		req.Board = fleetBoard(s, b)
	}
	start := time.Now()
	cr, err := api.CreateLease(ctx, req)
	if err != nil {
		r.fail("CreateLease: %v", err)
		return
	}
	id := cr.GetLease().GetId()
	w, err := api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		r.fail("WatchLease: %v", err)
		return
	}
	if l, err := untilPhase(w, pb.LeasePhase_LEASE_PHASE_READY, 30*time.Second); err != nil {
		r.fail("lease %s: %v (last %v)", id, err, l.GetStatusMessage())
		return
	}
	r.grant.add(time.Since(start))
	r.byWindow(start, time.Since(start))
	t := time.NewTimer(FleetHold)
	select {
	case <-t.C:
	case <-ctx.Done():
		t.Stop()
		r.fail("lease %s: %v", id, ctx.Err())
		return
	}
	if _, err := api.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: id, Reason: "bench done"}); err != nil {
		r.fail("ReleaseLease %s: %v", id, err)
		return
	}
	if l, err := untilPhase(w, pb.LeasePhase_LEASE_PHASE_DONE, 30*time.Second); err != nil {
		r.fail("lease %s after release: %v (last %v)", id, err, l.GetStatusMessage())
	}
}

// untilPhase reads a WatchLease stream until the lease reaches phase (or ends otherwise).
func untilPhase(w pb.LeaseService_WatchLeaseClient, phase pb.LeasePhase, timeout time.Duration) (*pb.Lease, error) {
	type res struct {
		l   *pb.Lease
		err error
	}
	ch := make(chan res, 1)
	go func() {
		var last *pb.Lease
		for {
			l, err := w.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = fmt.Errorf("watch ended at %s", last.GetPhase())
				}
				ch <- res{last, err}
				return
			}
			last = l
			switch {
			case l.GetPhase() == phase:
				ch <- res{l, nil}
				return
			case l.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED || l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE:
				ch <- res{l, fmt.Errorf("ended %s: %s", l.GetPhase(), l.GetStatusMessage())}
				return
			}
		}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case x := <-ch:
		return x.l, x.err
	case <-t.C:
		return nil, fmt.Errorf("not %s within %s", phase, timeout)
	}
}

func waitPhase(ctx context.Context, api pb.LeaseServiceClient, id string, phase pb.LeasePhase, timeout time.Duration) (*pb.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w, err := api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return untilPhase(w, phase, timeout)
}

// lightSup is a supervisor reduced to its link: it announces FleetPerSup boards and
// answers StartJob and StopJob at once with the events of a lease without hooks.
type lightSup struct {
	id     string
	index  int
	cc     *grpc.ClientConn
	boards []*pb.BoardInfo
	sent   atomic.Uint64 // events numbered so far
	acked  atomic.Uint64 // the coordinator's last ack

	mu      sync.Mutex // the stream's sends and the fields below
	stream  pb.SupervisorLink_ConnectClient
	drop    context.CancelFunc // ends the session (its stream), if one runs
	hellos  latencies          // Hello sent -> Welcome received, per session
	seq     uint64
	unacked []*pb.Event
	live    map[string]string // job -> board
	busy    map[string]string // board -> job
}

func newLightSup(addr, id string, index int) (*lightSup, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	ls := &lightSup{id: id, index: index, cc: cc, live: map[string]string{}, busy: map[string]string{}}
	for i := range FleetPerSup {
		ls.boards = append(ls.boards, &pb.BoardInfo{Name: fleetBoard(index, i),
			Labels: map[string]string{"device": "rpi4", "group": fmt.Sprintf("g%03d", index)},
			Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_GOOD,
			ClientEndpoint: "127.0.0.1:1"})
	}
	return ls, nil
}

func (ls *lightSup) close() { ls.cc.Close() }

// run keeps the link up until ctx is done, reconnecting with a short back-off.
func (ls *lightSup) run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := ls.session(ctx)
		if ctx.Err() != nil {
			return
		}
		_ = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (ls *lightSup) session(ctx context.Context) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewSupervisorLinkClient(ls.cc).Connect(sctx)
	if err != nil {
		return err
	}
	ls.mu.Lock()
	ls.drop = cancel
	hello := &pb.Hello{SupervisorId: ls.id, LastAckedSeq: ls.acked.Load(), Version: "bench"}
	for _, b := range ls.boards {
		bi := proto.CloneOf(b)
		if ls.busy[b.Name] != "" {
			bi.Status = jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY
		}
		hello.Boards = append(hello.Boards, bi)
	}
	for job, board := range ls.live {
		hello.LiveJobs = append(hello.LiveJobs, &pb.LiveJob{JobId: job, Board: board, Phase: pb.LeasePhase_LEASE_PHASE_READY})
	}
	helloAt := time.Now()
	err = stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: hello}})
	ls.mu.Unlock()
	if err != nil {
		return err
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if m.GetWelcome() == nil {
		return errors.New("no Welcome")
	}
	ls.hellos.add(time.Since(helloAt))
	ls.mu.Lock()
	ls.stream = stream
	ls.trim(m.GetWelcome().GetLastSeqSeen())
	for _, ev := range ls.unacked {
		if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
			ls.mu.Unlock()
			return err
		}
	}
	ls.mu.Unlock()
	for {
		m, err := stream.Recv()
		if err != nil {
			ls.mu.Lock()
			ls.stream = nil
			ls.mu.Unlock()
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		switch {
		case m.GetAck() != nil:
			ls.mu.Lock()
			ls.trim(m.GetAck().GetUpToSeq())
			ls.mu.Unlock()
		case m.GetStartJob() != nil:
			ls.start(m.GetStartJob())
		case m.GetStopJob() != nil:
			ls.stop(m.GetStopJob().GetJobId())
		}
	}
}

// reconnect ends the current session; run starts the next.
func (ls *lightSup) reconnect() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.drop != nil {
		ls.drop()
		ls.drop = nil
	}
}

// trim forgets events the coordinator holds; ls.mu is held.
func (ls *lightSup) trim(upTo uint64) {
	if upTo > ls.acked.Load() {
		ls.acked.Store(upTo)
	}
	i := 0
	for i < len(ls.unacked) && ls.unacked[i].GetSeq() <= upTo {
		i++
	}
	ls.unacked = ls.unacked[i:]
}

// emit numbers and sends events; ls.mu is held. A send that fails is replayed after
// the reconnect.
func (ls *lightSup) emit(evs ...*pb.Event) {
	for _, ev := range evs {
		ls.seq++
		ev.Seq, ev.Time = ls.seq, timestamppb.Now()
		ls.unacked = append(ls.unacked, ev)
		ls.sent.Store(ls.seq)
		if ls.stream != nil {
			if err := ls.stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
				ls.stream = nil
			}
		}
	}
}

func transition(job, board string, from, to pb.LeasePhase, st jpb.ExporterStatus) *pb.Event {
	return &pb.Event{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: job, Board: board, From: from, To: to, ExporterStatus: st}}}
}

func fleetHookLine(job, board string, src jpb.LogSource, text string) *pb.Event {
	return &pb.Event{Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: job, Board: board, Source: src, Text: text}}}
}

func (ls *lightSup) start(sj *pb.StartJob) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	job, board := sj.GetJobId(), sj.GetBoard()
	if ls.live[job] != "" {
		return // a repeated StartJob
	}
	if ls.busy[board] != "" {
		ls.emit(&pb.Event{Body: &pb.Event_Error{Error: &pb.JobErrorEvent{JobId: job,
			Error: &pb.JobError{Kind: pb.JobErrorKind_JOB_ERROR_KIND_ALREADY_RUNNING, Description: "board busy"}}}})
		return
	}
	ls.live[job], ls.busy[board] = board, job
	ls.emit(
		transition(job, board, pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_STARTING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE),
		transition(job, board, pb.LeasePhase_LEASE_PHASE_STARTING, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK),
		fleetHookLine(job, board, jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, "powering on"),
		transition(job, board, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, pb.LeasePhase_LEASE_PHASE_READY, jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY),
	)
}

func (ls *lightSup) stop(job string) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	board := ls.live[job]
	if board == "" {
		return
	}
	delete(ls.live, job)
	delete(ls.busy, board)
	ls.emit(
		transition(job, board, pb.LeasePhase_LEASE_PHASE_READY, pb.LeasePhase_LEASE_PHASE_ENDING, jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK),
		transition(job, board, pb.LeasePhase_LEASE_PHASE_ENDING, pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK),
		fleetHookLine(job, board, jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK, "saving logs"),
		transition(job, board, pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, pb.LeasePhase_LEASE_PHASE_RELEASING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE),
		transition(job, board, pb.LeasePhase_LEASE_PHASE_RELEASING, pb.LeasePhase_LEASE_PHASE_DONE, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE),
		&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: board, Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE,
			Health: pb.BoardHealth_BOARD_HEALTH_GOOD, Message: "lease done"}}},
	)
}

// fetchProfile saves a profile from the coordinator's profiler.
func fetchProfile(url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		logf("coordinator profile: %v", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err == nil {
		_, err = io.Copy(f, resp.Body)
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		logf("coordinator profile: %v", err)
		return
	}
	logf("coordinator CPU profile written to %s", path)
}

func (r *fleetResult) byWindow(at time.Time, d time.Duration) {
	r.winMu.Lock()
	defer r.winMu.Unlock()
	if r.windows == nil {
		r.windows = map[int]*latencies{}
	}
	w := int(at.Sub(r.began) / (5 * time.Second))
	if r.windows[w] == nil {
		r.windows[w] = &latencies{}
	}
	r.windows[w].add(d)
}

func (r *fleetResult) windowLine() string {
	r.winMu.Lock()
	defer r.winMu.Unlock()
	var b strings.Builder
	for w := 0; w < len(r.windows); w++ {
		if l := r.windows[w]; l != nil {
			fmt.Fprintf(&b, " [%ds: p50 %s p99 %s max %s]", w*5, ms(l.pct(50)), ms(l.pct(99)), ms(l.pct(100)))
		}
	}
	return b.String()
}
