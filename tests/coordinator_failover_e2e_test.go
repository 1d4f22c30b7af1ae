package tests

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/client"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Two coordinators on one PostgreSQL (issue 18): one active, one standing by. These
// tests run the real binaries: two supervisors of simulated boards, leases cycling
// through a client given both coordinators' addresses, and the active coordinator
// killed (kill -9) or cut off from the database.

// failoverLab is two coordinators, two supervisors and the database they share.
type failoverLab struct {
	t            *testing.T
	url          string
	addrA, addrB string
	a, b         *proc
	sups         []*proc
	db           *sql.DB
	c            pb.LeaseServiceClient // follows the active coordinator
}

// startFailoverLab starts coordinator A (active), then B (standby), then two
// supervisors of boards sim-1..sim-20 (and sim-q on the first) given both addresses.
// urlA and urlB add parameters to each coordinator's database URL.
func startFailoverLab(t *testing.T, paramsA, paramsB string) *failoverLab {
	t.Helper()
	url := startPostgres(t)
	dir := t.TempDir()
	l := &failoverLab{t: t, url: url, addrA: freeAddr(t), addrB: freeAddr(t)}
	var err error
	if l.db, err = sql.Open("pgx", url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.db.Close() })
	l.a = startCoordinator(t, l.addrA, dir+"/coord-a", "--database", url+paramsA, "--advertise", l.addrA)
	l.a.waitLine("this coordinator is now the active one", "term=1")
	l.b = startCoordinator(t, l.addrB, dir+"/coord-b", "--database", url+paramsB, "--advertise", l.addrB)
	both := l.addrA + "," + l.addrB
	for s := range 2 {
		var boards []boardSpec
		for i := range 10 {
			boards = append(boards, boardSpec{fmt.Sprintf("sim-%d", s*10+i+1), "device: sim"})
		}
		if s == 0 {
			boards = append(boards, boardSpec{"sim-q", "device: q"})
		}
		id := fmt.Sprintf("lab-%d", s+1)
		cfg := ceLabConfig(t, dir, id, both, `echo "before $BOARDVISOR_BOARD"; echo "second line"`, `echo "after $BOARDVISOR_BOARD"`, boards...)
		ceVirtualBoards(t, cfg)
		l.sups = append(l.sups, startSupervisor(t, id, cfg))
	}
	fo, err := client.NewFailover([]string{l.addrA, l.addrB}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fo.Close() })
	l.c = pb.NewLeaseServiceClient(fo)
	waitBoards(t, l.c, 21)
	return l
}

// term reads the leader row's term.
func (l *failoverLab) term() int64 {
	var term int64
	if err := l.db.QueryRow(`SELECT term FROM coordinator_leader WHERE id = 1`).Scan(&term); err != nil {
		l.t.Fatal(err)
	}
	return term
}

// cyclers are clients creating, using and releasing leases of device=sim over and
// over, through the failover client, until stopped. Every lease they were given is
// recorded.
type cyclers struct {
	l      *failoverLab
	stop   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	leases []string
	done   int
	errs   []string
}

func (l *failoverLab) startCyclers(n int) *cyclers {
	cy := &cyclers{l: l, stop: make(chan struct{})}
	for i := range n {
		cy.wg.Add(1)
		go func() { defer cy.wg.Done(); cy.run(fmt.Sprintf("cycler-%d", i)) }()
	}
	return cy
}

func (cy *cyclers) stopped() bool {
	select {
	case <-cy.stop:
		return true
	default:
		return false
	}
}

func (cy *cyclers) pause() bool {
	select {
	case <-cy.stop:
		return false
	case <-time.After(50 * time.Millisecond):
		return true
	}
}

// phase polls a lease until ok (or the cyclers stop, or 60s pass); errors while the
// coordinators fail over are retried.
func (cy *cyclers) phase(id string, ok func(*pb.Lease) bool) (*pb.Lease, bool) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := cy.l.c.GetLease(ctx, &pb.GetLeaseRequest{Id: id})
		cancel()
		if err == nil && ok(r.GetLease()) {
			return r.GetLease(), true
		}
		if err == nil && leaseEnded(r.GetLease()) {
			return r.GetLease(), false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, false
}

