// Package drivers holds the small interfaces behind which a board's I/O lives, and its
// subpackages implement them:
//
//   - serial: a console on a serial device (a USB-serial adapter, a UART, a pty);
//   - power: power control through configured shell commands (PDUs, relays, USB hubs);
//   - virtual: a simulated board on a pseudo-terminal, with a boot log and a login shell;
//   - qemu: a real emulated board (QEMU and its firmware) whose serial port is a pty;
//   - recording: the always-on recording of a board's console to files.
//
// A console driver (Console) has the method set of actors/driver.Driver, so the board
// actor runs it as a restartable child: Run reads until its context is done or the device
// fails. Power drivers (Power) are called, not run. This package imports nothing of
// boardvisor's, so actors may import it without a cycle.
package drivers

import (
	"context"
	"errors"
)

// Driver is one piece of board I/O that runs: the same method set as
// actors/driver.Driver, repeated here so that drivers need not import actors.
type Driver interface {
	// Name names the driver within its board, e.g. "serial".
	Name() string
	// Run does the driver's work until ctx is done (then it returns nil) or it fails (it
	// returns the error). Console bytes it reads go to out, one call per chunk; out owns
	// the slice it is given.
	Run(ctx context.Context, out func([]byte)) error
}

// Console is a board's console: Run reads it, Write types into it. Write is safe for
// concurrent use with Run and with other Writes; while Run is not running (before it
// starts, after it fails), Write fails with an error wrapping ErrNotOpen.
type Console interface {
	Driver
	// Write writes p to the board's console.
	Write(p []byte) (int, error)
}

// Power switches a board. Each call is bounded by ctx and by the driver's own timeout;
// a call that fails leaves the board in an unknown power state.
type Power interface {
	// On powers the board on; it is a no-op for a board that is on, where the driver
	// can tell.
	On(ctx context.Context) error
	// Off powers the board off.
	Off(ctx context.Context) error
	// Cycle powers the board off and on again.
	Cycle(ctx context.Context) error
}

// ErrNotOpen is wrapped by Console.Write when the console is not open.
var ErrNotOpen = errors.New("console not open")

// ErrNotSupported is wrapped by an operation the device does not support, such as a
// modem-control line on a pseudo-terminal.
var ErrNotSupported = errors.New("not supported")

// ErrDeviceAbsent is matched (errors.Is) by the failure of a driver whose device is not
// there: unplugged, or not plugged in yet. Such a failure is expected to heal: the
// board retries with back-off and keeps its health "unknown" instead of quarantining.
var ErrDeviceAbsent = errors.New("device absent")

// Absent marks err as a device-absent failure without changing its message.
func Absent(err error) error { return absentError{err} }

type absentError struct{ err error }

func (e absentError) Error() string        { return e.err.Error() }
func (e absentError) Unwrap() error        { return e.err }
func (e absentError) Is(target error) bool { return target == ErrDeviceAbsent }
