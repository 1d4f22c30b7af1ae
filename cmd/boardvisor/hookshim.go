package main

import (
	"github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/spf13/cobra"
)

// newHookShim is the hidden subcommand the daemon runs each hook under (DESIGN.md §6).
func newHookShim() *cobra.Command {
	return &cobra.Command{
		Use:                "hook-shim --dir DIR --timeout D --grace D -- COMMAND...",
		Short:              "run one hook under a shim that outlives the daemon (internal)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			if code := hook.ShimMain(args); code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
}
