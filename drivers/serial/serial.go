package serial

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
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
	// read without pause, and by the attended reader too (attended.go).
	attended atomic.Bool
	// attMu orders SetAttended with Run's registration and its end; attConn is the
	// registration SetAttended may give to the attended reader (nil while not running).
	attMu   sync.Mutex
	attConn *conn

	running sync.Mutex // held by Run: one Run at a time
	// fdMu guards fd: readers (Write, the ioctls) hold it shared while they use the
	// descriptor; Run takes it exclusively to close it.
	fdMu    sync.RWMutex
	fd      int        // the open device while Run runs, else -1
	stopFd  int        // an eventfd that wakes a Write waiting for room when Run ends
	writeMu sync.Mutex // serializes Writes, so that chunks from two writers never interleave
}

// New validates cfg and returns a driver for it. It does not open the device: Run does.
func New(cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	m, err := cfg.Mode()
	if err != nil {
		return nil, err
	}
	return &Driver{cfg: cfg, mode: m, pause: cfg.Pause(), fd: -1, stopFd: -1}, nil
}

// SetAttended says whether someone interacts with the console now (a client follows it,
// or typed into it lately): an attended console is read and handed on at once, each
// chunk as it comes; an unattended one is read in bursts, Config.Pause apart, so that
// its bytes gather in the kernel meanwhile. Switching to attended ends a pause at once.
// Safe for concurrent use; the order and integrity of the bytes never depend on it.
func (d *Driver) SetAttended(on bool) {
	d.attMu.Lock()
	defer d.attMu.Unlock()
	if d.attended.Swap(on) == on {
		return
	}
	c := d.attConn
	if c == nil {
		return
	}
	if !on {
		unattend(c)
		c.handBack()
		return
	}
	// Should the attended reader fail to take it (no descriptor left for its epoll
	// set), its own reader still reads it as bytes come (it arms it, see reader.read),
	// in its rounds.
	_ = attend(c)
	c.r.readNow(c) // a pause under way ends
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
// returns nil) or the device fails. Each chunk read goes to out as a fresh slice; out is
// called from the process's console reader (see reader), must not block, and is not
// called once Run has returned.
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
	fd, id, err := d.open()
	if err != nil {
		return err
	}
	stopFd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		closeDevice(fd)
		return d.errorf("eventfd: %w", err)
	}
	r, err := acquireReader()
	if err != nil {
		closeDevice(fd)
		unix.Close(stopFd)
		return d.errorf("console reader: %w", err)
	}
	defer releaseReader(r)
	c := newConn(r, fd, d, out, id)
	d.fdMu.Lock()
	d.fd, d.stopFd = fd, stopFd
	d.fdMu.Unlock()
	if err := r.add(c); err != nil {
		err = d.errorf("register with the console reader: %w", err)
		d.close(c)
		return err
	}
	defer d.close(c)
	d.attMu.Lock()
	d.attConn = c
	if d.attended.Load() {
		_ = attend(c) // as in SetAttended
	}
	d.attMu.Unlock()

	// The reader also checks, every CheckInterval, that the path still names the device.
	select {
	case <-ctx.Done():
		return nil
	case err := <-c.fail:
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
}

// close ends Run's registration (no read and no out call after it returns), wakes a
// Write waiting for room, and closes the device once no Write or ioctl uses it.
func (d *Driver) close(c *conn) {
	d.attMu.Lock()
	if d.attConn == c {
		unattend(c)
		d.attConn = nil
	}
	d.attMu.Unlock()
	c.r.remove(c)
	_, _ = unix.Write(d.stopFd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	d.fdMu.Lock()
	fd, stopFd := d.fd, d.stopFd
	d.fd, d.stopFd = -1, -1
	d.fdMu.Unlock()
	closeDevice(fd)
	unix.Close(stopFd)
}

// closeDevice gives up exclusive use of the device and closes it.
func closeDevice(fd int) {
	_ = unix.IoctlSetInt(fd, unix.TIOCNXCL, 0)
	unix.Close(fd)
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
// Run has not opened the device (or stops meanwhile), and with os.ErrDeadlineExceeded
// after Config.WriteTimeout if the device does not take the bytes.
func (d *Driver) Write(p []byte) (int, error) {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	d.fdMu.RLock()
	defer d.fdMu.RUnlock()
	fd := d.fd
	if fd < 0 {
		return 0, d.errorf("%w", drivers.ErrNotOpen)
	}
	deadline := time.Now().Add(d.cfg.WriteTimeout)
	written := 0
	for written < len(p) {
		n, err := unix.Write(fd, p[written:])
		if n > 0 {
			written += n
		}
		switch {
		case err == nil, errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.EAGAIN):
			// No room: wait until there is, the deadline passes or Run ends.
			left := time.Until(deadline)
			if left <= 0 {
				return written, d.errorf("write: %w", os.ErrDeadlineExceeded)
			}
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}, {Fd: int32(d.stopFd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, int((left+time.Millisecond-1)/time.Millisecond)); err != nil && !errors.Is(err, unix.EINTR) {
				return written, d.errorf("write: wait for room: %w", err)
			}
			if fds[1].Revents != 0 {
				return written, d.errorf("%w", drivers.ErrNotOpen)
			}
		default:
			return written, d.errorf("write: %w", err)
		}
	}
	return written, nil
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
	d.fdMu.RLock()
	defer d.fdMu.RUnlock()
	if d.fd < 0 {
		return d.errorf("%s: %w", what, drivers.ErrNotOpen)
	}
	err := fn(d.fd)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ENOTTY), errors.Is(err, syscall.EINVAL):
		return d.errorf("%s: %w by this device (%v)", what, drivers.ErrNotSupported, err)
	default:
		return d.errorf("%s: %w", what, err)
	}
}

// deviceID says which device node Run opened, to notice its path naming another one.
type deviceID struct{ dev, ino, rdev uint64 }

// open opens the device and applies the mode. The descriptor is non-blocking and stays
// off Go's poller: the process's console reader (see reader) waits for it instead.
func (d *Driver) open() (int, deviceID, error) {
	fd, err := unix.Open(d.cfg.Device, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, deviceID{}, drivers.Absent(d.errorf("device not present: open: %w", err))
	case errors.Is(err, unix.EBUSY):
		return -1, deviceID{}, d.errorf("open: device busy (another program has it open exclusively): %w", err)
	case err != nil:
		return -1, deviceID{}, d.errorf("open: %w", err)
	}
	var st unix.Stat_t
	err = func() error {
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
	}()
	if err != nil {
		unix.Close(fd)
		if errors.Is(err, syscall.ENOTTY) {
			return -1, deviceID{}, d.errorf("not a terminal device: %w", err)
		}
		return -1, deviceID{}, d.errorf("configure: %w", err)
	}
	return fd, deviceID{dev: st.Dev, ino: st.Ino, rdev: st.Rdev}, nil
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
