package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "check a supervisor's config file", Args: noArgs}
	check := &cobra.Command{
		Use:   "check FILE",
		Short: "check a supervisor config as `boardvisor supervise` would, without starting anything",
		Long: `Check a supervisor config as boardvisor supervise reads it, without starting
anything: every problem is one line (file:line: board: field: problem); then what
supervise would find at start: whether the state directory can be made and written,
and whether the listen and metrics addresses are free (a warning: the running
supervisor may hold them).

Exit status: 0 the config is good (warnings may be printed), 1 it has problems,
2 the command line is wrong.`,
		Args: exactArgs(1, "a config file", "e.g. /etc/boardvisor/supervisor.yaml"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(args[0])
			if err != nil {
				var j interface{ Unwrap() []error }
				if errors.As(err, &j) {
					for _, e := range j.Unwrap() {
						fmt.Fprintln(os.Stderr, e.Error())
					}
				} else {
					fmt.Fprintln(os.Stderr, oneLine(err.Error()))
				}
				return exitError(exitFailed)
			}
			var problems []string
			if msg := stateDirProblem(cfg.StateDir); msg != "" {
				problems = append(problems, fmt.Sprintf("%s: stateDir: %s", cfg.Path, msg))
			}
			for _, p := range problems {
				fmt.Fprintln(os.Stderr, p)
			}
			if len(problems) > 0 {
				return exitError(exitFailed)
			}
			for what, addr := range map[string]string{"listen": cfg.Listen, "metrics": cfg.Metrics} {
				if addr == "" {
					continue
				}
				if l, err := net.Listen("tcp", addr); err != nil {
					fmt.Fprintf(os.Stderr, "%s: warning: %s: %s is not free now (%s): supervise will fail unless it is by then\n", cfg.Path, what, addr, lastPart(err.Error()))
				} else {
					l.Close()
				}
			}
			var names []string
			for _, b := range cfg.Boards {
				names = append(names, b.Name)
			}
			where := "no coordinator (embedded mode)"
			if co := cfg.Coordinator; co != nil {
				id := co.SupervisorID
				if id == "" {
					h, _ := os.Hostname()
					id = h + " (the host name)"
				}
				where = fmt.Sprintf("coordinator %s as supervisor %s", co.Address, id)
				if co.CAFile != "" {
					where += ", TLS"
				}
			}
			fmt.Printf("%s: good: %d board(s) (%s); state in %s; clients at %s; %s\n", cfg.Path, len(cfg.Boards),
				strings.Join(names, ", "), cfg.StateDir, cfg.Listen, where)
			return nil
		},
	}
	cmd.AddCommand(check)
	return cmd
}

// stateDirProblem says why the supervisor could not use dir ("" if it could): it must
// be a directory it can write, or be creatable under the nearest directory that exists.
func stateDirProblem(dir string) string {
	p := dir
	for {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				if p == dir {
					return dir + " is not a directory"
				}
				return fmt.Sprintf("%s cannot be created: %s is not a directory", dir, p)
			}
			if unix.Access(p, unix.W_OK|unix.X_OK) != nil {
				if p == dir {
					return dir + " is not writable by this user"
				}
				return fmt.Sprintf("%s cannot be created: %s is not writable by this user", dir, p)
			}
			return ""
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Sprintf("%s: %v", dir, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return dir + " cannot be created"
		}
		p = parent
	}
}
