// Command boardvisor is the board-farm supervisor: one binary with subcommands for the
// daemon (supervise), and the hook shim it runs hooks under (hook-shim, hidden).
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ error }

func main() {
	os.Exit(run(os.Args[1:]))
}

// run executes the command line and returns the exit status. Errors reach the user as
// one line on stderr.
func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return int(ee)
	}
	fmt.Fprintf(os.Stderr, "boardvisor: %s\n", oneLine(err.Error()))
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "flag") {
		return 2
	}
	return 1
}

// exitError carries an exit status from a subcommand that already said what it had to.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

type globalFlags struct {
	logLevel, logFormat string
}

func newRoot() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "boardvisor",
		Short:         "boardvisor supervises a lab host's boards: leases, hooks, consoles",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "", "log level: trace, debug, info, warn, error (default: the config's, else info)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "", "log format: json or text (default: the config's, else json)")
	root.AddCommand(newSupervise(g), newCoordinator(g), newShell(), newDemo(g), newPower(), newConsole(), newLogs(), newStatus(), newLease(), newHookShim(), newImage())
	return root
}

// newLogger returns the root logger. Flags win over the config's values.
func newLogger(g *globalFlags, cfgLevel, cfgFormat string) (hclog.Logger, error) {
	level, format := first(g.logLevel, cfgLevel, "info"), first(g.logFormat, cfgFormat, "json")
	lv := hclog.LevelFromString(level)
	if lv == hclog.NoLevel {
		return nil, usageError{fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", level)}
	}
	if format != "json" && format != "text" {
		return nil, usageError{fmt.Errorf("unknown log format %q (want json or text)", format)}
	}
	return hclog.New(&hclog.LoggerOptions{Name: "boardvisor", Level: lv, JSONFormat: format == "json", Output: os.Stderr}), nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
