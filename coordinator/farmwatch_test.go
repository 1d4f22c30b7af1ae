package coordinator

import (
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// waitWake waits for a FarmWatch wake-up.
func waitWake(t *testing.T, w *FarmWatch, what string) {
	t.Helper()
	select {
	case <-w.C():
	case <-time.After(waitTimeout):
		t.Fatalf("no farm wake-up after %s", what)
	}
}

// drainWake empties a pending wake-up.
func drainWake(w *FarmWatch) {
	select {
	case <-w.C():
	default:
	}
}

// A FarmWatch is woken by every kind of farm change: a supervisor's Hello, a board
// status event, a lease, maintenance, a disconnect; and the supervisors' and queues'
// views say what the coordinator knows.
func TestFarmWatchWakesOnEveryChange(t *testing.T) {
	e := newEnv(t, "", Options{Grace: time.Hour})
	w := e.c.WatchFarm()
	defer w.Close()

	sup := e.dial("lab-1", []*pb.BoardInfo{board("b1", "device", "rpi4"), board("b2", "device", "rpi4")}, supOpts{})
	waitWake(t, w, "Hello")

	drainWake(w)
	sup.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "b2",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_BAD}}})
	waitWake(t, w, "a board status event")

	drainWake(w)
	l := e.mustCreate("device=rpi4", "", time.Minute)
	waitWake(t, w, "CreateLease")
	start := sup.expectStart()
	if start.GetJobId() != l.GetId() {
		t.Fatalf("StartJob for %s, want %s", start.GetJobId(), l.GetId())
	}
	// b1 is taken, b2 is bad: two more leases queue, each could have either board.
	e.mustCreate("device=rpi4", "", time.Minute)
	e.mustCreate("", "b2", time.Minute)
	q, err := e.c.BoardQueues(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if q["b1"] != 1 || q["b2"] != 2 {
		t.Fatalf("queues %v, want b1:1 b2:2", q)
	}

	drainWake(w)
	if _, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "b2", On: true}); err != nil {
		t.Fatal(err)
	}
	waitWake(t, w, "SetBoardMaintenance")

	sups, err := e.c.Supervisors(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if len(sups) != 1 || !sups[0].Connected || sups[0].Boards != 2 || sups[0].LiveLeases != 1 || sups[0].Version != "test" || sups[0].Gone {
		t.Fatalf("supervisors: %+v", sups)
	}

	drainWake(w)
	sup.close()
	waitWake(t, w, "a disconnect")
	eventually(t, "the supervisor shown disconnected", func() bool {
		s, err := e.c.Supervisors(e.ctx())
		return err == nil && len(s) == 1 && !s[0].Connected
	})

	// Closed: no more wake-ups, and notify costs nothing.
	w.Close()
	w.Close() // twice is harmless
	if n := e.c.farm.n.Load(); n != 0 {
		t.Fatalf("%d watches counted after Close", n)
	}
}

// A supervisor gone beyond its grace period wakes the watch (its boards turn OFFLINE
// without any commit).
func TestFarmWatchWakesWhenASupervisorIsGoneBeyondGrace(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Grace: time.Minute, Now: clock.Now})
	sup := e.dial("lab-1", []*pb.BoardInfo{board("b1")}, supOpts{})
	sup.close()
	eventually(t, "the supervisor shown disconnected", func() bool {
		s, err := e.c.Supervisors(e.ctx())
		return err == nil && len(s) == 1 && !s[0].Connected
	})
	w := e.c.WatchFarm()
	defer w.Close()
	drainWake(w)
	clock.Advance(2 * time.Minute)
	waitWake(t, w, "the grace period")
	s, err := e.c.Supervisors(e.ctx())
	if err != nil || len(s) != 1 || !s[0].Gone {
		t.Fatalf("supervisors after grace: %+v %v", s, err)
	}
	if e.boards()["b1"].GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE {
		t.Fatalf("board not OFFLINE after grace")
	}
}

func TestLookupClientToken(t *testing.T) {
	e := newEnv(t, "", Options{})
	if e.c.ClientAuth() {
		t.Fatal("client auth on without tokens")
	}
	if _, ok := e.c.LookupClientToken("x"); ok {
		t.Fatal("a token accepted without client tokens")
	}
	e2 := newEnv(t, "", Options{ClientTokens: ClientTokens{"tok-a": {Name: "alice"}, "tok-r": {Name: "root", Admin: true}}})
	if u, ok := e2.c.LookupClientToken("tok-r"); !ok || u.Name != "root" || !u.Admin {
		t.Fatalf("tok-r: %+v %v", u, ok)
	}
	if _, ok := e2.c.LookupClientToken("tok-"); ok {
		t.Fatal("a prefix of a token accepted")
	}
	if _, ok := e2.c.LookupClientToken(""); ok {
		t.Fatal("the empty token accepted")
	}
}

// The coordinator's timers wake nobody while nothing changes: a dashboard watching an
// idle farm reads nothing.
func TestFarmWatchQuietWhileNothingChanges(t *testing.T) {
	e := newEnv(t, "", Options{ReconcileInterval: 20 * time.Millisecond}) // ticks every 20ms
	sup := e.dial("lab-1", []*pb.BoardInfo{board("b1")}, supOpts{})
	_ = sup
	w := e.c.WatchFarm()
	defer w.Close()
	time.Sleep(100 * time.Millisecond) // let the Hello's wake-ups pass
	drainWake(w)
	select {
	case <-w.C():
		t.Fatal("woken while nothing changed (timers ticking, reconciling)")
	case <-time.After(300 * time.Millisecond):
	}
}
