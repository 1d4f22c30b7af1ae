package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// TestStartBoundApartFromDuration runs leases whose beforeLease takes longer than their
// duration, under load (40 at once, each with a flood of hook lines on the event path),
// on the real clock: none is ended before READY (the bound before READY is its own
// setting, not the duration), each lasts its duration from READY, and the ExtendJob the
// supervisor gets at READY names the very ends_at the coordinator advertises; the
// coordinator's StopJob comes at or after that ends_at, never before.
func TestStartBoundApartFromDuration(t *testing.T) {
	const (
		boards   = 40
		duration = 3 * time.Second
		hook     = 4 * time.Second // longer than the duration
		lines    = 200             // hook lines per lease, on the event path
	)
	e := newEnv(t, "", Options{StartBound: time.Minute})
	var bs []*pb.BoardInfo
	for i := range boards {
		bs = append(bs, board(fmt.Sprintf("r%02d", i), "device", "rpi4"))
	}
	f := e.dial("sup", bs, supOpts{})

	type seen struct {
		ready   *pb.Lease
		readyAt time.Time // when the watcher got READY
		last    *pb.Lease
		extend  *pb.ExtendJob
		stopAt  time.Time
		stopWhy string
	}
	var mu sync.Mutex
	got := map[string]*seen{}
	boardOf := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Add(1)
	go func() { // the supervisor: READY after the "hook", DONE after a StopJob
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case x := <-f.extends:
				mu.Lock()
				got[x.GetJobId()].extend = x
				mu.Unlock()
			case m := <-f.msgs:
				if sj := m.GetStartJob(); sj != nil {
					job, b := sj.GetJobId(), sj.GetBoard()
					mu.Lock()
					boardOf[job] = b
					mu.Unlock()
					f.transition(job, b, pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_STARTING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
					f.transition(job, b, pb.LeasePhase_LEASE_PHASE_STARTING, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK)
					wg.Add(1)
					go func() {
						defer wg.Done()
						began := time.Now()
						for i := 0; i < lines && ctx.Err() == nil; i++ {
							hookLine(f, job, fmt.Sprintf("flashing block %d", i))
						}
						select {
						case <-ctx.Done():
							return
						case <-time.After(hook - time.Since(began)):
						}
						f.transition(job, b, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, pb.LeasePhase_LEASE_PHASE_READY, jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY)
					}()
				}
				if st := m.GetStopJob(); st != nil {
					mu.Lock()
					s := got[st.GetJobId()]
					s.stopAt, s.stopWhy = time.Now(), st.GetReason()
					b := boardOf[st.GetJobId()]
					mu.Unlock()
					f.toDone(st.GetJobId(), b)
				}
			}
		}
	}()
	var clients sync.WaitGroup
	for i := range boards {
		l := e.mustCreate("", fmt.Sprintf("r%02d", i), duration)
		mu.Lock()
		got[l.GetId()] = &seen{}
		mu.Unlock()
		clients.Add(1)
		go func() {
			defer clients.Done()
			stream, err := e.api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: l.GetId()})
			if err != nil {
				t.Error(err)
				return
			}
			for {
				x, err := stream.Recv()
				if err != nil {
					return
				}
				mu.Lock()
				s := got[l.GetId()]
				if x.GetPhase() == pb.LeasePhase_LEASE_PHASE_READY && s.ready == nil {
					s.ready, s.readyAt = x, time.Now()
				}
				s.last = x
				mu.Unlock()
			}
		}()
	}
	clients.Wait()
	mu.Lock()
	defer mu.Unlock()
	for id, s := range got {
		switch {
		case s.ready == nil:
			t.Errorf("lease %s never READY: last %v; stopped %q", id, s.last, s.stopWhy)
			continue
		case s.last.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE:
			t.Errorf("lease %s ended %v", id, s.last)
		case s.stopWhy != "lease expired":
			t.Errorf("lease %s stopped for %q, want its expiry", id, s.stopWhy)
		}
		begins, ends := s.ready.GetBeginsAt().AsTime(), s.ready.GetEndsAt().AsTime()
		if ends.Sub(begins) != duration {
			t.Errorf("lease %s: READY at %v, ends at %v: %s, want its duration %s", id, begins, ends, ends.Sub(begins), duration)
		}
		switch {
		case s.extend == nil && !s.readyAt.Before(ends):
			// So loaded a machine (-race, other builds) that READY was applied only after
			// the lease's end: nothing remained to tell; the lease was stopped at once.
			t.Logf("lease %s: READY applied after its ends_at (%s late): no ExtendJob", id, s.readyAt.Sub(ends))
		case s.extend == nil || !s.extend.GetEndsAt().AsTime().Equal(ends) ||
			s.extend.GetRemaining().AsDuration() <= 0 || s.extend.GetRemaining().AsDuration() > duration:
			t.Errorf("lease %s: advertised ends_at %v, the supervisor was told %v", id, ends, s.extend)
		}
		if s.stopAt.Before(ends) {
			t.Errorf("lease %s: StopJob at %v, before its ends_at %v", id, s.stopAt, ends)
		}
	}
}
