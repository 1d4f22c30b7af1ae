package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	bvgrpc "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/journal"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Hook flood scenario (DESIGN §11 "hook output"): beforeLease hooks that print as fast as
// they can, through the real shim (on its pseudo-terminal), the hook watcher, the outbox
// actor and the durable on-disk outbox (fsync), with the journal as the store. A lease
// is READY only once every line of its hook is durable in the outbox, so the time from
// StartJob to READY is the time to make all the lines durable.
const (
	FloodLines      = 1_000_000
	FloodHooks      = 20
	FloodLinesEach  = 50_000
	FloodHookSlack  = 120 * time.Second
	floodLineFormat = `"flashing block " i " of the root file system"`
)

// floodScript prints n lines as fast as awk can (block-buffered, as most tools do).
func floodScript(n int) string {
	return fmt.Sprintf(`awk 'BEGIN { for (i = 1; i <= %d; i++) print %s }'`, n, floodLineFormat)
}

// floodRig is an in-process supervisor whose connector is the real durable outbox of
// the coordinator link, connected to coordAddr (or to nothing: then events stay queued,
// durably, as while the coordinator is away).
type floodRig struct {
	p     *inproc
	q     *bvgrpc.Queue
	c     *floodConn
	close func()
}

// floodConn is the link's client with a tap on transitions, for the phases awaited.
type floodConn struct {
	*bvgrpc.Client
	ph *phases
}

func (c *floodConn) UpdateJobState(ev connector.Event) {
	c.Client.UpdateJobState(ev)
	c.ph.event(ev)
	if ev.Transition.To.Terminal() && ev.Transition.To != jobs.PhaseDone {
		logf("lease %s on %s: %s", ev.JobID, ev.Board, ev.Transition.Message)
	}
}

func (c *floodConn) DeliverBatch(evs []connector.Event) {
	for _, ev := range evs {
		if ev.Transition != nil {
			c.ph.event(ev)
			if ev.Transition.To.Terminal() && ev.Transition.To != jobs.PhaseDone {
				logf("lease %s on %s: %s", ev.JobID, ev.Board, ev.Transition.Message)
			}
		}
	}
	if b, ok := any(c.Client).(connector.Batcher); ok {
		b.DeliverBatch(evs)
		return
	}
	for _, ev := range evs {
		connector.Deliver(c.Client, ev)
	}
}

// run serves the link when a coordinator is given.
func (c *floodConn) Run(ctx context.Context, sup connector.Supervisor) error {
	return c.Client.Run(ctx, sup)
}

func startFlood(e *env, name string, boards []board.Config, coordAddr string) (*floodRig, error) {
	dir := filepath.Join(e.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	j, err := journal.Open(filepath.Join(dir, "journal.db"), journal.Options{})
	if err != nil {
		return nil, err
	}
	q, err := bvgrpc.OpenQueue(filepath.Join(dir, "outbox.db"), bvgrpc.QueueOptions{MaxBytes: 2 << 30})
	if err != nil {
		j.Close()
		return nil, err
	}
	var infos []bvgrpc.BoardInfo
	for _, b := range boards {
		infos = append(infos, bvgrpc.BoardInfo{Name: b.Name})
	}
	addr := coordAddr
	if addr == "" {
		addr = "127.0.0.1:1" // nobody: events stay in the outbox
	}
	cl := bvgrpc.NewClient(bvgrpc.ClientOptions{Address: addr, SupervisorID: "flood-" + name, Queue: q, Boards: infos})
	c := &floodConn{Client: cl, ph: newPhases()}
	p, err := startInproc(e, inprocOpts{boards: boards, conn: c, store: supervisor.Options{Store: j, StateDir: filepath.Join(dir, "state")}})
	if err != nil {
		q.Close()
		j.Close()
		return nil, err
	}
	return &floodRig{p: p, q: q, c: c, close: func() {
		_ = p.stop()
		q.Close()
		j.Close()
	}}, nil
}

// lease runs one lease on b to READY and returns how long it took.
func (r *floodRig) lease(ctx context.Context, b string) (time.Duration, error) {
	job := uuid.NewString()
	chs := r.c.ph.expect(job, jobs.PhaseReady)
	began := time.Now()
	if err := r.p.sup.StartJob(ctx, connector.StartJobRequest{JobID: job, Board: b, Client: "bench", Token: uuid.NewString()}); err != nil {
		return 0, err
	}
	select {
	case at := <-chs[0]:
		if at.IsZero() {
			return 0, fmt.Errorf("lease on %s ended before READY", b)
		}
		return at.Sub(began), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("lease on %s: not READY: %w", b, ctx.Err())
	}
}

func floodBoard(name string, lines int) board.Config {
	return board.Config{Name: name, LeaseDuration: time.Hour, Before: &lease.HookConfig{Spec: jhook.Spec{Script: floodScript(lines)},
		Policy: jobs.HookPolicy{Timeout: 60 * time.Second, OnFailure: jobs.PolicyEndLease}}}
}

// producerRate times the hook alone under the shim, on its terminal as in a lease, with
// no daemon reading: how fast the lines are made and spooled.
func producerRate(e *env, lines int) (float64, error) {
	dir := filepath.Join(e.dir, "flood-baseline")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	cmd := exec.Command(e.bin, "hook-shim", "--dir", dir, "--timeout", "120s", "--", "/bin/sh", "-c", floodScript(lines))
	began := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("hook-shim: %w: %s", err, out)
	}
	return float64(lines) / time.Since(began).Seconds(), nil
}

