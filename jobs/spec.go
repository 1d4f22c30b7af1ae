package jobs

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Policy is what happens when a hook fails (exits non-zero, times out or cannot start).
// The names are Jumpstarter's onFailure values.
type Policy int

// Hook failure policies. The zero value is PolicyWarn.
const (
	// PolicyWarn logs a warning and goes on as if the hook had succeeded.
	PolicyWarn Policy = iota
	// PolicyEndLease reports *_HOOK_FAILED and ends the lease; a failed beforeLease
	// skips afterLease.
	PolicyEndLease
	// PolicyExit reports *_HOOK_FAILED, ends the lease, and takes the board OFFLINE
	// with health bad until an operator clears it. Other boards are not affected.
	PolicyExit
)

// String returns the config name: "warn", "endLease" or "exit".
func (p Policy) String() string {
	switch p {
	case PolicyWarn:
		return "warn"
	case PolicyEndLease:
		return "endLease"
	case PolicyExit:
		return "exit"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// ParsePolicy parses a config value ("warn", "endLease", "exit").
func ParsePolicy(s string) (Policy, error) {
	for _, p := range []Policy{PolicyWarn, PolicyEndLease, PolicyExit} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown onFailure policy %q (want warn, endLease or exit)", s)
}

// HookKind names one of a lease's two hooks.
type HookKind int

// The two hooks of a lease. HookNone means no hook.
const (
	HookNone   HookKind = 0
	HookBefore HookKind = 1
	HookAfter  HookKind = 2
)

// String returns the config name: "beforeLease" or "afterLease".
func (k HookKind) String() string {
	switch k {
	case HookBefore:
		return "beforeLease"
	case HookAfter:
		return "afterLease"
	case HookNone:
		return "none"
	}
	return fmt.Sprintf("HookKind(%d)", int(k))
}

// Source returns the log source of the hook's output lines.
func (k HookKind) Source() LogSource {
	if k == HookAfter {
		return SourceAfterLeaseHook
	}
	return SourceBeforeLeaseHook
}

// DefaultHookTimeout is a hook's timeout when its config gives none.
const DefaultHookTimeout = 120 * time.Second

// HookSlack is how long after a hook's timeout the lease stops waiting for the hook's
// exit report and counts the hook as failed. The hook runner enforces the timeout itself
// (with a SIGTERM grace period); this is the backstop for a report that never comes.
const HookSlack = 30 * time.Second

// DrainCheck is how often a lease whose hook has exited (its shim wrote the status)
// but whose last output lines are not durable yet says so in its log while it waits
// for them. Such a hook is never failed for the wait: see InHookShimExited.
const DrainCheck = time.Minute

// ReleaseTimeout bounds the wait for the board to confirm it was released.
const ReleaseTimeout = 30 * time.Second

// HookPolicy is what the lifecycle needs to know of one hook: how long it may take and
// what its failure means. How the hook runs (script, exec) is not the lifecycle's concern.
type HookPolicy struct {
	Timeout   time.Duration
	OnFailure Policy
}

// Spec describes one lease: which job, which board, for whom, how long, which hooks.
type Spec struct {
	// JobID is the coordinator's job ID, which is also the lease ID: a UUID.
	JobID string
	// Board is the name of the board leased.
	Board string
	// Client is the name of the client the lease is for (may be empty).
	Client string
	// Duration bounds the whole lease from its start: when it expires the lease ends as if
	// an end had been requested. It must be positive: no lease waits forever.
	Duration time.Duration
	// Before and After are the lease's hooks; nil means none is configured (the phase is
	// passed through).
	Before, After *HookPolicy
	// TokenHash is the hex SHA-256 of the client's lease token (empty: none). The token
	// itself is never kept.
	TokenHash string
	// Params are the job's parameters, passed to the hooks' environment.
	Params map[string]string
	// Image is the image the board is provisioned with before its beforeLease hook (nil:
	// none; the lease passes straight from waiting for the board to beforeLease).
	Image *Image
	// FetchTimeout and ProvisionTimeout bound the image stages (zero: the defaults).
	FetchTimeout, ProvisionTimeout time.Duration
}

// TokenHash is how a lease token is kept: the hex SHA-256 of it.
func TokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Validate checks a spec and returns an error naming the first problem found.
func (s Spec) Validate() error {
	if _, err := uuid.Parse(s.JobID); err != nil {
		return fmt.Errorf("job ID %q is not a UUID", s.JobID)
	}
	if strings.TrimSpace(s.Board) == "" {
		return fmt.Errorf("job %s: no board named", s.JobID)
	}
	if s.Duration <= 0 {
		return fmt.Errorf("job %s: duration %s must be positive", s.JobID, s.Duration)
	}
	if err := s.checkInput(); err != nil {
		return fmt.Errorf("job %s: %w", s.JobID, err)
	}
	if s.Image != nil {
		if err := s.Image.Validate(); err != nil {
			return fmt.Errorf("job %s: %w", s.JobID, err)
		}
	}
	if s.FetchTimeout < 0 || s.ProvisionTimeout < 0 {
		return fmt.Errorf("job %s: image timeouts must not be negative", s.JobID)
	}
	for _, h := range []struct {
		kind HookKind
		p    *HookPolicy
	}{{HookBefore, s.Before}, {HookAfter, s.After}} {
		if h.p == nil {
			continue
		}
		if h.p.Timeout <= 0 {
			return fmt.Errorf("job %s: %s hook timeout %s must be positive", s.JobID, h.kind, h.p.Timeout)
		}
		if h.p.OnFailure < PolicyWarn || h.p.OnFailure > PolicyExit {
			return fmt.Errorf("job %s: %s hook: %s", s.JobID, h.kind, h.p.OnFailure)
		}
	}
	return nil
}

func (s Spec) hook(k HookKind) *HookPolicy {
	if k == HookBefore {
		return s.Before
	}
	return s.After
}
