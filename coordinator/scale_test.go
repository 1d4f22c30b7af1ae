package coordinator

import (
	"fmt"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
)

// fleetEnv starts a coordinator with sups supervisors of perSup boards each. Every board
// has device=rpi4; the first five of the first supervisor also have group=small, all
// others group=big.
func fleetEnv(t *testing.T, sups, perSup int) (*env, []*fakeSup) {
	t.Helper()
	e := newEnv(t, "", Options{})
	var fs []*fakeSup
	for s := range sups {
		var boards []*pb.BoardInfo
		for i := range perSup {
			group := "big"
			if s == 0 && i < 5 {
				group = "small"
			}
			boards = append(boards, board(fmt.Sprintf("s%03d-b%03d", s, i), "device", "rpi4", "group", group))
		}
		fs = append(fs, e.dial(fmt.Sprintf("sup-%03d", s), boards, supOpts{}))
	}
	return e, fs
}

// leaseCost is what one CreateLease touched: index entries visited and board rows read.
type leaseCost struct{ visits, rows int64 }

func (e *env) costOf(what func()) leaseCost {
	v0, r0 := e.c.visits.Load(), e.c.rowsRead.Load()
	what()
	return leaseCost{e.c.visits.Load() - v0, e.c.rowsRead.Load() - r0}
}

// TestLeaseCostDoesNotGrowWithTheFleet makes the same lease requests against 100 boards
// and against 10,000, and fails if any of them touches more boards in the larger fleet:
// a request by name, by a selector five boards match (free, then all taken so that it
// queues), one no board matches, and a release whose board then serves the queue. No
// request reads a board row from the store: the index answers.
func TestLeaseCostDoesNotGrowWithTheFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 boards")
	}
	measure := func(sups, perSup int) map[string]leaseCost {
		e, fs := fleetEnv(t, sups, perSup)
		costs := map[string]leaseCost{}
		var byName *pb.Lease
		costs["by name"] = e.costOf(func() { byName = e.mustCreate("", "s000-b007", time.Hour) })
		if byName.GetBoard() != "s000-b007" || byName.GetQueued() {
			t.Fatalf("lease by name: %v", byName)
		}
		fs[0].expectStart()
		var small []*pb.Lease
		for i := range 5 {
			costs[fmt.Sprintf("selector, free %d", i)] = e.costOf(func() { small = append(small, e.mustCreate("group=small", "", time.Hour)) })
			if small[i].GetQueued() {
				t.Fatalf("lease %d on group=small queued with free boards", i)
			}
			fs[0].expectStart()
		}
		var queued *pb.Lease
		costs["selector, queued"] = e.costOf(func() { queued = e.mustCreate("group=small,device=rpi4", "", time.Hour) })
		if !queued.GetQueued() {
			t.Fatalf("sixth lease on five boards: %v", queued)
		}
		costs["unsatisfiable"] = e.costOf(func() {
			_, err := e.create("group=none", "", time.Hour, "x")
			wantCode(t, err, codes.FailedPrecondition, "no board matches group=none")
		})
		// The first small lease ends: its board goes to the queued lease.
		first := small[0]
		costs["release, board serves the queue"] = e.costOf(func() {
			fs[0].transition(first.GetId(), first.GetBoard(), pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_DONE, 0)
			if sj := fs[0].expectStart(); sj.GetJobId() != queued.GetId() || sj.GetBoard() != first.GetBoard() {
				t.Fatalf("after the release: %v, want StartJob of %s on %s", sj, queued.GetId(), first.GetBoard())
			}
			fs[0].waitAcked()
		})
		e.c.mustMatchStore(t)
		return costs
	}
	small := measure(1, 100)
	large := measure(100, 100)
	for what, s := range small {
		l := large[what]
		t.Logf("%-32s 100 boards: %3d entries, %d rows; 10,000 boards: %3d entries, %d rows", what, s.visits, s.rows, l.visits, l.rows)
		// The release's count includes the periodic timer's work while it waits; a
		// timer looks at no board here (none is held).
		if l.visits > s.visits+2 || l.rows > 0 || s.rows > 0 {
			t.Errorf("%s: touched %d index entries and %d board rows at 10,000 boards, %d and %d at 100", what, l.visits, l.rows, s.visits, s.rows)
		}
	}
}