func runHookFlood(e *env) error {
	ctx, cancel := context.WithTimeout(context.Background(), FloodHookSlack)
	defer cancel()
	base, err := producerRate(e, FloodLines)
	if err != nil {
		return err
	}
	baseline := fmt.Sprintf("%.0f lines/s (the hook alone under the shim, no daemon)", base)

	// One hook, into the durable outbox (no coordinator).
	r, err := startFlood(e, "one", []board.Config{floodBoard("b0000", FloodLines)}, "")
	if err != nil {
		return err
	}
	d, err := r.lease(ctx, "b0000")
	stored, last, _ := r.q.Stats()
	r.close()
	if err != nil {
		return err
	}
	rate := float64(FloodLines) / d.Seconds()
	logf("hook flood: %d lines durable in %s: %.0f lines/s (outbox %d events, %d bytes)", FloodLines, d.Round(time.Millisecond), rate, last, stored)
	e.add(Row{Figure: "hook lines, one hook printing flat out, to the durable outbox", Value: fmt.Sprintf("%.0f lines/s", rate), Num: rate, Unit: "lines/s",
		Target: ">= 100,000 lines/s", Baseline: baseline, Ratio: ratio(rate, base), Met: met(rate >= 100_000),
		Note: fmt.Sprintf("%d lines, StartJob -> READY (READY only once every line is durable), fsync on", FloodLines)})

	// Twenty hooks at once.
	var boards []board.Config
	for i := 0; i < FloodHooks; i++ {
		boards = append(boards, floodBoard(boardName(i), FloodLinesEach))
	}
	r, err = startFlood(e, "twenty", boards, "")
	if err != nil {
		return err
	}
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, FloodHooks)
	for _, b := range boards {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if _, err := r.lease(ctx, name); err != nil {
				errs <- err
			}
		}(b.Name)
	}
	wg.Wait()
	d = time.Since(began)
	r.close()
	close(errs)
	for err := range errs {
		return err
	}
	total := FloodHooks * FloodLinesEach
	rate = float64(total) / d.Seconds()
	logf("hook flood: %d hooks x %d lines durable in %s: %.0f lines/s", FloodHooks, FloodLinesEach, d.Round(time.Millisecond), rate)
	e.add(Row{Figure: fmt.Sprintf("hook lines, %d hooks printing flat out at once, to the durable outbox", FloodHooks), Value: fmt.Sprintf("%.0f lines/s", rate), Num: rate, Unit: "lines/s",
		Target: ">= 100,000 lines/s in sum", Baseline: baseline, Ratio: ratio(rate, base), Met: met(rate >= 100_000),
		Note: fmt.Sprintf("%d lines each, all READY", FloodLinesEach)})

	// End to end: one hook, to a coordinator process storing every line.
	coordAddr, err := freeAddr()
	if err != nil {
		return err
	}
	coord, err := startDaemon(e.bin, nil, "coordinator", "--listen", coordAddr,
		"--state-dir", filepath.Join(e.dir, "flood-coord"), "--log-format", "text", "--log-level", "warn", "--grace", "60s")
	if err != nil {
		return err
	}
	defer coord.kill()
	if err := waitPort(coordAddr, 30*time.Second); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	r, err = startFlood(e, "e2e", []board.Config{floodBoard("b0000", FloodLines)}, coordAddr)
	if err != nil {
		return err
	}
	defer r.close()
	// The lease is the coordinator's (a job it did not assign would be stopped by its
	// reconciliation).
	cc, err := grpc.NewClient(coordAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	leases := pb.NewLeaseServiceClient(cc)
	if err := waitAvailable(ctx, leases, 1); err != nil {
		return err
	}
	began = time.Now()
	cr, err := leases.CreateLease(ctx, &pb.CreateLeaseRequest{Board: "b0000", Duration: durationpb.New(time.Hour), ClientName: "bench"})
	if err != nil {
		return err
	}
	ready := r.c.ph.expect(cr.GetLease().GetId(), jobs.PhaseReady)
	select {
	case at := <-ready[0]:
		if at.IsZero() {
			return fmt.Errorf("the coordinator's lease on b0000 ended before READY")
		}
	case <-ctx.Done():
		return fmt.Errorf("the coordinator's lease on b0000 not READY: %w", ctx.Err())
	}
	_, last, _ = r.q.Stats()
	for r.q.Acked() < last && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	d = time.Since(began)
	acked := r.q.Acked()
	rate = float64(FloodLines) / d.Seconds()
	note := fmt.Sprintf("%d lines, StartJob -> every event stored and acknowledged by the coordinator (SQLite)", FloodLines)
	if acked < last {
		note = fmt.Sprintf("only %d of %d events acknowledged within %s; ", acked, last, FloodHookSlack) + note
	}
	logf("hook flood end to end: %d lines stored in %s: %.0f lines/s", FloodLines, d.Round(time.Millisecond), rate)
	e.add(Row{Figure: "hook lines, one hook printing flat out, end to end to a coordinator", Value: fmt.Sprintf("%.0f lines/s", rate), Num: rate, Unit: "lines/s",
		Target: ">= 50,000 lines/s", Baseline: baseline, Ratio: ratio(rate, base), Met: met(acked >= last && rate >= 50_000), Note: note})
	return nil
}
