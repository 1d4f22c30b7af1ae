package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// Issue 5, "Done when": the coordinator and its supervisors as real processes on
// loopback, with real hook processes.

// Two supervisors with three boards each serve 50 leases with mixed selectors, several
// at a time: each on a board its selector matches, never two at once on one board, and
// each ends DONE.
func TestCoordinatorFiftyLeasesOnMatchingBoards(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	coordState := filepath.Join(dir, "coord")
	coord := startCoordinator(t, coordAddr, coordState)
	before, after := "echo before $LEASE_NAME on $BOARD_NAME", "echo after $LEASE_NAME"
	startSupervisor(t, "supervisor lab-a", supervisorConfigIn(t, dir, "lab-a", coordAddr, before, after,
		boardSpec{"a-rpi4-1", "device: rpi4, arch: arm64"},
		boardSpec{"a-rpi4-2", "device: rpi4, arch: arm64"},
		boardSpec{"a-qemu-1", "device: qemu, arch: x86_64"}))
	startSupervisor(t, "supervisor lab-b", supervisorConfigIn(t, dir, "lab-b", coordAddr, before, after,
		boardSpec{"b-rpi4-1", "device: rpi4, arch: armv7"},
		boardSpec{"b-qemu-1", "device: qemu, arch: arm64"},
		boardSpec{"b-qemu-2", "device: qemu, arch: x86_64"}))
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 6)

	lb, err := c.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]map[string]string{}
	for _, b := range lb.GetBoards() {
		labels[b.GetName()] = b.GetLabels()
	}
	// Selectors matching 1 to 4 boards, across both supervisors; "@name" asks for a
	// board by name.
	selectors := []string{"device=rpi4", "device=qemu", "arch=arm64", "arch=x86_64",
		"device=qemu,arch=arm64", "device=rpi4,arch!=armv7", "arch!=x86_64", "@b-rpi4-1"}
	for _, s := range selectors {
		n := 0
		for name, l := range labels {
			if (strings.HasPrefix(s, "@") && name == s[1:]) || (!strings.HasPrefix(s, "@") && ceSelectorMatches(s, l)) {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("selector %q matches no board of %v", s, labels)
		}
	}

	// A monitor checks the coordinator's own view all along: no board holds two unended
	// leases at once.
	stopMonitor := make(chan struct{})
	monitorDone := make(chan []string)
	go func() {
		var problems []string
		for {
			select {
			case <-stopMonitor:
				monitorDone <- problems
				return
			case <-time.After(5 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := c.ListLeases(ctx, &pb.ListLeasesRequest{})
			cancel()
			if err != nil {
				continue
			}
			held := map[string]string{}
			for _, l := range r.GetLeases() {
				if l.GetQueued() || l.GetBoard() == "" {
					continue
				}
				if other, ok := held[l.GetBoard()]; ok && len(problems) < 10 {
					problems = append(problems, fmt.Sprintf("board %s holds leases %s and %s at once", l.GetBoard(), other, l.GetId()))
				}
				held[l.GetBoard()] = l.GetId()
			}
		}
	}()

	const workers, perWorker = 10, 5
	type served struct {
		id, selector, board string
	}
	var (
		mu      sync.Mutex
		results []served
		errs    []error
		wg      sync.WaitGroup
	)
	began := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				sel := selectors[(w*perWorker+i)%len(selectors)]
				s, err := ceServeOneLease(c, sel, fmt.Sprintf("worker-%d", w))
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("worker %d lease %d (%s): %w", w, i, sel, err))
				} else {
					results = append(results, served{s.GetId(), sel, s.GetBoard()})
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stopMonitor)
	problems := <-monitorDone
	t.Logf("%d leases served in %s", len(results), time.Since(began).Round(time.Millisecond))
	for _, err := range errs {
		t.Error(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	if len(results) != workers*perWorker {
		t.Fatalf("%d of %d leases served", len(results), workers*perWorker)
	}
	perBoard := map[string]int{}
	for _, r := range results {
		perBoard[r.board]++
		if strings.HasPrefix(r.selector, "@") {
			if r.board != r.selector[1:] {
				t.Errorf("lease %s for board %s was served on %s", r.id, r.selector[1:], r.board)
			}
		} else if !ceSelectorMatches(r.selector, labels[r.board]) {
			t.Errorf("lease %s (%s) was served on %s, labels %v", r.id, r.selector, r.board, labels[r.board])
		}
	}
	t.Logf("leases per board: %v", perBoard)

	// The coordinator's records agree: 50 leases, all DONE.
	ll, err := c.ListLeases(ctxT(t), &pb.ListLeasesRequest{IncludeEnded: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ll.GetLeases()) != workers*perWorker {
		t.Errorf("ListLeases lists %d leases, want %d", len(ll.GetLeases()), workers*perWorker)
	}
	for _, l := range ll.GetLeases() {
		if l.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
			t.Errorf("lease %s is %s (%q), want DONE", l.GetId(), l.GetPhase(), l.GetStatusMessage())
		}
	}
	waitBoards(t, c, 6)

	// By the supervisors' clocks (the events' times), each board's leases ran one after
	// the other: a lease's first transition comes after the previous one's DONE.
	coord.terminate()
	ivs, boardOf := ceBoardIntervals(t, storedEvents(t, openCoordinatorDB(t, coordState)))
	for _, r := range results {
		if boardOf[r.id] != r.board {
			t.Errorf("lease %s: the coordinator said board %s, its supervisor's events say %q", r.id, r.board, boardOf[r.id])
		}
	}
	for board, list := range ivs {
		for i, iv := range list {
			if iv.end.IsZero() {
				t.Errorf("board %s: lease %s has no terminal transition", board, iv.job)
				continue
			}
			if i > 0 && iv.start.Before(list[i-1].end) {
				t.Errorf("board %s: lease %s began at %s, before lease %s ended at %s", board, iv.job,
					iv.start.Format(time.StampMicro), list[i-1].job, list[i-1].end.Format(time.StampMicro))
			}
		}
	}
}

// ceServeOneLease creates a lease ("@name" for a board by name), follows it to READY,
// releases it and follows it to DONE. It returns the lease as it was READY.
func ceServeOneLease(c pb.LeaseServiceClient, sel, client string) (*pb.Lease, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	selector, board := sel, ""
	if strings.HasPrefix(sel, "@") {
		selector, board = "", sel[1:]
	}
	l, err := createLease(ctx, c, selector, board, time.Minute, client)
	if err != nil {
		return nil, fmt.Errorf("CreateLease: %w", err)
	}
	w, err := watchLease(ctx, c, l.GetId())
	if err != nil {
		return nil, fmt.Errorf("WatchLease: %w", err)
	}
	ready, err := w.ready()
	if err != nil {
		return nil, err
	}
	if ready.GetBoard() == "" || ready.GetBeginsAt() == nil || ready.GetQueued() {
		return nil, fmt.Errorf("READY lease %s has no board or no begins_at, or is queued: %v", l.GetId(), ready)
	}
	if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "test done"}); err != nil {
		return nil, fmt.Errorf("ReleaseLease: %w", err)
	}
	if _, err := w.done(); err != nil {
		return nil, err
	}
	return ready, nil
}

