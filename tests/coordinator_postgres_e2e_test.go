package tests

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/coordinator/pgtest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// startPostgres starts a private PostgreSQL server for one test and returns a fresh
// database's URL. Without PostgreSQL installed the test is skipped (it fails under CI).
func startPostgres(t *testing.T) string {
	t.Helper()
	s, err := pgtest.Start()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL: %v", err)
		}
		t.Skipf("PostgreSQL: %v", err)
	}
	t.Cleanup(s.Stop)
	url, err := s.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// The real coordinator on PostgreSQL (--database): a supervisor's leases cycle, the
// coordinator is killed with -9 while one is READY and started again on the same
// database: the lease is still READY and ends DONE, new leases are served, and every
// event is stored once, in order.
func TestCoordinatorOnPostgres(t *testing.T) {
	url := startPostgres(t)
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	coord := startCoordinator(t, addr, stateDir, "--database", url)
	coord.waitOutput("database=postgres://postgres@127.0.0.1")
	cfg := supervisorConfig(t, dir, "lab-pg", addr, "echo before", "echo after",
		boardSpec{"pg-1", "device: rpi4"}, boardSpec{"pg-2", "device: rpi4"}, boardSpec{"pg-3", "device: qemu"})
	startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, addr)
	waitBoards(t, c, 3)
	for i := range 6 {
		l, err := ceCreateLease(ctxT(t), c, "device=rpi4", "", time.Minute, "pg")
		if err != nil {
			t.Fatal(err)
		}
		w, err := ceWatchLease(ctxT(t), c, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.ready(); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		if _, err := c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId()}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.done(); err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
	}
	held, err := ceCreateLease(ctxT(t), c, "device=qemu", "", time.Minute, "pg")
	if err != nil {
		t.Fatal(err)
	}
	w, err := ceWatchLease(ctxT(t), c, held.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	coord.kill()
	startCoordinator(t, addr, stateDir, "--database", url)
	c = leaseClient(t, addr)
	ceEventually(t, "the held lease READY after the restart", func() bool {
		r, err := c.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: held.GetId()})
		return err == nil && r.GetLease().GetPhase() == pb.LeasePhase_LEASE_PHASE_READY && r.GetLease().GetBoard() == "pg-3"
	})
	waitBoards(t, c, 2)
	l, err := ceCreateLease(ctxT(t), c, "device=rpi4", "", time.Minute, "pg")
	if err != nil {
		t.Fatal(err)
	}
	w2, err := ceWatchLease(ctxT(t), c, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.ready(); err != nil {
		t.Fatalf("a lease after the restart: %v", err)
	}
	for _, id := range []string{held.GetId(), l.GetId()} {
		if _, err := c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	w, err = ceWatchLease(ctxT(t), c, held.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.done(); err != nil {
		t.Fatal(err)
	}
	// Every event once, in order (the supervisor's outbox replayed what the killed
	// coordinator had not acknowledged).
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n, lo, hi, distinct int64
	ceEventually(t, "events stored", func() bool {
		err := db.QueryRow(`SELECT COUNT(*), MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM events WHERE supervisor_id = 'lab-pg'`).Scan(&n, &lo, &hi, &distinct)
		return err == nil && n > 0
	})
	if lo != 1 || hi != n || distinct != n {
		t.Fatalf("events of lab-pg: %d stored, seq %d to %d, %d distinct: want 1..N, each once", n, lo, hi, distinct)
	}
}