func (cy *cyclers) run(name string) {
	for !cy.stopped() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		l, err := createLease(ctx, cy.l.c, "device=sim", "", time.Minute, name)
		cancel()
		if err != nil {
			if !cy.pause() {
				return
			}
			continue // never created (failing over): nothing to lose
		}
		cy.mu.Lock()
		cy.leases = append(cy.leases, l.GetId())
		cy.mu.Unlock()
		if got, ok := cy.phase(l.GetId(), func(l *pb.Lease) bool { return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_READY }); !ok {
			cy.fail("lease %s never READY: %v", l.GetId(), got)
			return
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cy.l.c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l.GetId()})
			cancel()
			if err == nil {
				break
			}
			if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
				cy.fail("release %s: %v", l.GetId(), err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got, ok := cy.phase(l.GetId(), func(l *pb.Lease) bool { return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE }); !ok {
			cy.fail("lease %s never DONE: %v", l.GetId(), got)
			return
		}
		cy.mu.Lock()
		cy.done++
		cy.mu.Unlock()
	}
}

func (cy *cyclers) fail(format string, args ...any) {
	cy.mu.Lock()
	cy.errs = append(cy.errs, fmt.Sprintf(format, args...))
	cy.mu.Unlock()
}

func (cy *cyclers) count() int {
	cy.mu.Lock()
	defer cy.mu.Unlock()
	return cy.done
}

// waitFor waits until the cyclers completed n more leases.
func (cy *cyclers) waitFor(n int) {
	cy.l.t.Helper()
	want := cy.count() + n
	ceEventually(cy.l.t, fmt.Sprintf("%d leases cycled", want), func() bool { return cy.count() >= want || len(cy.errors()) > 0 })
}

func (cy *cyclers) errors() []string {
	cy.mu.Lock()
	defer cy.mu.Unlock()
	return append([]string(nil), cy.errs...)
}

// finish stops the cyclers and fails on what they saw.
func (cy *cyclers) finish() []string {
	cy.l.t.Helper()
	close(cy.stop)
	cy.wg.Wait()
	for _, e := range cy.errors() {
		cy.l.t.Error(e)
	}
	return cy.leases
}

// pgEvents reads every stored event, per supervisor, in sequence order.
func pgEvents(t *testing.T, db *sql.DB) map[string][]storedEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a whole farm's events
	defer cancel()
	evs, err := queryEventsBy(ctx, db, "", "supervisor_id, seq")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]storedEvent{}
	for _, e := range evs {
		out[e.supervisor] = append(out[e.supervisor], e)
	}
	return out
}

// checkFarm checks what the database holds once the traffic is over: each
// supervisor's events stored once and gap-free (1..N, every one its outbox numbered:
// the supervisors are stopped first, so that their outboxes are flushed), no board
// given to two leases at once, and every lease the clients were given ended DONE.
func (l *failoverLab) checkFarm(leases []string) {
	t := l.t
	t.Helper()
	for _, id := range leases {
		ceEventually(t, "lease "+id+" ended", func() bool {
			r, err := l.c.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: id})
			return err == nil && leaseEnded(r.GetLease())
		})
	}
	for _, s := range l.sups {
		s.ceTerminate()
	}
	events := pgEvents(t, l.db)
	for _, sup := range []string{"lab-1", "lab-2"} {
		checkContiguous(t, sup, events[sup])
		var lines int
		for _, e := range events[sup] {
			if e.kind == "hook_log" {
				lines++
			}
		}
		if lines == 0 {
			t.Errorf("supervisor %s: no hook lines stored", sup)
		}
	}
	intervals, _ := ceBoardIntervals(t, events)
	for board, ivs := range intervals {
		for i := 1; i < len(ivs); i++ {
			prev, cur := ivs[i-1], ivs[i]
			if prev.end.IsZero() || cur.start.Before(prev.end) {
				t.Errorf("board %s given to two leases at once: %s (%s to %s) and %s (from %s)", board,
					prev.job, prev.start.Format(time.StampMicro), prev.end.Format(time.StampMicro), cur.job, cur.start.Format(time.StampMicro))
			}
		}
	}
	for _, id := range leases {
		var state string
		var phase int32
		if err := l.db.QueryRow(`SELECT state, phase FROM leases WHERE id = $1`, id).Scan(&state, &phase); err != nil {
			t.Errorf("lease %s given to a client is not in the database: %v", id, err)
			continue
		}
		if state != "ended" || pb.LeasePhase(phase) != pb.LeasePhase_LEASE_PHASE_DONE {
			t.Errorf("lease %s given to a client ended %s/%s, want ended/DONE", id, state, pb.LeasePhase(phase))
		}
	}
}

