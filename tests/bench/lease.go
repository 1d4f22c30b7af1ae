package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/journal"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/google/uuid"
)

// LeaseWindow is how long the lease scenarios start new cycles.
const LeaseWindow = 10 * time.Second

// runLease runs full lease cycles (StartJob, READY, StopJob, DONE) on every board at once
// for LeaseWindow, with the durable journal (fsync on) as the store. With hooks, each
// board has `true` as beforeLease and afterLease hook (each run under the real shim).
func runLease(e *env, hooks bool) error {
	n := IdleBoards
	j, err := journal.Open(filepath.Join(e.dir, "journal.db"), journal.Options{})
	if err != nil {
		return err
	}
	defer j.Close()
	ph := newPhases()
	c := newConn(ph.event)
	var boards []board.Config
	for i := 0; i < n; i++ {
		b := board.Config{Name: boardName(i), LeaseDuration: time.Hour}
		if hooks {
			h := &lease.HookConfig{Spec: jhook.Spec{Script: "true"}, Policy: jobs.HookPolicy{Timeout: time.Minute, OnFailure: jobs.PolicyEndLease}}
			b.Before, b.After = h, h
		}
		boards = append(boards, b)
	}
	p, err := startInproc(e, inprocOpts{boards: boards, conn: c, store: supervisor.Options{Store: j}})
	if err != nil {
		return err
	}
	defer p.stop()

	var cycles, failed, inWindow atomic.Int64
	var lat latencies
	began := time.Now()
	stopAt := began.Add(LeaseWindow)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			for time.Now().Before(stopAt) {
				if err := cycle(c, ph, name, &lat); err != nil {
					if err == errLeaseFailed {
						failed.Add(1)
						continue
					}
					firstErr.CompareAndSwap(nil, err)
					return
				}
				cycles.Add(1)
				if time.Now().Before(stopAt) {
					inWindow.Add(1)
				}
			}
		}(boardName(i))
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(LeaseWindow + 60*time.Second):
		return fmt.Errorf("lease cycles did not finish within a minute of the window's end")
	}
	elapsed := time.Since(began)
	if v := firstErr.Load(); v != nil {
		return v.(error)
	}
	st := j.Stats()
	// Every cycle counts, over the time until the last one ended (cycles started in the
	// window finish after it; with slow hooks most of them do).
	rate := float64(cycles.Load()) / elapsed.Seconds()
	logf("%d cycles (%d in the %s window, %d failed) across %d boards in %s: %.0f cycles/s; StartJob->READY p50 %s p99 %s; journal: %d writes in %d commits (%.1f per fsync)",
		cycles.Load(), inWindow.Load(), LeaseWindow, failed.Load(), n, elapsed.Round(time.Millisecond), rate, ms(lat.pct(50)), ms(lat.pct(99)),
		st.Writes, st.Commits, float64(st.Writes)/float64(max(st.Commits, 1)))
	perCycle := float64(st.Writes) / float64(max(cycles.Load(), 1))

	name := "lease throughput, no hooks (passed through)"
	if hooks {
		name = "lease throughput, `true` hooks under the shim"
	}
	r := Row{Figure: fmt.Sprintf("%s, %d boards, durable journal", name, n), Value: fmt.Sprintf("%.0f cycles/s", rate), Num: rate, Unit: "cycles/s",
		Target: ">= 1000 cycles/s", Met: met(rate >= 1000),
		Note: fmt.Sprintf("%d cycles, %d failed; %.1f journal writes per cycle, %.1f writes per fsync", cycles.Load(), failed.Load(), perCycle,
			float64(st.Writes)/float64(max(st.Commits, 1)))}
	if !hooks {
		serial, err := serialWrites(e)
		if err != nil {
			return err
		}
		base := serial / perCycle
		r.Baseline = fmt.Sprintf("%.0f cycles/s", base)
		r.Ratio = ratio(rate, base)
		r.Note += fmt.Sprintf("; baseline: one fsync per journal write (%.0f writes/s serial)", serial)
	} else {
		r.Ratio = ratio(rate, 1000)
		r.Note += "; two hook processes (shim + sh) per cycle"
	}
	e.add(r)
	// The same latency without load: one board, one lease at a time.
	var one latencies
	for i := 0; i < 100; i++ {
		if err := cycle(c, ph, boardName(0), &one); err != nil && err != errLeaseFailed {
			return err
		}
	}
	logf("one board alone: StartJob->READY p50 %s p99 %s", ms(one.pct(50)), ms(one.pct(99)))
	e.add(Row{Figure: fmt.Sprintf("StartJob -> READY latency (%s)", map[bool]string{false: "no hooks", true: "`true` hooks"}[hooks]),
		Value: "p50 " + ms(lat.pct(50)) + ", p99 " + ms(lat.pct(99)), Num: float64(lat.pct(99)) / 1e6, Unit: "ms",
		Note: fmt.Sprintf("%d samples with %d boards cycling at once; one board alone: p50 %s, p99 %s (%d cycles)", lat.n(), n, ms(one.pct(50)), ms(one.pct(99)), one.n())})
	return nil
}

var errLeaseFailed = fmt.Errorf("lease failed")

// cycle runs one lease on a board: StartJob, wait READY, StopJob, wait DONE.
func cycle(c *conn, ph *phases, boardName string, lat *latencies) error {
	job := uuid.NewString()
	chs := ph.expect(job, jobs.PhaseReady, jobs.PhaseDone)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := c.StartJob(ctx, connector.StartJobRequest{JobID: job, Board: boardName, Client: "bench"}); err != nil {
		return fmt.Errorf("StartJob on %s: %w", boardName, err)
	}
	var ready time.Time
	select {
	case ready = <-chs[0]:
	case <-ctx.Done():
		return fmt.Errorf("job on %s not READY within a minute", boardName)
	}
	if ready.IsZero() {
		return errLeaseFailed
	}
	lat.add(ready.Sub(t0))
	if err := c.StopJob(ctx, connector.StopJobRequest{JobID: job}); err != nil {
		return fmt.Errorf("StopJob on %s: %w", boardName, err)
	}
	select {
	case t := <-chs[1]:
		if t.IsZero() {
			return errLeaseFailed
		}
	case <-ctx.Done():
		return fmt.Errorf("job on %s not DONE within a minute", boardName)
	}
	return nil
}

// serialWrites measures the journal's write rate one write at a time (one fsync each).
func serialWrites(e *env) (float64, error) {
	j, err := journal.Open(filepath.Join(e.dir, "serial.db"), journal.Options{})
	if err != nil {
		return 0, err
	}
	defer j.Close()
	spec := jobs.Spec{JobID: uuid.NewString(), Board: "b", Duration: time.Hour}
	began := time.Now()
	n := 0
	for time.Since(began) < time.Second {
		if err := j.SaveLease(spec, jobs.State{Phase: jobs.PhaseReady, Failure: strconv.Itoa(n)}, nil); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(began).Seconds(), nil
}