// The coordinator is killed (SIGKILL) while hooks print numbered lines, and restarted on
// the same address and state: after the supervisors reconnect, every event is stored
// exactly once, in sequence order, every printed line is there once, and the leases that
// were live are still live.
func TestCoordinatorKilledWhileHooksPrint(t *testing.T) {
	dir := t.TempDir()
	printed := filepath.Join(dir, "printed") // what the hooks printed, one line each
	coordAddr := freeAddr(t)
	coordState := filepath.Join(dir, "coord")
	coord := startCoordinator(t, coordAddr, coordState)
	hook := func(kind string, lines int) string {
		return fmt.Sprintf(`i=1; while [ $i -le %d ]; do l="%s $LEASE_NAME $i"; echo "$l"; echo "$l" >> %q; sleep 0.02; i=$((i+1)); done`,
			lines, kind, printed)
	}
	before, after := hook("before", 30), hook("after", 50)
	supA := startSupervisor(t, "supervisor lab-a", supervisorConfigIn(t, dir, "lab-a", coordAddr, before, after,
		boardSpec{"a-1", "device: rpi4"}, boardSpec{"a-2", "device: rpi4"}))
	// Lab-b's boards are simulated ones: power-cycled, they print a boot log on their
	// consoles, which reaches the coordinator as console bytes of the lease.
	cfgB := labConfig{dir: filepath.Join(dir, "lab-b"), id: "lab-b", coordAddr: coordAddr, before: before, after: after, virtual: true,
		boards: []boardSpec{{"b-1", "device: qemu"}, {"b-2", "device: qemu"}}}.write(t)
	supB := startSupervisor(t, "supervisor lab-b", cfgB)
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 4)

	ctx := ctxT(t)
	tokens := map[string]string{}
	lease := func(board string) *leaseWatch {
		t.Helper()
		l, err := createLease(ctx, c, "", board, 10*time.Minute, "kill-test")
		if err != nil {
			t.Fatal(err)
		}
		tokens[l.GetId()] = l.GetToken()
		w, err := watchLease(ctx, c, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	must := func(l *pb.Lease, err error) *pb.Lease {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	// b-1 boots when lab-b starts, just after lab-b has offered its boards: what it
	// prints goes to the board's own console only if it is read before a lease holds the
	// board. Wait until that boot log is stored, so that l2's console holds exactly one
	// boot log per power cycle (6 against 5 once in CI without the wait).
	eventually(t, "b-1's start-up boot log stored as the board's own console", func() bool {
		db := openCoordinatorDB(t, coordState)
		defer db.Close()
		var b1 []storedEvent
		for _, e := range storedEvents(t, db)["lab-b"] {
			if e.board == "b-1" {
				b1 = append(b1, e)
			}
		}
		return bytes.Contains(consoleBytes(t, b1, ""), []byte("b-1 login:"))
	})
	// Two leases READY on one board of each supervisor.
	l1, l2 := lease("a-1"), lease("b-1")
	must(l1.ready())
	r2 := must(l2.ready())
	// l2's board prints its boot log again and again, through the kill and the restart.
	cycler := ceStartPowerCycling(t, r2.GetExporterEndpoint(), "b-1", tokens[l2.id])
	cycler.waitCycles(2)
	// Now hooks print: l1's afterLease, and the beforeLease of two new leases.
	if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l1.id, Reason: "make its afterLease hook print"}); err != nil {
		t.Fatal(err)
	}
	l3, l4 := lease("a-2"), lease("b-2")
	count := func(prefix string) int {
		n := 0
		for _, l := range readLines(t, printed) {
			if strings.HasPrefix(l, prefix) {
				n++
			}
		}
		return n
	}
	eventually(t, "hooks printing", func() bool {
		return count("after "+l1.id) >= 5 && count("before "+l3.id) >= 5 && count("before "+l4.id) >= 5
	})
	coord.kill()
	atKill, cyclesAtKill := len(readLines(t, printed)), cycler.count()
	time.Sleep(300 * time.Millisecond) // the hooks print on, into the outboxes
	if n := len(readLines(t, printed)); n <= atKill {
		t.Fatalf("the hooks stopped printing while the coordinator was down (%d lines at the kill, %d after): the test proves nothing", atKill, n)
	}
	cycler.waitCycles(cyclesAtKill + 1) // console bytes while the coordinator is down
	coord = startCoordinator(t, coordAddr, coordState)
	coord.waitLine("supervisor connected", "supervisor=lab-a")
	coord.waitLine("supervisor connected", "supervisor=lab-b")
	for _, s := range []*proc{supA, supB} {
		eventually(t, s.name+" reconnected", func() bool { return s.countLines("connected to coordinator") >= 2 })
	}
	t.Logf("after the restart: %s", coord.findLine("supervisor connected", "supervisor=lab-a"))
	t.Logf("after the restart: %s", coord.findLine("supervisor connected", "supervisor=lab-b"))
	cycler.waitCycles(cycler.count() + 1)
	cycles := cycler.stop()

	// The leases live at the kill are live: l2 is READY on b-1 as before; l3 and l4 go on
	// to READY on their boards; l1 finishes its afterLease hook and ends DONE.
	c = leaseClient(t, coordAddr)
	ctx = ctxT(t)
	got, err := c.GetLease(ctx, &pb.GetLeaseRequest{Id: l2.id})
	if err != nil {
		t.Fatal(err)
	}
	if g := got.GetLease(); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetBoard() != "b-1" {
		t.Errorf("lease live at the kill is now %s on %q (%q), want READY on b-1", g.GetPhase(), g.GetBoard(), g.GetStatusMessage())
	}
	rewatch := func(w *leaseWatch) *leaseWatch {
		t.Helper()
		nw, err := watchLease(ctx, c, w.id)
		if err != nil {
			t.Fatal(err)
		}
		return nw
	}
	l1, l2, l3, l4 = rewatch(l1), rewatch(l2), rewatch(l3), rewatch(l4)
	must(l1.done())
	for _, w := range []*leaseWatch{l2, l3, l4} {
		if l := must(w.ready()); w != l2 && l.GetBoard() != map[*leaseWatch]string{l3: "a-2", l4: "b-2"}[w] {
			t.Errorf("lease %s moved to board %s", w.id, l.GetBoard())
		}
	}
	live, err := c.ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var liveIDs []string
	for _, l := range live.GetLeases() {
		liveIDs = append(liveIDs, l.GetId())
	}
	sort.Strings(liveIDs)
	want := []string{l2.id, l3.id, l4.id}
	sort.Strings(want)
	if fmt.Sprint(liveIDs) != fmt.Sprint(want) {
		t.Errorf("live leases after the restart: %v, want %v", liveIDs, want)
	}
	for _, w := range []*leaseWatch{l2, l3, l4} {
		if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: w.id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []*leaseWatch{l2, l3, l4} {
		must(w.done())
	}
	waitBoards(t, c, 4)

	// Every line the hooks printed is stored once: wait until all are in (the last
	// events may still be on their way), then stop the coordinator and check.
	want2 := readLines(t, printed)
	if len(want2) != 4*30+4*50 {
		t.Fatalf("the hooks printed %d lines, want %d", len(want2), 4*30+4*50)
	}
	eventually(t, "every hook line stored", func() bool {
		db := openCoordinatorDB(t, coordState)
		var n int
		err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM events WHERE kind = 'hook_log'`).Scan(&n)
		db.Close()
		return err == nil && n >= len(want2)
	})
	coord.terminate()
	events := storedEvents(t, openCoordinatorDB(t, coordState))
	if len(events) != 2 {
		t.Fatalf("events stored from %d supervisors, want 2", len(events))
	}
	stored := map[string]int{}
	lineRE := regexp.MustCompile(`^(before|after) (\S+) (\d+)$`)
	for sup, evs := range events {
		checkContiguous(t, sup, evs)
		// Each hook's lines are stored in the order it printed them.
		next := map[string]int{}
		for _, l := range hookLines(t, evs) {
			stored[l]++
			m := lineRE.FindStringSubmatch(l)
			if m == nil {
				t.Errorf("supervisor %s: stored hook line %q was never printed", sup, l)
				continue
			}
			key := m[1] + " " + m[2]
			var n int
			fmt.Sscan(m[3], &n)
			if n != next[key]+1 {
				t.Errorf("supervisor %s: %s: line %d stored after line %d", sup, key, n, next[key])
			}
			next[key] = n
		}
		t.Logf("supervisor %s: %d events stored, seq 1..%d", sup, len(evs), len(evs))
	}
	// l2's console bytes: contiguous, each once, and the same bytes as the recording on
	// its lab host.
	data := consoleBytes(t, events["lab-b"], l2.id)
	rec, err := cliStdout(nil, "logs", "--console", "--lease", l2.id, "--state-dir", filepath.Join(dir, "lab-b", "state"))
	if err != nil {
		t.Fatalf("boardvisor logs: %v", err)
	}
	if !bytes.Equal(data, rec) {
		t.Errorf("console bytes at the coordinator (%d) differ from the recording on the lab host (%d)", len(data), len(rec))
	}
	if n := bytes.Count(data, []byte("U-Boot 2024.01")); n != cycles {
		t.Errorf("%d boot logs in the console bytes, want %d (one per power cycle)", n, cycles)
	}
	if n := bytes.Count(data, []byte("b-1 login:")); n < cycles-1 {
		t.Errorf("%d boot logs reached the login prompt, want at least %d", n, cycles-1)
	}
	t.Logf("%d power cycles, %d console bytes of lease %s stored", cycles, len(data), l2.id)
	for _, l := range want2 {
		if stored[l] != 1 {
			t.Errorf("hook line %q stored %d times, want once", l, stored[l])
		}
	}
	if len(stored) != len(want2) {
		t.Errorf("%d distinct hook lines stored, %d printed", len(stored), len(want2))
	}
}

// A supervisor killed with SIGKILL: after the grace period (2s) its boards show OFFLINE,
// its lease is neither ended nor moved; restarted, its boards come back.
func TestCoordinatorSupervisorGoneAndBack(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord")) // --grace 2s
	cfg := supervisorConfigIn(t, dir, "lab-a", coordAddr, "", "",
		boardSpec{"gone-1", "device: rpi4"}, boardSpec{"gone-2", "device: rpi4"})
	sup := startSupervisor(t, "supervisor lab-a", cfg)
	startSupervisor(t, "supervisor lab-b", supervisorConfigIn(t, dir, "lab-b", coordAddr, "", "",
		boardSpec{"stays-1", "device: rpi4"}))
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 3)
	ctx := ctxT(t)
	l, err := createLease(ctx, c, "", "gone-1", 10*time.Minute, "gone-test")
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchLease(ctx, c, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}

	killed := time.Now()
	sup.kill()
	eventually(t, "the killed supervisor's boards OFFLINE", func() bool {
		st := boardStatuses(t, c)
		return st["gone-1"] == "OFFLINE" && st["gone-2"] == "OFFLINE"
	})
	if d := time.Since(killed); d < 1900*time.Millisecond {
		t.Errorf("boards OFFLINE %s after the kill, before the 2s grace period", d)
	}
	if st := boardStatuses(t, c); st["stays-1"] != "AVAILABLE" {
		t.Errorf("board of the other supervisor is %s, want AVAILABLE", st["stays-1"])
	}
	g, err := c.GetLease(ctx, &pb.GetLeaseRequest{Id: l.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetLease().GetBoard() != "gone-1" {
		t.Errorf("lease of the gone supervisor is %s on %q (%q), want READY on gone-1", g.GetLease().GetPhase(), g.GetLease().GetBoard(), g.GetLease().GetStatusMessage())
	}
	// A lease for its boards waits: they are not assignable while it is gone.
	queued, err := createLease(ctx, c, "", "gone-2", time.Minute, "gone-test")
	if err != nil {
		t.Fatal(err)
	}
	if !queued.GetQueued() {
		t.Errorf("lease for an OFFLINE board was not queued: %v", queued)
	}

	startSupervisor(t, "supervisor lab-a again", cfg)
	qw, err := watchLease(ctx, c, queued.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if ql, err := qw.ready(); err != nil {
		t.Fatal(err)
	} else if ql.GetBoard() != "gone-2" {
		t.Errorf("queued lease served on %s, want gone-2", ql.GetBoard())
	}
	g, err = c.GetLease(ctx, &pb.GetLeaseRequest{Id: l.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if g.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetLease().GetBoard() != "gone-1" {
		t.Errorf("lease after the supervisor came back is %s on %q (%q), want READY on gone-1", g.GetLease().GetPhase(), g.GetLease().GetBoard(), g.GetLease().GetStatusMessage())
	}
	for _, id := range []string{l.GetId(), queued.GetId()} {
		if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.done(); err != nil {
		t.Fatal(err)
	}
	if _, err := qw.done(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the boards AVAILABLE again", func() bool {
		st := boardStatuses(t, c)
		return st["gone-1"] == "AVAILABLE" && st["gone-2"] == "AVAILABLE" && st["stays-1"] == "AVAILABLE"
	})
}

// Leases of 2s that nobody releases are stopped when their time is up, and their
// afterLease hooks run. Each lease stays READY its full 2s although its beforeLease hook
// took 0.5s. Lab-a is frozen (SIGSTOP) over its lease's end, so that its own timer
// cannot fire: there the coordinator must stop the lease.
func TestCoordinatorStopsExpiredLease(t *testing.T) {
	dir := t.TempDir()
	ran := filepath.Join(dir, "after-ran")
	coordAddr := freeAddr(t)
	coordState := filepath.Join(dir, "coord")
	coord := startCoordinator(t, coordAddr, coordState)
	before, after := "sleep 0.5; echo prepared", fmt.Sprintf("echo after $LEASE_NAME >> %q", ran)
	supA := startSupervisor(t, "supervisor lab-a", supervisorConfigIn(t, dir, "lab-a", coordAddr, before, after, boardSpec{"exp-a", "device: rpi4"}))
	startSupervisor(t, "supervisor lab-b", supervisorConfigIn(t, dir, "lab-b", coordAddr, before, after, boardSpec{"exp-b", "device: rpi4"}))
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 2)
	ctx := ctxT(t)
	var ws []*leaseWatch
	var readies []*pb.Lease
	for _, b := range []string{"exp-a", "exp-b"} {
		l, err := createLease(ctx, c, "", b, 2*time.Second, "expiry-test")
		if err != nil {
			t.Fatal(err)
		}
		w, err := watchLease(ctx, c, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		r, err := w.ready()
		if err != nil {
			t.Fatal(err)
		}
		if got := r.GetEndsAt().AsTime().Sub(r.GetBeginsAt().AsTime()); got != 2*time.Second {
			t.Errorf("READY lease %s ends %s after it began, want 2s", r.GetId(), got)
		}
		readies = append(readies, r)
	}
	if lines := readLines(t, ran); len(lines) != 0 {
		t.Fatalf("afterLease ran before the leases expired: %q", lines)
	}

	// Freeze lab-a from shortly before its lease's end until the coordinator has asked
	// for the stop.
	a := readies[0]
	time.Sleep(time.Until(a.GetEndsAt().AsTime().Add(-300 * time.Millisecond)))
	if err := syscall.Kill(supA.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if g, err := c.GetLease(ctx, &pb.GetLeaseRequest{Id: a.GetId()}); err != nil {
		t.Fatal(err)
	} else if g.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease %s is %s (%q) %s before its end: its READY time was cut short",
			a.GetId(), g.GetLease().GetPhase(), g.GetLease().GetStatusMessage(), time.Until(a.GetEndsAt().AsTime()).Round(time.Millisecond))
	}
	coord.waitLine("lease expired: stopping it", "job="+a.GetId())
	if err := syscall.Kill(supA.cmd.Process.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if _, err := w.done(); err != nil {
			t.Fatal(err)
		}
	}
	by := "its supervisor's own bound (it fired first)"
	if coord.findLine("lease expired: stopping it", "job="+readies[1].GetId()) != "" {
		by = "the coordinator"
	}
	t.Logf("lab-b's lease was stopped by %s", by)
	got := map[string]int{}
	for _, l := range readLines(t, ran) {
		got[l]++
	}
	for _, r := range readies {
		if got["after "+r.GetId()] != 1 {
			t.Errorf("afterLease hook of lease %s ran %d times, want once (file: %v)", r.GetId(), got["after "+r.GetId()], got)
		}
		g, err := c.GetLease(ctx, &pb.GetLeaseRequest{Id: r.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if g.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
			t.Errorf("GetLease %s: %s, want DONE", r.GetId(), g.GetLease().GetPhase())
		}
	}
	// By the supervisors' clocks, each lease was READY for its full 2s.
	waitBoards(t, c, 2)
	coord.terminate()
	periods := ceReadyPeriods(t, storedEvents(t, openCoordinatorDB(t, coordState)))
	for _, r := range readies {
		d, ok := periods[r.GetId()]
		switch {
		case !ok:
			t.Errorf("lease %s: no READY and following transition stored", r.GetId())
		case d < 2*time.Second:
			t.Errorf("lease %s was READY for %s, less than its 2s", r.GetId(), d)
		default:
			t.Logf("lease %s was READY for %s", r.GetId(), d.Round(time.Millisecond))
		}
	}
}

// A supervisor presenting a wrong token is refused; both sides say so, and neither
// prints the token.
func TestCoordinatorRefusesWrongSupervisorToken(t *testing.T) {
	dir := t.TempDir()
	good, bad := "good-token-7f3a9c1e52b4d860", "wrong-token-1c9e4b7a30d2f615"
	tokens := filepath.Join(dir, "supervisor-tokens")
	if err := os.WriteFile(tokens, []byte("# supervisor-id token\nlab-good "+good+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	coordAddr := freeAddr(t)
	coord := startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--supervisor-tokens", tokens)
	tokenFile := func(name, token string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badCfg := labConfig{dir: filepath.Join(dir, "lab-bad"), id: "lab-bad", coordAddr: coordAddr, tokenFile: tokenFile("bad.token", bad),
		boards: []boardSpec{{"bad-1", "device: rpi4"}}}.write(t)
	// A refused token is retried minutes apart by default; a second attempt is wanted here.
	editConfig(t, badCfg, "supervisorId:", "refusedBackoff: 1s, supervisorId:")
	sup := startSupervisor(t, "supervisor lab-bad", badCfg)
	sup.waitOutput("supervisor token not accepted by the coordinator")
	coord.waitOutput("supervisor refused: bad token")

	// The right token is accepted: the refusal was about the token.
	goodCfg := labConfig{dir: filepath.Join(dir, "lab-good"), id: "lab-good", coordAddr: coordAddr, tokenFile: tokenFile("good.token", good),
		boards: []boardSpec{{"good-1", "device: rpi4"}}}.write(t)
	goodSup := startSupervisor(t, "supervisor lab-good", goodCfg)
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 1)
	goodSup.waitOutput("connected to coordinator")
	if st := boardStatuses(t, c); len(st) != 1 || st["good-1"] != "AVAILABLE" {
		t.Errorf("boards: %v, want only good-1 (the refused supervisor's board must not be listed)", st)
	}
	if sup.findLine("connected to coordinator") != "" {
		t.Error("the supervisor with a wrong token says it connected")
	}
	// It keeps trying (and is refused each time); one refusal logged per attempt.
	eventually(t, "a second refusal", func() bool { return coord.countLines("supervisor refused: bad token") >= 2 })
	for _, p := range []*proc{coord, sup, goodSup} {
		for _, tok := range []string{good, bad} {
			if strings.Contains(p.output(), tok) {
				t.Errorf("%s printed a token:\n%s", p.name, p.output())
			}
		}
	}
}

// ---- the coordinator tests' own helpers ----

// ceSelectorMatches evaluates a "k=v,k!=v" selector against labels.
func ceSelectorMatches(sel string, labels map[string]string) bool {
	for _, term := range strings.Split(sel, ",") {
		if k, v, ok := strings.Cut(term, "!="); ok {
			if got, has := labels[strings.TrimSpace(k)]; has && got == strings.TrimSpace(v) {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(term, "=")
		if labels[strings.TrimSpace(k)] != strings.TrimSpace(v) {
			return false
		}
	}
	return true
}

// ceReadyPeriods tells, per job, how long it was READY by its supervisor's clock: from
// its transition to READY to the next one.
func ceReadyPeriods(t *testing.T, events map[string][]storedEvent) map[string]time.Duration {
	t.Helper()
	readyAt := map[string]time.Time{}
	out := map[string]time.Duration{}
	eachTransition(t, events, func(e storedEvent, st *pb.StateTransition) {
		job := st.GetJobId()
		if st.GetTo() == pb.LeasePhase_LEASE_PHASE_READY {
			readyAt[job] = e.at
		} else if at, ok := readyAt[job]; ok {
			if _, done := out[job]; !done {
				out[job] = e.at.Sub(at)
			}
		}
	})
	return out
}

// ceInterval is when a job held its board, by its supervisor's clock: from its first state
// transition to its terminal one.
type ceInterval struct {
	job        string
	start, end time.Time
}

// ceBoardIntervals derives each job's interval per board from the stored transitions.
func ceBoardIntervals(t *testing.T, events map[string][]storedEvent) (map[string][]ceInterval, map[string]string) {
	t.Helper()
	type span struct {
		board      string
		start, end time.Time
	}
	spans := map[string]*span{}
	eachTransition(t, events, func(e storedEvent, st *pb.StateTransition) {
		s := spans[st.GetJobId()]
		if s == nil {
			s = &span{board: st.GetBoard(), start: e.at}
			spans[st.GetJobId()] = s
		}
		if s.board != st.GetBoard() {
			t.Errorf("job %s reported on boards %s and %s", st.GetJobId(), s.board, st.GetBoard())
		}
		if e.at.Before(s.start) {
			s.start = e.at
		}
		if to := st.GetTo(); to == pb.LeasePhase_LEASE_PHASE_DONE || to == pb.LeasePhase_LEASE_PHASE_FAILED {
			s.end = e.at
		}
	})
	out := map[string][]ceInterval{}
	boardOf := map[string]string{}
	for job, s := range spans {
		boardOf[job] = s.board
		out[s.board] = append(out[s.board], ceInterval{job: job, start: s.start, end: s.end})
	}
	for _, ivs := range out {
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start.Before(ivs[j].start) })
	}
	return out, boardOf
}

// cePowerCycler power-cycles a leased board with `boardvisor power cycle`, over and over.
type cePowerCycler struct {
	t      *testing.T
	quit   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	cycles int
	err    error
}

func ceStartPowerCycling(t *testing.T, exporter, board, token string) *cePowerCycler {
	t.Helper()
	if exporter == "" || token == "" {
		t.Fatalf("lease of %s has no exporter endpoint or token", board)
	}
	p := &cePowerCycler{t: t, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.quit:
				return
			default:
			}
			out, err := runCLI(nil, "power", "cycle", "--exporter", exporter, "--board", board, "--token", token)
			p.mu.Lock()
			if err != nil {
				p.err = fmt.Errorf("power cycle: %v: %s", err, out)
				p.mu.Unlock()
				return
			}
			p.cycles++
			p.mu.Unlock()
			time.Sleep(300 * time.Millisecond) // the boot log takes ~0.15s: let it finish
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *cePowerCycler) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cycles
}

// waitCycles waits until n power cycles are done.
func (p *cePowerCycler) waitCycles(n int) {
	p.t.Helper()
	eventually(p.t, fmt.Sprintf("%d power cycles", n), func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.err != nil {
			p.t.Fatal(p.err)
		}
		return p.cycles >= n
	})
}

// stop ends the cycling and returns how many cycles were done.
func (p *cePowerCycler) stop() int {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		p.t.Error(p.err)
	}
	return p.cycles
}
