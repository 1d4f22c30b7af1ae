package actors

import (
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// Record is what is kept of one live lease so that its actor can be rebuilt in the same
// phase: after a panic of the actor now, and after a restart of the daemon once the
// store is durable (the journal).
type Record struct {
	Spec  jobs.Spec
	State jobs.State
	// Deadlines holds when each armed timer fires.
	Deadlines map[jobs.Timer]time.Time
	// Hook is the hook run being watched, if any.
	Hook *HookRun
	// Reported are the transitions the lease reported so far, numbered by Step: after a
	// crash, those the outbox did not durably hold are sent again.
	Reported []connector.Transition
}

// HookRun identifies a running hook shim so that a new watcher can adopt it.
type HookRun struct {
	Kind      jobs.HookKind
	Dir       string // spool directory
	Pid       int
	StartTime uint64 // the shim's start time (from /proc), so a reused pid is not mistaken for it
	Offset    int64  // spool offset just past the last line reported
}

// Store keeps the records of live leases. Implementations are safe for concurrent use.
type Store interface {
	// SaveLease writes a lease's spec, state, timer deadlines and reported transitions
	// (all of them, in one write), leaving its hook run as it is.
	SaveLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported ...connector.Transition) error
	// SaveHook writes the lease's current hook run (nil clears it).
	SaveHook(jobID string, run *HookRun) error
	// SetHookOffset records how far the lease's hook output has been reported.
	SetHookOffset(jobID string, offset int64) error
	// Load returns a lease's record, and false if there is none.
	Load(jobID string) (Record, bool, error)
	// Delete forgets a lease (it ended).
	Delete(jobID string) error
}

// MemStore is a Store in memory: it survives an actor's restart, not the daemon's.
// Its zero value is ready to use.
type MemStore struct {
	mu sync.Mutex
	m  map[string]*Record
}

var _ Store = (*MemStore)(nil)

func (s *MemStore) rec(jobID string) *Record {
	if s.m == nil {
		s.m = map[string]*Record{}
	}
	r := s.m[jobID]
	if r == nil {
		r = &Record{}
		s.m[jobID] = r
	}
	return r
}

// SaveLease implements Store.
func (s *MemStore) SaveLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported ...connector.Transition) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rec(spec.JobID)
	r.Spec, r.State = spec, st
	r.Reported = append([]connector.Transition(nil), reported...)
	r.Deadlines = make(map[jobs.Timer]time.Time, len(deadlines))
	for t, d := range deadlines {
		r.Deadlines[t] = d
	}
	return nil
}

// SaveHook implements Store.
func (s *MemStore) SaveHook(jobID string, run *HookRun) error {
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
func (s *MemStore) Load(jobID string) (Record, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.m[jobID]
	if !ok || r.Spec.JobID == "" {
		return Record{}, false, nil
	}
	cp := *r
	if r.Hook != nil {
		h := *r.Hook
		cp.Hook = &h
	}
	cp.Reported = append([]connector.Transition(nil), r.Reported...)
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
