package tests

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// TestCoordinatorBoundsCountFromReady runs, with the real binaries, leases whose
// beforeLease hook takes longer than the lease's duration, ten at once: each becomes
// READY (the bound before READY is its own setting, --start-bound, not the duration),
// the coordinator's ends_at is its READY time plus its duration, and by the supervisor's
// own clock (its stored transitions) the lease stays READY at least that long: neither
// the supervisor nor the coordinator ends it before the ends_at the coordinator
// advertised.
func TestCoordinatorBoundsCountFromReady(t *testing.T) {
	const n, duration = 10, time.Second
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	startCoordinator(t, addr, stateDir, "--start-bound", "30s")
	var boards []boardSpec
	for i := range n {
		boards = append(boards, boardSpec{name: fmt.Sprintf("slow-%d", i), labels: "device: rpi4"})
	}
	cfg := ceLabConfig(t, dir, "lab-slow", addr, "sleep 1.5", "", boards...)
	startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, addr)
	waitBoards(t, c, n)

	type result struct {
		ready, done *pb.Lease
		err         error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		l, err := ceCreateLease(ctxT(t), c, "", fmt.Sprintf("slow-%d", i), duration, "bounds")
		if err != nil {
			t.Fatal(err)
		}
		if l.GetEndsAt() != nil {
			t.Errorf("lease %s says it ends at %v before it is READY", l.GetId(), l.GetEndsAt().AsTime())
		}
		w, err := ceWatchLease(ctxT(t), c, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &results[i]
			if r.ready, r.err = w.ready(); r.err == nil {
				r.done, r.err = w.done()
			}
		}()
	}
	wg.Wait()
	db := ceOpenCoordinatorDB(t, stateDir)
	periods := ceReadyPeriods(t, ceStoredEvents(t, db))
	for i, r := range results {
		if r.err != nil {
			t.Errorf("lease %d: %v", i, r.err)
			continue
		}
		begins, ends := r.ready.GetBeginsAt().AsTime(), r.ready.GetEndsAt().AsTime()
		if ends.Sub(begins) != duration {
			t.Errorf("lease %s: READY at %v, ends at %v (%s), want its duration %s from READY", r.ready.GetId(), begins, ends, ends.Sub(begins), duration)
		}
		if p, ok := periods[r.ready.GetId()]; !ok || p < duration {
			t.Errorf("lease %s was READY for %s by its supervisor's clock, less than the %s the coordinator advertised", r.ready.GetId(), p, duration)
		}
	}
}
