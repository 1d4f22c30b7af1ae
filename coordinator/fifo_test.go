package coordinator

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// autoSup answers a fake supervisor's requests like a real one: StartJob → READY, then
// either DONE on its own or after a StopJob. It fails the test if a board gets a second
// lease while one is live, or if a lease is started while an older one with the same
// selector still waits.
type autoSup struct {
	e    *env
	f    *fakeSup
	mu   sync.Mutex
	live map[string]string // board -> job
	jobs map[string]string // job -> board
	n    int
}

// selfFinishing tells which leases the supervisor ends on its own (the others are
// released by their client): decided by the ID so that both sides agree.
func selfFinishing(id string) bool { return id[0] < '8' }

func (a *autoSup) run(ctx context.Context) {
	for {
		var m *pb.CoordinatorMessage
		select {
		case <-ctx.Done():
			return
		case m = <-a.f.msgs:
		}
		switch {
		case m.GetStartJob() != nil:
			sj := m.GetStartJob()
			a.mu.Lock()
			if j := a.live[sj.GetBoard()]; j != "" {
				a.e.t.Errorf("board %s got job %s while job %s is live on it", sj.GetBoard(), sj.GetJobId(), j)
			}
			a.live[sj.GetBoard()], a.jobs[sj.GetJobId()] = sj.GetJobId(), sj.GetBoard()
			a.n++
			a.mu.Unlock()
			a.checkFIFO(ctx, sj.GetJobId())
			a.f.toReady(sj.GetJobId(), sj.GetBoard())
			if selfFinishing(sj.GetJobId()) {
				a.finish(sj.GetJobId())
			}
		case m.GetStopJob() != nil:
			a.finish(m.GetStopJob().GetJobId())
		}
	}
}

// finish frees the board first (the coordinator may answer DONE with a new StartJob at
// once), then reports the lease to DONE.
func (a *autoSup) finish(job string) {
	a.mu.Lock()
	b, ok := a.jobs[job]
	if ok && a.live[b] == job {
		delete(a.live, b)
	} else {
		ok = false
	}
	a.mu.Unlock()
	if ok {
		a.f.toDone(job, b)
	}
}

func (a *autoSup) checkFIFO(ctx context.Context, job string) {
	r, err := a.e.api.ListLeases(ctx, &pb.ListLeasesRequest{IncludeEnded: true})
	if err != nil {
		if ctx.Err() == nil {
			a.e.t.Errorf("ListLeases: %v", err)
		}
		return
	}
	key := map[string]string{}
	for _, l := range r.GetLeases() {
		key[l.GetId()] = l.GetSelector()
	}
	for _, l := range r.GetLeases() {
		if l.GetId() == job {
			return
		}
		if l.GetQueued() && l.GetSelector() == key[job] {
			a.e.t.Errorf("FIFO broken: lease %s (selector %q) started while the older %s still waits", job, key[job], l.GetId())
		}
	}
}

func TestFIFOAndOneLeasePerBoard(t *testing.T) {
	e := newEnv(t, "", Options{})
	supA := e.dial("sup-a", []*pb.BoardInfo{
		board("a1", "device", "rpi4", "arch", "arm64"),
		board("a2", "device", "rpi4", "arch", "arm32"),
		board("a3", "device", "qemu", "arch", "x86"),
	}, supOpts{})
	supB := e.dial("sup-b", []*pb.BoardInfo{
		board("b1", "device", "rpi4", "arch", "arm64"),
		board("b2", "device", "qemu", "arch", "x86"),
		board("b3", "device", "bbb", "arch", "arm32"),
	}, supOpts{})
	labels := map[string]map[string]string{}
	for _, b := range e.boards() {
		labels[b.GetName()] = b.GetLabels()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	type req struct{ selector, board string }
	mix := []req{{"device=rpi4", ""}, {"device=qemu", ""}, {"arch=arm64", ""}, {"device=rpi4,arch=arm64", ""},
		{"", "b3"}, {"arch=arm32", ""}, {"device!=rpi4", ""}}
	type result struct {
		r    req
		last *pb.Lease
		err  error
	}
	results := make([]result, 50)
	var watchers sync.WaitGroup
	for i := range results {
		r := mix[i%len(mix)]
		l, err := e.create(r.selector, r.board, time.Hour, fmt.Sprintf("client-%d", i))
		if err != nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		results[i].r = r
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			results[i].last, results[i].err = watchAndRelease(ctx, e.api, l.GetId())
		}()
	}
	// The supervisors start answering only now, so that most leases wait in the queue.
	autos := []*autoSup{}
	for _, f := range []*fakeSup{supA, supB} {
		a := &autoSup{e: e, f: f, live: map[string]string{}, jobs: map[string]string{}}
		autos = append(autos, a)
		wg.Add(1)
		go func() { defer wg.Done(); a.run(ctx) }()
	}
	watchers.Wait()
	for i, res := range results {
		if res.err != nil {
			t.Fatalf("lease %d: %v", i, res.err)
		}
		l := res.last
		if l.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
			t.Fatalf("lease %d ended %s: %s", i, l.GetPhase(), l.GetStatusMessage())
		}
		if res.r.board != "" && l.GetBoard() != res.r.board {
			t.Errorf("lease %d for board %s got board %s", i, res.r.board, l.GetBoard())
		}
		if res.r.selector != "" {
			sel, _ := ParseSelector(res.r.selector)
			if !sel.Matches(labels[l.GetBoard()]) {
				t.Errorf("lease %d (%s) got board %s %v", i, res.r.selector, l.GetBoard(), labels[l.GetBoard()])
			}
		}
	}
	total := 0
	for _, a := range autos {
		a.mu.Lock()
		total += a.n
		a.mu.Unlock()
	}
	if total != 50 {
		t.Errorf("supervisors got %d StartJobs, want 50", total)
	}
	for _, b := range e.boards() {
		if b.GetCurrentLeaseId() != "" || b.GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE {
			t.Errorf("board %s not free at the end: %v", b.GetName(), b)
		}
	}
	// Every event is stored once, in order.
	supA.waitAcked()
	supB.waitAcked()
	for _, f := range []*fakeSup{supA, supB} {
		checkEvents(t, e.c, f.id, f.sent)
	}
	e.c.mustMatchStore(t)
}

// watchAndRelease watches a lease to its end, releasing it once READY unless its
// supervisor ends it on its own. It returns the last state seen.
func watchAndRelease(ctx context.Context, api pb.LeaseServiceClient, id string) (*pb.Lease, error) {
	stream, err := api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		return nil, err
	}
	var last *pb.Lease
	released := false
	for {
		l, err := stream.Recv()
		if err == io.EOF {
			if last == nil || !terminal(last.GetPhase()) {
				return last, fmt.Errorf("watch of %s ended before the lease did", id)
			}
			return last, nil
		}
		if err != nil {
			return last, err
		}
		last = l
		if l.GetPhase() == pb.LeasePhase_LEASE_PHASE_READY && !released && !selfFinishing(id) {
			released = true
			if _, err := api.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: id, Reason: "test done"}); err != nil {
				return last, err
			}
		}
	}
}
