package exporter

import (
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

// The status clients see is the service's own view of the board's status, kept as
// upstream Jumpstarter's exporter keeps it:
//
//   - GetStatus.message says what the status means in upstream's words ("Ready for
//     commands", "beforeLease hook failed (on_failure=endLease): <reason>", a hook's
//     warning after HookWarningPrefix, ...), so upstream's client can show it.
//   - A failed hook's status (BEFORE_LEASE_HOOK_FAILED, AFTER_LEASE_HOOK_FAILED) stays
//     what clients see for at least FailedStatusHold, even when the board has moved on
//     (upstream's exporter holds it a second before releasing the lease), so that a
//     client polling every 0.3 s sees it. The changes that came meanwhile are then shown
//     in order, each with its own status_version.
//
// The lease state machine is not slowed down: only what clients are shown is.

// HookWarningPrefix starts the status message of a hook that failed under onFailure:
// warn; upstream's client prints what follows it as a warning.
const HookWarningPrefix = "[HOOK_WARNING] "

// DefaultFailedStatusHold is how long a failed hook's status is shown at least.
const DefaultFailedStatusHold = 2 * time.Second

func failedStatus(s jobs.ExporterStatus) bool {
	return s == jobs.StatusBeforeLeaseHookFailed || s == jobs.StatusAfterLeaseHookFailed
}

// hookVerdict is what the lease state machine said of a failed hook in its SYSTEM log:
// "<kind> hook failed: <reason> (onFailure: <policy>[, going on])".
type hookVerdict struct {
	kind   jobs.HookKind
	reason string
	policy string
}

// parseVerdict reads a hook's verdict from a SYSTEM log line (jobs.Lease writes them).
func parseVerdict(text string) (hookVerdict, bool) {
	var v hookVerdict
	rest := ""
	for _, k := range []jobs.HookKind{jobs.HookBefore, jobs.HookAfter} {
		if r, ok := strings.CutPrefix(text, k.String()+" hook failed: "); ok {
			v.kind, rest = k, r
		}
	}
	if v.kind == jobs.HookNone {
		return v, false
	}
	i := strings.LastIndex(rest, " (onFailure: ")
	if i < 0 || !strings.HasSuffix(rest, ")") {
		return v, false
	}
	v.reason = rest[:i]
	v.policy, _, _ = strings.Cut(strings.TrimSuffix(rest[i+len(" (onFailure: "):], ")"), ",")
	return v, true
}

// noteSystemLine records a hook's verdict from the lease's SYSTEM log.
func (l *leaseState) noteSystemLine(line logLine) {
	v, ok := parseVerdict(line.Text)
	if !ok {
		return
	}
	if v.policy == jobs.PolicyWarn.String() {
		if l.warnings == nil {
			l.warnings = map[jobs.HookKind]string{}
		}
		l.warnings[v.kind] = v.reason
		return
	}
	l.verdict = &v
}

// statusMessage words a status as upstream's exporter does, from what the lease (nil
// for none) said of its hooks. given is the board's own message (a health reason).
func statusMessage(st jobs.ExporterStatus, l *leaseState, given string) string {
	warning := func(k jobs.HookKind) string {
		if l != nil && l.warnings[k] != "" {
			return HookWarningPrefix + k.String() + " hook warning: " + l.warnings[k]
		}
		return ""
	}
	failure := func(k jobs.HookKind) string {
		if l != nil && l.verdict != nil && l.verdict.kind == k {
			how := "on_failure=" + l.verdict.policy
			if l.verdict.policy == jobs.PolicyExit.String() {
				how += ", shutting down"
			}
			return k.String() + " hook failed (" + how + "): " + l.verdict.reason
		}
		return k.String() + " hook failed"
	}
	switch st {
	case jobs.StatusBeforeLeaseHook:
		return "Running beforeLease hook"
	case jobs.StatusLeaseReady:
		if w := warning(jobs.HookBefore); w != "" {
			return w
		}
		return "Ready for commands"
	case jobs.StatusAfterLeaseHook:
		return "Running afterLease hooks"
	case jobs.StatusBeforeLeaseHookFailed:
		return failure(jobs.HookBefore)
	case jobs.StatusAfterLeaseHookFailed:
		return failure(jobs.HookAfter)
	case jobs.StatusAvailable:
		if w := warning(jobs.HookAfter); w != "" {
			return w
		}
		return "Available for new lease"
	case jobs.StatusOffline:
		if l != nil && l.verdict != nil && l.verdict.policy == jobs.PolicyExit.String() {
			return "Exporter shutting down due to " + l.verdict.kind.String() + " hook failure"
		}
		if given != "" {
			return "Offline: " + given
		}
		return "Offline"
	}
	return given
}

// showStatus changes the status clients see to st, unless a failed status is being
// held: then st waits its turn. Called with s.mu held.
func (s *Service) showStatus(b *boardState, st statusMsg) {
	last := b.st
	if n := len(b.pending); n > 0 {
		last = b.pending[n-1]
	}
	if last.status == st.status && b.st.version > 0 {
		return
	}
	if len(b.pending) > 0 || s.now().Before(b.holdUntil) {
		b.pending = append(b.pending, st)
		s.armHold(b)
		return
	}
	s.setShown(b, st)
}

// setShown makes st the status clients see. Called with s.mu held.
func (s *Service) setShown(b *boardState, st statusMsg) {
	st.prev, st.version = b.st.status, b.st.version+1
	b.st = st
	if failedStatus(st.status) {
		b.holdUntil = s.now().Add(s.hold())
	}
	for q := range b.watch {
		q.push(b.st)
	}
}

// armHold makes sure the held changes are shown when the hold ends.
func (s *Service) armHold(b *boardState) {
	if b.holdTimer != nil {
		return
	}
	b.holdTimer = time.AfterFunc(max(time.Until(b.holdUntil), 0), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		b.holdTimer = nil
		for len(b.pending) > 0 && !s.now().Before(b.holdUntil) {
			st := b.pending[0]
			b.pending = b.pending[1:]
			s.setShown(b, st)
		}
		if len(b.pending) > 0 {
			s.armHold(b)
		}
	})
}

func (s *Service) hold() time.Duration {
	if s.FailedStatusHold > 0 {
		return s.FailedStatusHold
	}
	return DefaultFailedStatusHold
}

func (s *Service) now() time.Time { return time.Now() }
