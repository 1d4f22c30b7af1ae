package actors

import (
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

// Store keeps the records of live leases. Implementations are safe for concurrent use.
type Store interface {
	// SaveLease writes a lease's spec, state, timer deadlines and reported transitions
	// (all of them, in one write), leaving its hook run as it is.
	SaveLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported ...jobs.Transition) error
	// SaveHook writes the lease's current hook run (nil clears it).
	SaveHook(jobID string, run *jobs.HookRun) error
	// SetHookOffset records how far the lease's hook output has been reported.
	SetHookOffset(jobID string, offset int64) error
	// Load returns a lease's record, and false if there is none.
	Load(jobID string) (jobs.Record, bool, error)
	// Delete forgets a lease (it ended).
	Delete(jobID string) error
}

// MemStore is a Store in memory: it survives an actor's restart, not the daemon's.
// Its zero value is ready to use.
type MemStore struct {
	mu sync.Mutex
	m  map[string]*jobs.Record
}

var _ Store = (*MemStore)(nil)

func (s *MemStore) rec(jobID string) *jobs.Record {
	if s.m == nil {
		s.m = map[string]*jobs.Record{}
	}
	r := s.m[jobID]
	if r == nil {
		r = &jobs.Record{}
		s.m[jobID] = r
	}
	return r
}

// SaveLease implements Store.
func (s *MemStore) SaveLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported ...jobs.Transition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rec(spec.JobID)
	r.Spec, r.State = spec, st
	r.Reported = append([]jobs.Transition(nil), reported...)
	r.Deadlines = make(map[jobs.Timer]time.Time, len(deadlines))
	for t, d := range deadlines {
		r.Deadlines[t] = d
	}
	return nil
}

// SaveHook implements Store.
func (s *MemStore) SaveHook(jobID string, run *jobs.HookRun) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rec(jobID)
	if run == nil {
		r.Hook = nil
		return nil
	}
	cp := *run
	r.Hook = &cp
	return nil
}

// SetHookOffset implements Store.
func (s *MemStore) SetHookOffset(jobID string, offset int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.m[jobID]; r != nil && r.Hook != nil {
		r.Hook.Offset = offset
	}
	return nil
}

// Load implements Store.
func (s *MemStore) Load(jobID string) (jobs.Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[jobID]
	if !ok || r.Spec.JobID == "" {
		return jobs.Record{}, false, nil
	}
	cp := *r
	if r.Hook != nil {
		h := *r.Hook
		cp.Hook = &h
	}
	cp.Reported = append([]jobs.Transition(nil), r.Reported...)
	cp.Deadlines = make(map[jobs.Timer]time.Time, len(r.Deadlines))
	for t, d := range r.Deadlines {
		cp.Deadlines[t] = d
	}
	return cp, true, nil
}

// Delete implements Store.
func (s *MemStore) Delete(jobID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, jobID)
	return nil
}
