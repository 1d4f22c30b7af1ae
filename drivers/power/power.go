// Package power switches a board through configured shell commands: a PDU's CLI, a
// relay board, uhubctl for a USB hub, an IPMI tool.
//
// Each command runs as /bin/sh -c COMMAND with a timeout, in a process group of its own
// (the shell is its leader). At the timeout, or when the caller's context is done, the
// whole group gets SIGTERM, then after a short grace period SIGKILL, so nothing the
// command started survives it; members left behind by a command that exited are killed
// too. A failure is one line with the command's exit status and the tail of its output
// (stdout and stderr, last OutputTail bytes):
//
//	power on for board rpi4-01: command "pdu on 3" failed: exit status 3: pdu: outlet 3: no such outlet
//	power off for board rpi4-01: command "pdu off 3" timed out after 5s (killed)
//
// The command's environment is the daemon's, plus BOARD_NAME and POWER_ACTION (on, off,
// cycle).
package power

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/internal/procgroup"
	"github.com/boardvisor/boardvisor/drivers/internal/tail"
)

// Defaults of a Config's zero fields.
const (
	DefaultTimeout    = 30 * time.Second
	DefaultKillGrace  = 2 * time.Second
	DefaultCycleDelay = 2 * time.Second
	// OutputTail is how much of a command's output (its end) an error quotes.
	OutputTail = 2048
)

// Config configures a Controller. At least one of On, Off and Cycle is required.
type Config struct {
	// Board names the board in errors and in $BOARD_NAME.
	Board string
	// On, Off and Cycle are shell commands. Without Cycle, Cycle runs Off, waits
	// CycleDelay and runs On.
	On, Off, Cycle string
	// Timeout bounds each command (default 30s).
	Timeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL to a command's process group
	// (default 2s).
	KillGrace time.Duration
	// CycleDelay is the pause between Off and On when Cycle is not set (default 2s):
	// long enough for a board's capacitors to drain.
	CycleDelay time.Duration
	// Dir is the commands' working directory (default: the daemon's).
	Dir string
	// Env is added to the commands' environment ("KEY=value").
	Env []string
}

// Controller runs a board's power commands. It satisfies drivers.Power. Its methods are
// safe for concurrent use; they run one at a time (a second call waits for the first,
// bounded by its own context).
type Controller struct {
	cfg  Config
	turn chan struct{} // a token: whoever holds it runs a command
}

