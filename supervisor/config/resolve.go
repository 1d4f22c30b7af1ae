package config

import (
	"maps"
	"time"

	"github.com/boardvisor/boardvisor/drivers/qemu"
	"github.com/boardvisor/boardvisor/jobs"
)

// ResolvedBoard is a board with the host-wide defaults merged in: what the supervisor
// actually runs. Its pointers are copies: changing them does not change the Config.
type ResolvedBoard struct {
	// Name is the board's name.
	Name string
	// Labels are the board's labels (nil if it has none).
	Labels map[string]string
	// Before and After are the board's hooks; nil means none (not configured, or
	// disabled for this board).
	Before, After *ResolvedHook
	// Serial, Power, Virtual and QEMU are the board's drivers; nil means none of that kind.
	Serial  *Serial
	Power   *Power
	Virtual *Virtual
	QEMU    *QEMU
	// LeaseDuration bounds a lease whose StartJob carries no duration; always positive.
	LeaseDuration time.Duration
	// Queue is how many leases may wait for the board while it is busy.
	Queue int
	// RunAs is who the board's hooks run as; nil: the daemon's user.
	RunAs *Credential
}

// ResolvedHook is one hook to run: its command and its lifecycle policy.
type ResolvedHook struct {
	// Script is a shell script, or "" when Exec is set.
	Script string
	// Exec is the path of an executable, or "" when Script is set.
	Exec string
	// Policy is the hook's timeout and failure policy, as the lease lifecycle takes them.
	Policy jobs.HookPolicy
	// Pipe gives the hook a plain pipe instead of a pseudo-terminal (terminal: false).
	Pipe bool
}

// Resolve returns each board, in config order, with the defaults merged in (see
// Board.Effective). It is meant for a validated config.
func (c *Config) Resolve() []ResolvedBoard {
	out := make([]ResolvedBoard, len(c.Boards))
	for i, b := range c.Boards {
		out[i] = b.Effective(c.Defaults)
	}
	return out
}

// Effective merges the defaults d into board b:
//   - a hook the board sets replaces the default hook of the same name wholesale, and a
//     board hook with disabled: true removes the default one;
//   - a driver kind the board sets (serial, power, virtual) replaces the default of that
//     kind wholesale;
//   - leaseDuration and queue come from the board if set, else from d, else from
//     DefaultLeaseDuration and DefaultQueue.
//
// Values left at zero where a default exists get that default, so Effective gives usable
// values on a config that did not go through ApplyDefaults. It is meant for a validated
// config: an unknown onFailure falls back to warn.
func (b Board) Effective(d Defaults) ResolvedBoard {
	r := ResolvedBoard{
		Name:   b.Name,
		Labels: maps.Clone(b.Labels),
		Before: resolveHook(pick(b.Hooks.BeforeLease, d.Hooks.BeforeLease)),
		After:  resolveHook(pick(b.Hooks.AfterLease, d.Hooks.AfterLease)),
	}
	if s := pick(b.Drivers.Serial, d.Drivers.Serial); s != nil {
		cp := *s
		cp.applyDefaults()
		r.Serial = &cp
	}
	if p := pick(b.Drivers.Power, d.Drivers.Power); p != nil {
		cp := *p
		if cp.Timeout <= 0 {
			cp.Timeout = Duration(DefaultPowerTimeout)
		}
		r.Power = &cp
	}
	if v := pick(b.Drivers.Virtual, d.Drivers.Virtual); v != nil && b.Drivers.QEMU == nil {
		cp := *v
		r.Virtual = &cp
	}
	if q := b.Drivers.QEMU; q != nil {
		cp := *q
		r.QEMU = &cp
		// An emulated board says which images it runs (docs/images.md): its
		// emulator's architecture, unless its labels say otherwise.
		bin := q.Binary
		if bin == "" {
			bin = qemu.DefaultBinary
		}
		if a := qemu.Arch(bin); a != "" && r.Labels["arch"] == "" {
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			r.Labels["arch"] = a
		}
	}
	switch {
	case b.LeaseDuration > 0:
		r.LeaseDuration = b.LeaseDuration.Std()
	case d.LeaseDuration > 0:
		r.LeaseDuration = d.LeaseDuration.Std()
	default:
		r.LeaseDuration = DefaultLeaseDuration
	}
	if ra := pick(b.RunAs, d.RunAs); ra != nil {
		r.RunAs, _, _ = ra.resolve() // a validated config resolves
	}
	switch {
	case b.Queue != nil:
		r.Queue = *b.Queue
	case d.Queue != nil:
		r.Queue = *d.Queue
	default:
		r.Queue = DefaultQueue
	}
	return r
}

// pick returns the board's value if it sets one, else the default.
func pick[T any](board, def *T) *T {
	if board != nil {
		return board
	}
	return def
}

func resolveHook(h *Hook) *ResolvedHook {
	if h == nil || h.Disabled {
		return nil
	}
	r := &ResolvedHook{Script: h.Script, Exec: h.Exec, Pipe: h.Terminal != nil && !*h.Terminal}
	r.Policy.Timeout = h.Timeout.Std()
	if r.Policy.Timeout <= 0 {
		r.Policy.Timeout = jobs.DefaultHookTimeout
	}
	if h.OnFailure != "" {
		if p, err := jobs.ParsePolicy(h.OnFailure); err == nil {
			r.Policy.OnFailure = p
		}
	}
	return r
}
