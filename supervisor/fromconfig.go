package supervisor

import (
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/lease"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/supervisor/config"
)

// BoardsFromConfig turns a validated config into board configs. Notes are things an
// operator should know about (drivers that are configured but not run yet).
func BoardsFromConfig(cfg *config.Config) (boards []board.Config, notes []string) {
	for _, rb := range cfg.Resolve() {
		bc := board.Config{Name: rb.Name, Labels: rb.Labels, Queue: rb.Queue, LeaseDuration: rb.LeaseDuration,
			Before: leaseHook(rb.Before), After: leaseHook(rb.After)}
		for kind, on := range map[string]bool{"serial": rb.Serial != nil, "power": rb.Power != nil, "virtual": rb.Virtual != nil} {
			if on {
				notes = append(notes, "board "+rb.Name+": the "+kind+" driver is configured but drivers are not run yet (they land with the drivers issue)")
			}
		}
		boards = append(boards, bc)
	}
	return boards, notes
}

func leaseHook(h *config.ResolvedHook) *lease.HookConfig {
	if h == nil {
		return nil
	}
	return &lease.HookConfig{Spec: jhook.Spec{Script: h.Script, Exec: h.Exec, Timeout: h.Policy.Timeout}, Policy: h.Policy}
}