// New validates cfg and returns its controller.
func New(cfg Config) (*Controller, error) {
	if cfg.On == "" && cfg.Off == "" && cfg.Cycle == "" {
		return nil, fmt.Errorf("power for board %s: at least one of on, off or cycle is required", cfg.Board)
	}
	if cfg.Timeout < 0 || cfg.KillGrace < 0 || cfg.CycleDelay < 0 {
		return nil, fmt.Errorf("power for board %s: negative timeout, kill grace or cycle delay", cfg.Board)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	if cfg.CycleDelay == 0 {
		cfg.CycleDelay = DefaultCycleDelay
	}
	c := &Controller{cfg: cfg, turn: make(chan struct{}, 1)}
	c.turn <- struct{}{}
	return c, nil
}

var _ drivers.Power = (*Controller)(nil)

// On runs the on command.
func (c *Controller) On(ctx context.Context) error { return c.action(ctx, "on") }

// Off runs the off command.
func (c *Controller) Off(ctx context.Context) error { return c.action(ctx, "off") }

// Cycle runs the cycle command, or else the off command, a pause of CycleDelay and the
// on command.
func (c *Controller) Cycle(ctx context.Context) error { return c.action(ctx, "cycle") }

// ErrNotConfigured is wrapped by the error of an action that has no command.
var ErrNotConfigured = errors.New("not configured")

func (c *Controller) action(ctx context.Context, action string) error {
	select {
	case <-c.turn:
		defer func() { c.turn <- struct{}{} }()
	case <-ctx.Done():
		return fmt.Errorf("power %s for board %s: %w (waiting for another power command)", action, c.cfg.Board, ctx.Err())
	}
	switch action {
	case "on":
		return c.run(ctx, action, c.cfg.On)
	case "off":
		return c.run(ctx, action, c.cfg.Off)
	}
	if c.cfg.Cycle != "" {
		return c.run(ctx, action, c.cfg.Cycle)
	}
	if c.cfg.On == "" || c.cfg.Off == "" {
		return fmt.Errorf("power cycle for board %s: %w (set cycle, or both on and off)", c.cfg.Board, ErrNotConfigured)
	}
	if err := c.run(ctx, action, c.cfg.Off); err != nil {
		return err
	}
	t := time.NewTimer(c.cfg.CycleDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("power cycle for board %s: %w (between off and on: the board is off)", c.cfg.Board, ctx.Err())
	}
	return c.run(ctx, action, c.cfg.On)
}

// CommandError is the error of a power command that did not succeed.
type CommandError struct {
	// Board and Action ("on", "off", "cycle") say what was asked.
	Board, Action string
	// Command is the shell command.
	Command string
	// Err is the failure: an *exec.ExitError, a start error, or the context's error.
	Err error
	// TimedOut is set when the command ran past its Timeout and was killed.
	TimedOut bool
	// Timeout is the command's timeout.
	Timeout time.Duration
	// Output is the tail of the command's output, as one line ("" if none).
	Output string
}

// Error returns the failure as one line.
func (e *CommandError) Error() string {
	var what string
	switch {
	case e.TimedOut:
		what = fmt.Sprintf("timed out after %s (killed)", e.Timeout)
	case errors.Is(e.Err, context.Canceled), errors.Is(e.Err, context.DeadlineExceeded):
		what = fmt.Sprintf("interrupted (killed): %v", e.Err)
	default:
		what = fmt.Sprintf("failed: %v", e.Err)
	}
	s := fmt.Sprintf("power %s for board %s: command %q %s", e.Action, e.Board, e.Command, what)
	if e.Output != "" {
		s += ": " + e.Output
	}
	return s
}

// Unwrap returns Err.
func (e *CommandError) Unwrap() error { return e.Err }

// run runs one command to its end, its timeout or ctx's end.
func (c *Controller) run(ctx context.Context, action, command string) error {
	if command == "" {
		return fmt.Errorf("power %s for board %s: %w", action, c.cfg.Board, ErrNotConfigured)
	}
	out := tail.New(OutputTail)
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Dir = c.cfg.Dir
	cmd.Env = append(os.Environ(), "BOARD_NAME="+c.cfg.Board, "POWER_ACTION="+action)
	cmd.Env = append(cmd.Env, c.cfg.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A descendant that left the group but kept the output pipe open must not make Wait
	// hang once the shell is gone.
	cmd.WaitDelay = time.Second
	cerr := &CommandError{Board: c.cfg.Board, Action: action, Command: command, Timeout: c.cfg.Timeout}
	if err := cmd.Start(); err != nil {
		cerr.Err = fmt.Errorf("could not start: %w", err)
		return cerr
	}
	pgid := cmd.Process.Pid
	exited := make(chan struct{})
	var werr error
	go func() {
		werr = cmd.Wait()
		close(exited)
	}()
	timer := time.NewTimer(c.cfg.Timeout)
	defer timer.Stop()
	select {
	case <-exited:
		// The shell is gone; anything it left running in its group goes too.
		procgroup.Kill(pgid)
	case <-timer.C:
		cerr.TimedOut = true
		procgroup.Stop(pgid, c.cfg.KillGrace, exited)
		<-exited
	case <-ctx.Done():
		cerr.Err = ctx.Err()
		procgroup.Stop(pgid, c.cfg.KillGrace, exited)
		<-exited
	}
	if werr == nil && !cerr.TimedOut && cerr.Err == nil {
		return nil
	}
	if cerr.Err == nil {
		cerr.Err = werr
	}
	if cerr.TimedOut {
		cerr.Err = fmt.Errorf("%w after %s", context.DeadlineExceeded, c.cfg.Timeout)
	}
	cerr.Output = strings.TrimSpace(out.Line())
	return cerr
}
