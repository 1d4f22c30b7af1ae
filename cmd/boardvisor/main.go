// Command boardvisor is the board-farm supervisor: one binary with subcommands for the
// daemons (supervise, coordinator), the board user (shell, power, console, logs, lease),
// the operator (status, board, supervisor, tokens, config) and the hook shim it runs
// hooks under (hook-shim, hidden).
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

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
		return exitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return int(ee)
	}
	fmt.Fprintf(os.Stderr, "boardvisor: %s\n", oneLine(err.Error()))
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code
	}
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") {
		return exitUsage
	}
	return exitFailed
}

type globalFlags struct {
	logLevel, logFormat string
}

// helpTemplate is cobra's, with the environment variables the command reads and, for
// the root, the exit statuses.
const helpTemplate = `{{with (or .Long .Short)}}{{. | trimTrailingWhitespaces}}

{{end}}{{if or .Runnable .HasSubCommands}}{{.UsageString}}{{end}}
{{envSection .}}{{if not .HasParent}}
` + exitHelp + `
{{end}}`

func newRoot() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "boardvisor",
		Short: "boardvisor supervises a lab host's boards: leases, hooks, consoles",
		Long: `boardvisor supervises a lab host's boards: leases, hooks, consoles.

Board users: boardvisor shell -l device=rpi4 leases a board and opens a shell with it;
boardvisor status lists the boards. Operators: boardvisor coordinator and boardvisor
supervise run the daemons (docs/operations.md); board, supervisor and tokens manage them.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionLine(),
	}
	cobra.AddTemplateFunc("envSection", envSection)
	root.SetHelpTemplate(helpTemplate)
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%s: %v (see %s --help)", c.CommandPath(), err, c.CommandPath())}
	})
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "", "log level of the daemons: trace, debug, info, warn, error (default: the config's, else info)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "", "log format of the daemons: text, json or auto (default: the config's, else auto: text on a terminal, JSON otherwise)")
	root.AddCommand(newSupervise(g), newCoordinator(g), newShell(), newDemo(g), newPower(), newConsole(), newLogs(), newStatus(),
		newLease(), newHookShim(), newImage(), newVersion(), newBoard(), newSupervisorCmd(), newTokens(), newConfigCmd(), newGenMan())
	return root
}

// newLogger returns the root logger. Flags win over the config's values; "auto" (the
// default) is text on a terminal and JSON otherwise (journald, log shippers).
func newLogger(g *globalFlags, cfgLevel, cfgFormat string) (hclog.Logger, error) {
	level, format := first(g.logLevel, cfgLevel, "info"), first(g.logFormat, cfgFormat, "auto")
	lv := hclog.LevelFromString(level)
	if lv == hclog.NoLevel {
		return nil, usageError{fmt.Errorf("unknown log level %q (want trace, debug, info, warn or error)", level)}
	}
	switch format {
	case "json", "text":
	case "auto":
		format = "json"
		if isTerminal(os.Stderr) {
			format = "text"
		}
	default:
		return nil, usageError{fmt.Errorf("unknown log format %q (want text, json or auto)", format)}
	}
	return hclog.New(&hclog.LoggerOptions{Name: "boardvisor", Level: lv, JSONFormat: format == "json", Output: os.Stderr}), nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// exactArgs is cobra.ExactArgs worded for a user: what the command needs, and how to
// find it.
func exactArgs(n int, what, hint string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) == n {
			return nil
		}
		msg := fmt.Sprintf("%s needs %s: %s", cmd.CommandPath(), what, cmd.UseLine())
		if len(args) > n {
			msg = fmt.Sprintf("%s takes %s, not %q: %s", cmd.CommandPath(), what, strings.Join(args, " "), cmd.UseLine())
		}
		if hint != "" {
			msg += " (" + hint + ")"
		}
		return usageError{errors.New(msg)}
	}
}

// noArgs is cobra.NoArgs worded for a user.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return usageError{fmt.Errorf("%s takes no arguments, not %q (see %s --help)", cmd.CommandPath(), strings.Join(args, " "), cmd.CommandPath())}
}
