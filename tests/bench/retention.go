package main

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"time"

	bvgrpc "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/coordinator"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The retention scenario's sizes: a backlog of ended leases' logs to prune, and the
// event batches measured meanwhile.
const (
	RetentionLeases    = 500
	RetentionPerLease  = 200 // events each: 100,000 in all
	RetentionBatch     = 32  // hook lines per Events call, as the link hands them over
	RetentionBaseline  = 4 * time.Second
	RetentionMaxWindow = 60 * time.Second
)

// runRetention measures what pruning a large backlog of ended leases' logs costs the
// supervisor link: the latency of the coordinator's event path (Coordinator.Events, one
// transaction per batch, called as the link calls it) while retention removes the
// backlog, against the same path with retention idle, on the same database.
func runRetention(e *env) error {
	dir := filepath.Join(e.dir, "coord")
	open := func(lo coordinator.LeaseLogOptions) (*coordinator.Coordinator, context.CancelFunc, chan struct{}, error) {
		c, err := coordinator.New(coordinator.Options{StateDir: dir, Logger: hclog.NewNullLogger(), LeaseLogs: lo, ReconcileInterval: time.Hour})
		if err != nil {
			return nil, nil, nil, err
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Run(ctx); close(done) }()
		return c, cancel, done, nil
	}
	idle := coordinator.LeaseLogOptions{Retention: -1, MaxBytes: -1, PruneInterval: time.Hour}
	c, cancel, done, err := open(idle)
	if err != nil {
		return err
	}
	stop := func() { cancel(); <-done; c.Close() }
	sess := &bvgrpc.Session{ID: "bench"}
	hello := &pb.Hello{SupervisorId: "bench", Boards: []*pb.BoardInfo{{Name: "b1", Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE,
		Health: pb.BoardHealth_BOARD_HEALTH_GOOD}}}
	if _, err := c.Connected(context.Background(), sess, hello); err != nil {
		stop()
		return err
	}
	if err := fillBacklog(filepath.Join(dir, "coordinator.db")); err != nil {
		stop()
		return err
	}
	var seq uint64
	measure := func(c *coordinator.Coordinator, until func() bool) (*latencies, error) {
		lat := &latencies{}
		for !until() {
			evs := make([]*pb.Event, RetentionBatch)
			for i := range evs {
				seq++
				evs[i] = &pb.Event{Seq: seq, Time: timestamppb.Now(), Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: "live-job", Board: "b1",
					Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Severity: pb.Severity_SEVERITY_INFO, Text: fmt.Sprintf("flashing block %d of the root file system", seq)}}}
			}
			t0 := time.Now()
			if err := c.Events(context.Background(), sess, evs); err != nil {
				return nil, err
			}
			lat.add(time.Since(t0))
		}
		return lat, nil
	}
	began := time.Now()
	base, err := measure(c, func() bool { return time.Since(began) > RetentionBaseline })
	stop()
	if err != nil {
		return err
	}
	// The same database, with every ended lease's log past its age.
	c, cancel, done, err = open(coordinator.LeaseLogOptions{Retention: time.Nanosecond, MaxBytes: -1, PruneInterval: 10 * time.Millisecond})
	if err != nil {
		return err
	}
	defer func() { cancel(); <-done; c.Close() }()
	if _, err := c.Connected(context.Background(), sess, hello); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "coordinator.db")+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	left := func() int {
		var n int
		_ = db.QueryRow(`SELECT COUNT(*) FROM events WHERE supervisor_id = 'old'`).Scan(&n)
		return n
	}
	began = time.Now()
	var lastCheck time.Time
	remaining := RetentionLeases * RetentionPerLease
	during, err := measure(c, func() bool {
		if time.Since(lastCheck) > 50*time.Millisecond {
			lastCheck, remaining = time.Now(), left()
		}
		return remaining == 0 || time.Since(began) > RetentionMaxWindow
	})
	if err != nil {
		return err
	}
	pruned := time.Since(began)
	total := RetentionLeases * RetentionPerLease
	removed := total - remaining
	logf("retention: %d of %d backlog events removed in %s; event path p50 %s p99 %s max %s (idle: p50 %s p99 %s max %s, %d and %d batches)",
		removed, total, pruned.Round(time.Millisecond), ms(during.pct(50)), ms(during.pct(99)), ms(during.pct(100)),
		ms(base.pct(50)), ms(base.pct(99)), ms(base.pct(100)), during.n(), base.n())
	note := fmt.Sprintf("%d ended leases x %d events (%d) past their age; batches of %d hook lines; %d batches measured while pruning, %d idle",
		RetentionLeases, RetentionPerLease, total, RetentionBatch, during.n(), base.n())
	if remaining > 0 {
		note = fmt.Sprintf("only %d of %d removed within %s; ", removed, total, RetentionMaxWindow) + note
	}
	p99, b99 := during.pct(99), base.pct(99)
	e.add(Row{Figure: "retention: event path p99 while pruning a backlog", Value: ms(p99), Num: float64(p99) / 1e6, Unit: "ms",
		Target: "<= 2x idle + 20 ms", Baseline: "p99 " + ms(b99) + " with retention idle", Ratio: ratio(float64(b99), float64(p99)),
		Met: met(p99 <= 2*b99+20*time.Millisecond), Note: note})
	e.add(Row{Figure: "retention: event path max while pruning", Value: ms(during.pct(100)), Num: float64(during.pct(100)) / 1e6, Unit: "ms",
		Target: "-", Baseline: "max " + ms(base.pct(100)) + " idle", Ratio: ratio(float64(base.pct(100)), float64(during.pct(100)))})
	rate := float64(removed) / pruned.Seconds()
	e.add(Row{Figure: "retention: events removed per second", Value: fmt.Sprintf("%.0f events/s", rate), Num: rate, Unit: "events/s",
		Target: "-", Met: met(remaining == 0), Note: "PruneBatch 500, PrunePause 10ms (the defaults), while the event path runs flat out"})
	return nil
}

// fillBacklog writes ended leases with their logs straight into the database, as a
// coordinator that ran for months would hold them (supervisor "old").
func fillBacklog(path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	old := time.Now().Add(-90 * 24 * time.Hour).UnixNano()
	seq := 0
	for l := range RetentionLeases {
		id := fmt.Sprintf("00000000-0000-0000-0000-%012d", l)
		if _, err := tx.Exec(`INSERT INTO leases (id, board, supervisor_id, client, token_hash, duration_ns, state, phase, created_at, ended_at, queue_pos)
			VALUES ($1, 'gone', 'old', 'bench', 'x', 1, 'ended', 8, $2, $2, $3)`, id, old+int64(l), -RetentionLeases+l); err != nil {
			return err
		}
		for range RetentionPerLease {
			seq++
			if _, err := tx.Exec(`INSERT INTO events (supervisor_id, seq, at_ns, job_id, board, kind, payload) VALUES ('old', $1, $2, $3, 'gone', 'hook_log', $4)`,
				seq, old, id, fmt.Sprintf(`{"jobId":%q,"board":"gone","source":"LOG_SOURCE_AFTER_LEASE_HOOK","severity":"SEVERITY_INFO","text":"saving logs to the archive, part %d of the backlog"}`, id, seq)); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}
