package serial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/internal/tty"
	bugst "go.bug.st/serial"
	"golang.org/x/sys/unix"
)

// ReadBufferSize is the size of the buffer Run reads into (reused between reads; out
// gets a copy of each chunk).
const ReadBufferSize = 32 * 1024

// Driver is a serial console. It satisfies drivers.Console (and so actors/driver.Driver).
// Run may be called again after it returns (the actor's restart); calls must not
// overlap. Write, ModemStatus, SetDTR, SetRTS and SendBreak are safe for concurrent use
// with Run and with each other.
type Driver struct {
	cfg   Config
	mode  bugst.Mode
	pause time.Duration // between reads of an unattended console (Config.Pause)

	// attended is set while someone interacts with the console (SetAttended): it is
	// read without pause. wake (capacity 1) ends a pause when it is set.
	attended atomic.Bool
	wake     chan struct{}

	running sync.Mutex // held by Run: one Run at a time
	mu      sync.Mutex // guards file
	file    *os.File   // the open device while Run runs, else nil
	writeMu sync.Mutex // serializes Writes, so that chunks from two writers never interleave
}

// New validates cfg and returns a driver for it. It does not open the device: Run does.
func New(cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	m, err := cfg.Mode()
	if err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, mode: m, pause: cfg.Pause(), wake: make(chan struct{}, 1)}, nil
}

// SetAttended says whether someone interacts with the console now (a client follows it,
// or typed into it lately): an attended console is read and handed on at once, each
// chunk as it comes; an unattended one is read in bursts, Config.Pause apart, so that
// its bytes gather in the kernel meanwhile. Switching to attended ends a pause at once.
// Safe for concurrent use; the order and integrity of the bytes never depend on it.
func (d *Driver) SetAttended(on bool) {
	if d.attended.Swap(on) != on && on {
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
}

// Attended reports what SetAttended last set.
func (d *Driver) Attended() bool { return d.attended.Load() }

// Pause returns how long Run waits between two reads while the console is unattended
// (Config.Pause of the driver's configuration).
func (d *Driver) Pause() time.Duration { return d.pause }

// Name returns the driver's name within its board (Config.Name, default "serial").
func (d *Driver) Name() string { return d.cfg.Name }

// Device returns the configured device path.
func (d *Driver) Device() string { return d.cfg.Device }

// Mode returns the line settings the driver applies.
func (d *Driver) Mode() bugst.Mode { return d.mode }

// Run opens the device, applies the line settings and reads until ctx is done (then it
// returns nil) or the device fails. Each chunk read goes to out as a fresh slice.
//
// The errors name the device: "serial /dev/ttyUSB0: device not present: ..." when the
// path does not exist (yet), "serial /dev/ttyUSB0: device gone: ..." when it goes away
// while open (hangup, EIO, ENXIO, the path removed or naming another device). Either way
// the caller is expected to call Run again later (with back-off).
func (d *Driver) Run(ctx context.Context, out func([]byte)) error {
	if !d.running.TryLock() {
		return d.errorf("already running")
	}
	defer d.running.Unlock()
	if err := ctx.Err(); err != nil {
		return nil
	}
	f, id, err := d.open()
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.file = f
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		d.file = nil
		d.mu.Unlock()
		_ = tty.Control(f, func(fd int) error { return unix.IoctlSetInt(fd, unix.TIOCNXCL, 0) })
		f.Close()
	}()

	// Cancelling ctx moves the read deadline to the past, which wakes a pending Read.
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	buf := make([]byte, ReadBufferSize)
	pause := time.NewTimer(time.Hour)
	pause.Stop()
	defer pause.Stop()
	// A cycle is a pause and the reads after it: its bytes over its length are the
	// console's rate, which sizes the next pause.
	cycleStart, cycleBytes := time.Now(), 0
	for {
		// Set the deadline before checking ctx: a cancel after the check moves the
		// deadline to the past after this line, so it cannot be lost.
		if err := f.SetReadDeadline(time.Now().Add(d.cfg.CheckInterval)); err != nil {
			return d.errorf("set read deadline: %w", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		n, err := f.Read(buf)
		if n > 0 {
			out(append([]byte(nil), buf[:n]...))
		}
		cycleBytes += n
		// Unattended and drained (a read of PendingBudget bytes or more says more is
		// waiting: read on at once): let the next bytes gather in the kernel rather
		// than waking for every few of them.
		if err == nil && d.pause > 0 && n < PendingBudget && !d.attended.Load() {
			now := time.Now()
			wait := nextPause(d.pause, cycleBytes, now.Sub(cycleStart))
			cycleStart, cycleBytes = now, 0
			// A stale wake-up (attended, then not again) must not cut this pause short.
			select {
			case <-d.wake:
			default:
			}
			if wait > 0 && !d.attended.Load() {
				pause.Reset(wait)
				select {
				case <-pause.C:
				case <-d.wake:
					pause.Stop()
				case <-ctx.Done():
					return nil
				}
			}
		}
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			if err := d.checkPath(id); err != nil {
				return err
			}
		case errors.Is(err, io.EOF):
			return drivers.Absent(d.errorf("device gone: hangup (end of file)"))
		case errors.Is(err, syscall.EIO), errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.ENODEV):
			return drivers.Absent(d.errorf("device gone: %w", unwrapPath(err)))
		default:
			return d.errorf("read: %w", unwrapPath(err))
		}
	}
}