// queuedOnQ holds sim-q with one lease and queues three more for it, in order.
func (l *failoverLab) queuedOnQ() (holder string, queued []string) {
	t := l.t
	t.Helper()
	h, err := createLease(ctxT(t), l.c, "", "sim-q", time.Minute, "holder")
	if err != nil {
		t.Fatal(err)
	}
	ceEventually(t, "the holder of sim-q READY", func() bool {
		r, err := l.c.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: h.GetId()})
		return err == nil && r.GetLease().GetPhase() == pb.LeasePhase_LEASE_PHASE_READY
	})
	for i := range 3 {
		q, err := createLease(ctxT(t), l.c, "", "sim-q", time.Minute, fmt.Sprintf("queued-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if !q.GetQueued() {
			t.Fatalf("lease %d for the busy sim-q not queued: %v", i, q)
		}
		queued = append(queued, q.GetId())
	}
	return h.GetId(), queued
}

// serveQueueInOrder releases the holder of sim-q, then each queued lease once it is
// READY: each must be READY while those after it still wait.
func (l *failoverLab) serveQueueInOrder(holder string, queued []string) {
	t := l.t
	t.Helper()
	prev := holder
	for i, id := range queued {
		if _, err := l.c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: prev}); err != nil {
			t.Fatal(err)
		}
		ceEventually(t, fmt.Sprintf("queued lease %d READY", i), func() bool {
			r, err := l.c.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: id})
			return err == nil && r.GetLease().GetPhase() == pb.LeasePhase_LEASE_PHASE_READY
		})
		for _, later := range queued[i+1:] {
			r, err := l.c.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: later})
			if err != nil {
				t.Fatal(err)
			}
			if !r.GetLease().GetQueued() {
				t.Fatalf("lease %s, queued after %s, overtook it: %v", later, id, r.GetLease())
			}
		}
		prev = id
	}
	if _, err := l.c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: prev}); err != nil {
		t.Fatal(err)
	}
}

// TestCoordinatorFailoverKill: the active coordinator is killed (kill -9) while 20
// boards cycle leases and stream hook lines: the standby is active within 5s, the
// supervisors and the clients follow it, no lease is lost or given twice, every event
// is stored once and gap-free, and leases queued for a busy board keep their order.
func TestCoordinatorFailoverKill(t *testing.T) {
	l := startFailoverLab(t, "", "")
	l.b.waitOutput("this coordinator is a standby")
	holder, queued := l.queuedOnQ()
	cy := l.startCyclers(20)
	cy.waitFor(30)
	killed := time.Now()
	l.a.kill()
	line, err := l.b.untilLine(0, 20*time.Second, "this coordinator is now the active one", "term=2")
	if err != nil {
		t.Fatalf("the standby did not take the lead: %v\n%s", err, l.b.output())
	}
	took := time.Since(killed)
	t.Logf("standby active %s after kill -9: %s", took.Round(time.Millisecond), line)
	if took > 5*time.Second {
		t.Errorf("the standby took %s to become active after the active coordinator was killed, want at most 5s", took)
	}
	cy.waitFor(30)
	for _, s := range l.sups {
		s.ceWaitLine("connected to coordinator", "coordinator="+l.addrB)
	}
	l.serveQueueInOrder(holder, queued)
	leases := cy.finish()
	l.checkFarm(append(leases, append([]string{holder}, queued...)...))
}

