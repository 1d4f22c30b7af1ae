package coordinator

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
)

// eventsOf counts a lease's stored events.
func eventsOf(t *testing.T, e *env, id string) int {
	t.Helper()
	var n int
	if err := e.c.db.QueryRowContext(e.ctx(), `SELECT COUNT(*) FROM events WHERE job_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// runLease runs a lease on r1 through READY, lines hook lines, and (if end) DONE.
func runLease(e *env, f *fakeSup, lines int, end bool) string {
	e.t.Helper()
	l := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	for i := range lines {
		hookLine(f, l.GetId(), fmt.Sprintf("line %d", i))
	}
	if end {
		f.toDone(l.GetId(), "r1")
	}
	f.waitAcked()
	return l.GetId()
}

// Retention removes an ended lease's log past its age, in batches, and not one within
// it, nor a lease's that has not ended however old; the lease's record stays, and its
// log then says it was removed.
func TestRetentionByAge(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, LeaseLogs: LeaseLogOptions{Retention: 3 * time.Hour, MaxBytes: -1,
		PruneInterval: time.Hour, PruneBatch: 7, PrunePause: time.Millisecond}})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	old := runLease(e, f, 30, true)
	clock.Advance(2 * time.Hour)
	recent := runLease(e, f, 5, true)
	running := runLease(e, f, 5, false)
	clock.Advance(2 * time.Hour) // old ended 4h ago, recent 2h ago
	st, err := e.c.pruneLogs(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if st.byAge != 1 || st.bySize != 0 || st.events != int64(7+30) {
		t.Fatalf("retention pass: %+v, want one log of 37 events removed for its age", st)
	}
	if n := eventsOf(t, e, old); n != 0 {
		t.Fatalf("%d events of the old lease left", n)
	}
	if eventsOf(t, e, recent) != 7+5 || eventsOf(t, e, running) != 3+5 {
		t.Fatal("retention removed events of a recent or running lease")
	}
	_, err = followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: old}).rest()
	wantCode(t, err, codes.FailedPrecondition, "was removed on")
	if g := e.get(old); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		t.Fatalf("the old lease's record: %v", g)
	}
	if es, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: recent}).rest(); err != nil || len(es) != 7+5+1 {
		t.Fatalf("recent lease's log: %d entries, %v", len(es), err)
	}
	// A second pass has nothing to do.
	if st, err := e.c.pruneLogs(e.ctx()); err != nil || st.byAge+st.bySize+st.counted != 0 {
		t.Fatalf("second pass: %+v %v", st, err)
	}
}

// Past the size bound, the logs of the leases that ended first go until the rest fit.
func TestRetentionBySize(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, LeaseLogs: LeaseLogOptions{Retention: -1, MaxBytes: 1 << 40, PruneInterval: time.Hour}})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	var ids []string
	for range 4 {
		ids = append(ids, runLease(e, f, 20, true))
		clock.Advance(time.Minute)
	}
	if _, err := e.c.pruneLogs(e.ctx()); err != nil {
		t.Fatal(err)
	}
	var each int64
	if err := e.c.db.QueryRowContext(e.ctx(), `SELECT log_bytes FROM lease_logs WHERE lease_id = $1`, ids[0]).Scan(&each); err != nil || each <= 0 {
		t.Fatalf("log size of a lease: %d %v", each, err)
	}
	// Room for a bit more than two logs: the two oldest go.
	opts := e.c.logs.opts
	opts.MaxBytes = each*2 + each/2
	st, err := e.c.pruneLogsWith(e.ctx(), opts)
	if err != nil || st.bySize != 2 || st.byAge != 0 {
		t.Fatalf("retention pass: %+v %v, want two logs removed for size", st, err)
	}
	for i, id := range ids {
		if n := eventsOf(t, e, id); (i < 2) != (n == 0) {
			t.Errorf("lease %d (ended %d minutes after the first): %d events left", i, i, n)
		}
	}
}
