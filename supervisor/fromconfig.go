package supervisor

import (
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/lease"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/boardvisor/boardvisor/supervisor/devices"
)

// BoardsFromConfig turns a validated config into board configs, with each board's
// drivers from dev (nil: none).
func BoardsFromConfig(cfg *config.Config, dev *devices.Manager) []board.Config {
	var boards []board.Config
	for _, rb := range cfg.Resolve() {
		bc := board.Config{Name: rb.Name, Labels: rb.Labels, Queue: rb.Queue, LeaseDuration: rb.LeaseDuration,
			Before: leaseHook(rb.Before, rb.RunAs), After: leaseHook(rb.After, rb.RunAs),
			FetchTimeout: cfg.Images.FetchTimeout.Std(), ProvisionTimeout: cfg.Images.ProvisionTimeout.Std()}
		if dev != nil {
			if d := dev.Board(rb.Name); d != nil {
				bc.Drivers = d.Drivers
			}
			if dev.Images() != nil {
				bc.Images = dev
			}
		}
		boards = append(boards, bc)
	}
	return boards
}

func leaseHook(h *config.ResolvedHook, runAs *config.Credential) *lease.HookConfig {
	if h == nil {
		return nil
	}
	spec := jhook.Spec{Script: h.Script, Exec: h.Exec, Timeout: h.Policy.Timeout, Pipe: h.Pipe}
	if runAs != nil {
		spec.Credential = &jhook.Credential{UID: runAs.UID, GID: runAs.GID, Groups: runAs.Groups}
	}
	return &lease.HookConfig{Spec: spec, Policy: h.Policy}
}
