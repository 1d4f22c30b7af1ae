package exporter

import "time"

// A lease that ended stays readable for a grace period: its token still opens its log
// (LogStream sends the whole history, then ends) and its final status (GetStatus), and
// nothing else — driver calls and EndSession are refused as for any token that holds no
// live lease. A client that comes late (its shell ran on after the lease was ended by
// its timeout or by the coordinator, a script that reconnects) can so learn what
// happened.
//
// What is kept is bounded, by a written policy: for LogGrace after the end, and at most
// Limits.MaxEndedLeases leases and Limits.MaxEndedBytes of log text in all; past either
// bound the lease that ended first is forgotten first. Ended leases are kept in memory
// only: a restart of the supervisor forgets them.

// Defaults of the grace period and its bounds.
const (
	DefaultLogGrace       = 5 * time.Minute
	DefaultMaxEndedLeases = 4096
	DefaultMaxEndedBytes  = 64 << 20
)

func (s *Service) logGrace() time.Duration {
	if s.LogGrace != 0 {
		return s.LogGrace
	}
	return DefaultLogGrace
}

// retain keeps an ended lease for the grace period. Called with s.mu held.
func (s *Service) retain(l *leaseState) {
	l.endedAt = s.now()
	if s.logGrace() < 0 {
		return
	}
	if l.tokenHash != "" {
		s.ended[l.tokenHash] = l
	}
	if b := s.boards[l.board]; b != nil {
		b.lastEnded = l
	}
	s.endedQ = append(s.endedQ, l)
	s.endedBytes += l.bytes
	s.prune()
}

// prune forgets the ended leases past their grace period or past the bounds, oldest
// first. Called with s.mu held.
func (s *Service) prune() {
	now := s.now()
	maxN := orDefault(s.Limits.MaxEndedLeases, DefaultMaxEndedLeases)
	maxBytes := orDefault(s.Limits.MaxEndedBytes, DefaultMaxEndedBytes)
	drop := 0
	for drop < len(s.endedQ) {
		l := s.endedQ[drop]
		if now.Sub(l.endedAt) < s.logGrace() && len(s.endedQ)-drop <= maxN && s.endedBytes <= maxBytes {
			break
		}
		if s.ended[l.tokenHash] == l {
			delete(s.ended, l.tokenHash)
		}
		if b := s.boards[l.board]; b != nil && b.lastEnded == l {
			b.lastEnded = nil
		}
		s.endedBytes -= l.bytes
		clear(l.lines)
		l.lines = nil
		drop++
	}
	if drop > 0 {
		clear(s.endedQ[:drop])
		s.endedQ = s.endedQ[drop:]
	}
}

// endedLease returns the ended lease, still in its grace period, whose token hashes to
// hash. Called with s.mu held.
func (s *Service) endedLease(hash string) *leaseState {
	s.prune()
	return s.ended[hash]
}