// TestCoordinatorFailoverLostDatabase: the active coordinator loses its database
// connections (its backends terminated, again and again, while the standby keeps
// its own): it stops acting as the leader before the standby takes over: its client
// streams and supervisor links end Unavailable, it writes nothing under its term once
// the standby has the lead, and no lease is given twice.
func TestCoordinatorFailoverLostDatabase(t *testing.T) {
	l := startFailoverLab(t, "&application_name=coord-a", "&application_name=coord-b")
	l.b.waitOutput("this coordinator is a standby")
	cy := l.startCyclers(12)
	cy.waitFor(20)
	// A client stream open on A itself.
	onA := leaseClient(t, l.addrA)
	held, err := createLease(ctxT(t), l.c, "device=q", "", time.Minute, "watcher")
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchLease(ctxT(t), onA, held.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.stream.Recv(); err != nil {
		t.Fatal(err)
	}
	termA := l.term()
	// Cut A off: terminate its backends until the standby has taken over and a little
	// longer (A's pool reconnects at once otherwise).
	cut := make(chan struct{})
	cutDone := make(chan struct{})
	go func() {
		defer close(cutDone)
		for {
			_, _ = l.db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'coord-a'`)
			select {
			case <-cut:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	var aDown, bUp time.Time
	deadline := time.Now().Add(30 * time.Second)
	for (aDown.IsZero() || bUp.IsZero()) && time.Now().Before(deadline) {
		if aDown.IsZero() && l.a.findLine("no longer the active one") != "" {
			aDown = time.Now()
		}
		if bUp.IsZero() && l.b.findLine("this coordinator is now the active one") != "" {
			bUp = time.Now()
		}
		time.Sleep(5 * time.Millisecond)
	}
	if aDown.IsZero() || bUp.IsZero() {
		close(cut)
		t.Fatalf("no failover within 30s: A stood down at %v, B took over at %v\nA:\n%s\nB:\n%s", aDown, bUp, l.a.output(), l.b.output())
	}
	if !aDown.Before(bUp) {
		t.Errorf("the standby took over (%s) before the old leader stood down (%s)", bUp.Format(time.StampMilli), aDown.Format(time.StampMilli))
	}
	t.Logf("A stood down %s before B took over: %s", bUp.Sub(aDown).Round(time.Millisecond), l.a.findLine("no longer the active one"))
	// What A wrote under its term, as B took over: no row may get A's term after
	// (B's own writes give rows its term).
	snap := func() map[string]bool {
		out := map[string]bool{}
		rows, err := l.db.Query(`SELECT 'event ' || supervisor_id || ':' || seq FROM events WHERE term = $1
			UNION ALL SELECT 'lease ' || id || ':' || state || ':' || phase || ':' || ended_at FROM leases WHERE term = $1`, termA)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var r string
			if err := rows.Scan(&r); err != nil {
				t.Fatal(err)
			}
			out[r] = true
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	atTakeover := snap()
	// The client stream on A was told to go elsewhere.
	for {
		_, err := w.stream.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "standby") {
			t.Errorf("A's WatchLease stream ended with %v, want Unavailable saying A is a standby", err)
		}
		break
	}
	cy.waitFor(20)
	for _, s := range l.sups {
		s.ceWaitLine("connected to coordinator", "coordinator="+l.addrB)
	}
	close(cut)
	<-cutDone
	// A, back on its database, stands by: it refuses lease work naming B.
	ceEventually(t, "A to refuse naming B", func() bool {
		_, err := onA.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
		return status.Code(err) == codes.Unavailable && strings.Contains(status.Convert(err).Message(), "the active coordinator is "+l.addrB)
	})
	cy.waitFor(10)
	leases := cy.finish()
	if len(atTakeover) == 0 {
		t.Errorf("no row written under the old leader's term %d: the check sees nothing", termA)
	}
	for r := range snap() {
		if !atTakeover[r] {
			t.Errorf("written under the old leader's term %d after the standby took over: %s", termA, r)
		}
	}
	if _, err := l.c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: held.GetId()}); err != nil {
		t.Fatal(err)
	}
	l.checkFarm(append(leases, held.GetId()))
}