// minPause is the shortest pause worth a timer: below it the console is read on at once.
const minPause = time.Millisecond

// nextPause sizes the pause after a cycle that brought bytes in elapsed: at most max, and
// short enough that the console's rate brings at most PendingBudget bytes meanwhile. A
// console faster than the line rate assumed (a burst, an emulator without pacing) thus
// gets shorter pauses each cycle, down to none; a slow one gets max.
func nextPause(max time.Duration, bytes int, elapsed time.Duration) time.Duration {
	if bytes <= 0 || elapsed <= 0 {
		return max
	}
	// PendingBudget / (bytes / elapsed), in integer arithmetic without overflow for
	// any elapsed below a few years.
	fit := time.Duration(float64(elapsed) * PendingBudget / float64(bytes))
	if fit < minPause {
		return 0
	}
	return min(max, fit)
}

// Write writes p to the device. It fails with an error wrapping drivers.ErrNotOpen when
// Run has not opened the device, and with os.ErrDeadlineExceeded after
// Config.WriteTimeout if the device does not take the bytes.
func (d *Driver) Write(p []byte) (int, error) {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	f := d.current()
	if f == nil {
		return 0, d.errorf("%w", drivers.ErrNotOpen)
	}
	if err := f.SetWriteDeadline(time.Now().Add(d.cfg.WriteTimeout)); err != nil {
		return 0, d.writeError(err)
	}
	n, err := f.Write(p)
	if err != nil {
		return n, d.writeError(err)
	}
	return n, nil
}

// ModemStatus returns the modem input lines (CTS, DSR, RI, DCD). On a device without
// modem lines (a pty) the error wraps drivers.ErrNotSupported.
func (d *Driver) ModemStatus() (bugst.ModemStatusBits, error) {
	var bits int
	err := d.control("modem status", func(fd int) (err error) {
		bits, err = unix.IoctlGetInt(fd, unix.TIOCMGET)
		return err
	})
	if err != nil {
		return bugst.ModemStatusBits{}, err
	}
	return bugst.ModemStatusBits{
		CTS: bits&unix.TIOCM_CTS != 0,
		DSR: bits&unix.TIOCM_DSR != 0,
		RI:  bits&unix.TIOCM_RI != 0,
		DCD: bits&unix.TIOCM_CD != 0,
	}, nil
}

// SetDTR raises or lowers DTR (many boards wire it to reset). On a device without modem
// lines the error wraps drivers.ErrNotSupported.
func (d *Driver) SetDTR(on bool) error { return d.setModemLine("DTR", unix.TIOCM_DTR, on) }

// SetRTS raises or lowers RTS. On a device without modem lines the error wraps
// drivers.ErrNotSupported.
func (d *Driver) SetRTS(on bool) error { return d.setModemLine("RTS", unix.TIOCM_RTS, on) }

