package jobs

import "strconv"

// ExporterStatus is what a board is doing, as clients see it. The numbers are upstream
// Jumpstarter's jumpstarter.v1.ExporterStatus values.
type ExporterStatus int

// Exporter statuses, numbered as upstream.
const (
	StatusUnspecified           ExporterStatus = 0
	StatusOffline               ExporterStatus = 1
	StatusAvailable             ExporterStatus = 2
	StatusBeforeLeaseHook       ExporterStatus = 3
	StatusLeaseReady            ExporterStatus = 4
	StatusAfterLeaseHook        ExporterStatus = 5
	StatusBeforeLeaseHookFailed ExporterStatus = 6
	StatusAfterLeaseHookFailed  ExporterStatus = 7
)

// String returns the upstream name without its prefix, e.g. "LEASE_READY".
func (s ExporterStatus) String() string {
	switch s {
	case StatusUnspecified:
		return "UNSPECIFIED"
	case StatusOffline:
		return "OFFLINE"
	case StatusAvailable:
		return "AVAILABLE"
	case StatusBeforeLeaseHook:
		return "BEFORE_LEASE_HOOK"
	case StatusLeaseReady:
		return "LEASE_READY"
	case StatusAfterLeaseHook:
		return "AFTER_LEASE_HOOK"
	case StatusBeforeLeaseHookFailed:
		return "BEFORE_LEASE_HOOK_FAILED"
	case StatusAfterLeaseHookFailed:
		return "AFTER_LEASE_HOOK_FAILED"
	}
	return "ExporterStatus(" + strconv.Itoa(int(s)) + ")"
}

// Health says whether a board may be leased. State (ExporterStatus) says what is
// happening; health says whether it may happen. The numbers are boardvisor.v1.BoardHealth's.
type Health int

// Board health values.
const (
	HealthUnspecified Health = 0
	HealthGood        Health = 1 // may be leased
	HealthUnknown     Health = 2 // a driver is faulty or reconnecting; not leased until good
	HealthBad         Health = 3 // quarantined (a hook with onFailure: exit failed, or drivers keep failing)
	HealthMaintenance Health = 4 // taken out by an operator
)

// String returns "good", "unknown", "bad" or "maintenance".
func (h Health) String() string {
	switch h {
	case HealthUnspecified:
		return "unspecified"
	case HealthGood:
		return "good"
	case HealthUnknown:
		return "unknown"
	case HealthBad:
		return "bad"
	case HealthMaintenance:
		return "maintenance"
	}
	return "Health(" + strconv.Itoa(int(h)) + ")"
}

// Leasable reports whether a board with this health may take a new lease.
func (h Health) Leasable() bool { return h == HealthGood }
