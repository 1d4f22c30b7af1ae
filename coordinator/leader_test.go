package coordinator

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestFenceStopsAStaleLeader: a coordinator that believes it is active after another
// took the lead (its renewal has not run yet: a paused process, a lock session gone
// unnoticed) writes nothing: the write transaction finds another term and rolls back,
// the request is refused Unavailable, the coordinator stands down at once, and its
// supervisor session is ended, told to go elsewhere.
func TestFenceStopsAStaleLeader(t *testing.T) {
	if !onPostgres() {
		t.Skip("leadership is PostgreSQL's (BOARDVISOR_TEST_DB=postgres); on SQLite a coordinator is always active")
	}
	e := newEnv(t, "", Options{LeaderRenew: time.Hour, LeaderLease: 2 * time.Hour, Advertise: "a.lab:7400"})
	if r := e.c.Role(); !r.Active || r.Term != 1 {
		t.Fatalf("a coordinator alone on its database: %+v, want active under term 1", r)
	}
	sup := e.dial("sup", []*pb.BoardInfo{board("b1", "device", "x")}, supOpts{})
	db, err := sql.Open("pgx", pgURL(t, e.dir))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var leases int
	if err := db.QueryRow(`SELECT COUNT(*) FROM leases`).Scan(&leases); err != nil {
		t.Fatal(err)
	}
	// Another coordinator takes the lead (what leadership.take does).
	if _, err := db.Exec(`UPDATE coordinator_leader SET term = term + 1, holder = 'other', advertise = 'b.lab:7400'`); err != nil {
		t.Fatal(err)
	}
	_, err = e.create("device=x", "", time.Minute, "tester")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("CreateLease on a coordinator whose term was taken: %v, want Unavailable", err)
	}
	var after int
	if err := db.QueryRow(`SELECT COUNT(*) FROM leases`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != leases {
		t.Fatalf("a coordinator whose term was taken wrote %d lease(s)", after-leases)
	}
	eventually(t, "the stale leader standing down", func() bool { return !e.c.Role().Active })
	select {
	case <-sup.done:
	case <-time.After(waitTimeout):
		t.Fatal("the supervisor's session was not ended when the coordinator stood down")
	}
	eventually(t, "a standby's refusal naming the active coordinator", func() bool {
		_, err := e.api.ListBoards(e.ctx(), &pb.ListBoardsRequest{})
		return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "the active coordinator is b.lab:7400")
	})
	if _, err := e.tryDial("sup2", nil, supOpts{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a supervisor's Connect to a standby: %v, want Unavailable", err)
	}
}

// pgURL is the PostgreSQL database of a test's state directory.
func pgURL(t *testing.T, dir string) string {
	t.Helper()
	pgMu.Lock()
	defer pgMu.Unlock()
	url := pgByDir[dir]
	if url == "" {
		t.Fatalf("no database for %s", dir)
	}
	return url
}

// TestStandbyTakesOverOnClose: two coordinators on one database, started at once (they
// migrate the schema in turn): one is active, the other stands by and refuses lease
// work naming it; closing the active one hands the lead over without waiting for the
// lease to run out, and the new one serves the lease the old one queued.
func TestStandbyTakesOverOnClose(t *testing.T) {
	if !onPostgres() {
		t.Skip("leadership is PostgreSQL's (BOARDVISOR_TEST_DB=postgres)")
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	url, err := pgServer.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	pgMu.Lock()
	pgByDir[dirA], pgByDir[dirB] = url, url
	pgMu.Unlock()
	// A long lease: only the hand-over at Close can explain a quick take-over.
	opts := func(addr string) Options {
		return Options{Advertise: addr, LeaderRenew: 200 * time.Millisecond, LeaderLease: time.Minute}
	}
	envs := make(chan *env, 2)
	for _, d := range []struct{ dir, addr string }{{dirA, "a.lab:7400"}, {dirB, "b.lab:7400"}} {
		go func() {
			var e *env
			defer func() { envs <- e }() // also when newEnv fails (t.Fatalf ends the goroutine)
			e = newEnv(t, d.dir, opts(d.addr))
		}()
	}
	e1, e2 := <-envs, <-envs
	if e1 == nil || e2 == nil {
		t.FailNow()
	}
	active, standby := e1, e2
	if !e1.c.Role().Active {
		active, standby = e2, e1
	}
	if active.c.Role().Active == standby.c.Role().Active {
		t.Fatalf("two coordinators on one database: roles %+v and %+v, want one active", active.c.Role(), standby.c.Role())
	}
	addr := active.c.opts.Advertise
	eventually(t, "the standby naming the active coordinator", func() bool {
		_, err := standby.api.ListBoards(standby.ctx(), &pb.ListBoardsRequest{})
		return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "the active coordinator is "+addr)
	})
	active.dial("sup", []*pb.BoardInfo{board("b1", "device", "x")}, supOpts{})
	active.mustCreate("device=x", "", time.Minute)
	l := active.mustCreate("device=x", "", time.Minute)
	if !l.GetQueued() {
		t.Fatalf("a lease for the busy board: %v, want queued", l)
	}
	began := time.Now()
	active.stop()
	eventually(t, "the standby active", func() bool { return standby.c.Role().Active })
	if took := time.Since(began); took > 30*time.Second {
		t.Fatalf("hand-over took %s: the standby waited for the lease", took)
	}
	if r := standby.c.Role(); r.Term != 2 {
		t.Fatalf("the new active coordinator's term: %d, want 2", r.Term)
	}
	if got := standby.get(l.GetId()); !got.GetQueued() {
		t.Fatalf("the queued lease after the hand-over: %v", got)
	}
}

// TestRestartTakesItsOwnLeadBack: a coordinator restarted on the state directory of the
// last active one (its process died: this one holds the directory's lock) takes the
// lead at once, without waiting for the dead one's lease; one on another directory
// waits for it.
func TestRestartTakesItsOwnLeadBack(t *testing.T) {
	if !onPostgres() {
		t.Skip("leadership is PostgreSQL's (BOARDVISOR_TEST_DB=postgres)")
	}
	dir, other := t.TempDir(), t.TempDir()
	e := newEnv(t, dir, Options{LeaderLease: time.Hour})
	holder := e.c.lead.holder
	url := pgURL(t, dir)
	e.stop()
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// As a kill -9 leaves it: the lead renewed just now, by a process that is gone.
	if _, err := db.Exec(`UPDATE coordinator_leader SET holder = $1, renewed_at = `+pgNowNS, holder); err != nil {
		t.Fatal(err)
	}
	pgMu.Lock()
	pgByDir[other] = url
	pgMu.Unlock()
	o := newEnv(t, other, Options{LeaderLease: time.Hour})
	if o.c.Role().Active {
		t.Fatal("a coordinator of another state directory took a lead renewed just now")
	}
	o.stop()
	r := newEnv(t, dir, Options{LeaderLease: time.Hour})
	if role := r.c.Role(); !role.Active || role.Term != 2 {
		t.Fatalf("restarted on the last leader's state directory: %+v, want active under term 2 at once", role)
	}
}