func (d *Driver) setModemLine(name string, bit int, on bool) error {
	req := uint(unix.TIOCMBIC)
	if on {
		req = unix.TIOCMBIS
	}
	return d.control("set "+name, func(fd int) error { return unix.IoctlSetPointerInt(fd, req, bit) })
}

// SendBreak holds the line in the break condition for about dur (rounded to 100 ms
// steps, at least 100 ms; Linux SysRq over a console takes a break). It blocks for that
// long.
func (d *Driver) SendBreak(dur time.Duration) error {
	units := int((dur + 99*time.Millisecond) / (100 * time.Millisecond))
	units = max(units, 1)
	// TCSBRKP takes tenths of a second and sleeps in the kernel for that long.
	return d.control("send break", func(fd int) error { return unix.IoctlSetInt(fd, unix.TCSBRKP, units) })
}

// control runs an ioctl on the open device, mapping "no such ioctl here" to
// drivers.ErrNotSupported.
func (d *Driver) control(what string, fn func(fd int) error) error {
	f := d.current()
	if f == nil {
		return d.errorf("%s: %w", what, drivers.ErrNotOpen)
	}
	err := tty.Control(f, fn)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOTTY), errors.Is(err, syscall.EINVAL):
		return d.errorf("%s: %w by this device (%v)", what, drivers.ErrNotSupported, err)
	case errors.Is(err, os.ErrClosed):
		return d.errorf("%s: %w", what, drivers.ErrNotOpen)
	default:
		return d.errorf("%s: %w", what, err)
	}
}

func (d *Driver) current() *os.File {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.file
}

func (d *Driver) writeError(err error) error {
	if errors.Is(err, os.ErrClosed) {
		return d.errorf("%w", drivers.ErrNotOpen)
	}
	return d.errorf("write: %w", unwrapPath(err))
}

// deviceID says which device node Run opened, to notice its path naming another one.
type deviceID struct{ dev, ino, rdev uint64 }

// open opens the device and applies the mode.
func (d *Driver) open() (*os.File, deviceID, error) {
	f, err := os.OpenFile(d.cfg.Device, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, deviceID{}, drivers.Absent(d.errorf("device not present: %w", unwrapPath(err)))
	case errors.Is(err, syscall.EBUSY):
		return nil, deviceID{}, d.errorf("open: device busy (another program has it open exclusively): %w", unwrapPath(err))
	case err != nil:
		return nil, deviceID{}, d.errorf("open: %w", unwrapPath(err))
	}
	var st unix.Stat_t
	err = tty.Control(f, func(fd int) error {
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		if err := applyMode(fd, d.mode); err != nil {
			return err
		}
		// Like go.bug.st/serial: no other program may open the device while we have
		// it (root still can). Released before Close.
		if err := unix.IoctlSetInt(fd, unix.TIOCEXCL, 0); err != nil && !errors.Is(err, syscall.ENOTTY) {
			return err
		}
		return nil
	})
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.ENOTTY) {
			return nil, deviceID{}, d.errorf("not a terminal device: %w", err)
		}
		return nil, deviceID{}, d.errorf("configure: %w", err)
	}
	return f, deviceID{dev: st.Dev, ino: st.Ino, rdev: st.Rdev}, nil
}

// checkPath returns a "device gone" error if the configured path no longer names the
// device that was opened.
func (d *Driver) checkPath(id deviceID) error {
	var st unix.Stat_t
	err := unix.Stat(d.cfg.Device, &st)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return drivers.Absent(d.errorf("device gone: %s no longer exists", d.cfg.Device))
	case err != nil:
		return nil // cannot tell (e.g. EACCES on a directory); the read path will tell
	case (deviceID{dev: st.Dev, ino: st.Ino, rdev: st.Rdev}) != id:
		return drivers.Absent(d.errorf("device gone: %s now names another device", d.cfg.Device))
	}
	return nil
}

func (d *Driver) errorf(format string, a ...any) error {
	return fmt.Errorf("serial %s: "+format, append([]any{d.cfg.Device}, a...)...)
}

// unwrapPath drops the *fs.PathError wrapper (whose text repeats the path we already
// name) but keeps the operation.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
