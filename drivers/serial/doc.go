// Package serial is the console driver for a serial device: a USB-serial adapter
// (/dev/ttyUSB0, /dev/ttyACM0), an on-board UART (/dev/ttyS0, /dev/ttyAMA0), or a
// pseudo-terminal standing in for one (a simulated or emulated board, a test).
//
// A Driver reads the device continuously and hands every chunk to its out callback (see
// drivers.Console); clients type into the console with Write. When the device goes away
// (a USB unplug hangs the tty up, or its path disappears or comes to name another
// device) Run returns an error naming the device, and the board actor restarts it with
// back-off: each Run opens the path afresh, so bytes read before and after an unplug come
// from two separate opens and are never mixed.
//
// # What is used from go.bug.st/serial, and why reading does not go through it
//
// The project builds its serial support on go.bug.st/serial (v1.8.0). This package uses:
//
//   - its configuration types: Config.Mode validates a configuration into a
//     serial.Mode (BaudRate, DataBits, serial.Parity, serial.StopBits), and the line
//     settings are applied from that Mode;
//   - its serial.ModemStatusBits, as the answer of Driver.ModemStatus.
//
// It does not open, read or write ports through serial.Open / serial.Port, because of
// three measured traps (see STACK.md):
//
//   - Port.Read panics when the descriptor number is 1024 or more: it waits with
//     select(2) on a fixed-size fd_set. A host supervising hundreds of boards gets there.
//   - Modem-line calls fail with ENOTTY on a pseudo-terminal, and setting
//     Mode.InitialStatusBits makes Open itself fail on one.
//   - A Port hides its descriptor, so it cannot be put under Go's poller.
//
// The documented fallback: Run opens the device with os.OpenFile(path,
// O_RDWR|O_NOCTTY|O_NONBLOCK), so the *os.File is under Go's poller (reads at any
// descriptor number, read and write deadlines, Close unblocking a pending Read), and
// sets raw mode and the line settings of the Mode with TCGETS/TCSETS ioctls through
// SyscallConn().Control, which keeps the descriptor non-blocking (os.File.Fd would not).
// Rates outside the standard Bnnn table are set with TCSETS2/BOTHER where the
// architecture has it, and refused where it does not. Modem-line calls that fail with
// ENOTTY or EINVAL (a pty) report drivers.ErrNotSupported.
//
// Device identity (Identify) reads the device's USB attributes from sysfs, the way
// go.bug.st/serial/enumerator does, but for the one device asked about. The enumerator
// itself is not called: GetDetailedPortsList (through serial.GetPortsList) probes every
// /dev/ttyS* by opening it and applying a default 9600-baud mode, and termios settings
// belong to the tty, not to the descriptor: the probe would change the line settings of
// a console another board is reading on a ttyS port.
package serial
