package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manDate is the date the man pages carry (fixed, so that they are generated the same
// on every machine; `make man` writes them, a test checks they are current).
var manDate = time.Date(2026, time.December, 1, 0, 0, 0, 0, time.UTC)

// newGenMan is the hidden command that writes the man pages of every command
// (boardvisor.1, boardvisor-shell.1, ...) into a directory: `make man`.
func newGenMan() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "write the man pages of every command into DIR",
		Hidden: true,
		Args:   exactArgs(1, "a directory", ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true
			// The pages say what --help says: the environment, and the exit statuses.
			var walk func(c *cobra.Command)
			walk = func(c *cobra.Command) {
				c.Long = first(c.Long, c.Short) + "\n\n" + envSection(c)
				if !c.HasParent() {
					c.Long += "\n" + exitHelp + "\n"
				}
				for _, sub := range c.Commands() {
					walk(sub)
				}
			}
			walk(root)
			header := &doc.GenManHeader{Title: "BOARDVISOR", Section: "1", Source: "boardvisor", Manual: "boardvisor manual", Date: &manDate}
			if err := doc.GenManTree(root, header, args[0]); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			return nil
		},
	}
}
