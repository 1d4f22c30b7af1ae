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
//   - A Port hides its descriptor, so it cannot be waited for with the others.
//
// Run opens the device with open(2) (O_RDWR|O_NOCTTY|O_NONBLOCK) and sets raw mode and
// the line settings of the Mode with TCGETS/TCSETS ioctls. Rates outside the standard
// Bnnn table are set with TCSETS2/BOTHER where the architecture has it, and refused where
// it does not. Modem-line calls that fail with ENOTTY or EINVAL (a pty) report
// drivers.ErrNotSupported.
//
// # Reading: one reader for every console, adaptive
//
// The descriptor is not put under Go's poller either (STACK.md's first fallback): the
// poller registers it for input and output, edge triggered, and a tty reports itself
// writable at every wake-up of its wait queue, which comes with every chunk of input, so
// a thousand consoles woke the runtime's poller with every few bytes they received, even
// while nobody wanted to read them (make bench's console sweep measures the difference:
// about four times the CPU of reading the same consoles in rounds). Instead a few reader
// goroutines per process (reader.go, one per CPU up to 4) each own an epoll set: a console that is quiet
// or attended is armed for one EPOLLIN at a time (EPOLLONESHOT); one that streams while
// unattended is not armed at all during its pause, and is read when the pause ends, with
// the others due in the same 20 ms round. Descriptor numbers above 1024 are no concern
// (epoll, and poll(2) for a Write waiting for room). Cancelling Run removes the console
// from the reader (no read and no out call after that) and closes it; a Write waiting for
// room is woken then.
//
// An attended console (SetAttended: a client follows it, or typed into it lately) is read
// as soon as bytes come, and each chunk is handed on at once: by its reader, and by the
// attended reader (attended.go), a goroutine with an epoll set of its own that holds only
// the attended consoles, so that an echo does not wait for the end of a round of
// hundreds of unattended reads (TestAttendedConsoleIsReadApartFromTheRounds); its own
// reader leaves it unarmed meanwhile, and reads it again once it is let go. Both read
// under the console's lock and call out under it: each byte goes out once, in order,
// whichever reads it. An unattended one is read
// in bursts, Config.Pause apart (250 ms by default), so that its bytes gather in the
// kernel meanwhile: the pause is capped so that the line rate brings at most
// PendingBudget (3 KiB) of the line discipline's 4 KiB buffer, and shortened from cycle
// to cycle by the console's measured rate, so that no byte is lost or held back by it (on
// a pty a full buffer would stall the writer; on a UART the flip buffers would fill).
//
// Device identity (Identify) reads the device's USB attributes from sysfs, the way
// go.bug.st/serial/enumerator does, but for the one device asked about. The enumerator
// itself is not called: GetDetailedPortsList (through serial.GetPortsList) probes every
// /dev/ttyS* by opening it and applying a default 9600-baud mode, and termios settings
// belong to the tty, not to the descriptor: the probe would change the line settings of
// a console another board is reading on a ttyS port.
package serial
