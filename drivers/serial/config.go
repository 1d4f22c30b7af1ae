package serial

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/boardvisor/boardvisor/drivers/internal/tty"
	bugst "go.bug.st/serial"
	"golang.org/x/sys/unix"
)

// Defaults of a Config's zero fields.
const (
	DefaultName          = "serial"
	DefaultBaud          = 115200
	DefaultDataBits      = 8
	DefaultStopBits      = 1
	DefaultCheckInterval = time.Second
	DefaultWriteTimeout  = 10 * time.Second
)

// Config is a serial console's configuration. The zero value of each field but Device
// means its default.
type Config struct {
	// Name is the driver's name within its board (default "serial").
	Name string
	// Device is the absolute path of the tty, e.g. /dev/ttyUSB0, or a symlink to it
	// such as /dev/serial/by-id/... (recommended: it survives re-plugging).
	Device string
	// Baud is the line rate in bits per second (default 115200).
	Baud int
	// Parity is "none", "odd", "even", "mark" or "space" (default none).
	Parity string
	// DataBits is 5 to 8 (default 8).
	DataBits int
	// StopBits is 1 or 2 (default 1).
	StopBits int
	// CheckInterval is how often a running driver checks that Device still names the
	// device it opened (default 1s). Unplugging a USB adapter also hangs its tty up,
	// which is seen at once; the check covers a path that goes away or changes without
	// a hangup (a symlink re-pointed, a udev rename).
	CheckInterval time.Duration
	// WriteTimeout bounds one Write (default 10s): a device that does not drain its
	// output (flow control, a wedged adapter) fails the Write instead of blocking it.
	WriteTimeout time.Duration
	// Coalesce is how long Run lets an unattended console's bytes gather in the kernel
	// between two reads (see SetAttended): at 115200 baud bytes trickle in, every read
	// costs CPU, and a thousand consoles read in bursts cost a fraction of reading every
	// few bytes. It is capped so that the line rate cannot bring more than PendingBudget
	// bytes meanwhile (the tty layer's line discipline buffers 4 KiB; past it a pty
	// stalls its writer and a UART leans on the driver's flip buffers), so that no byte
	// is ever lost to coalescing: 250 ms stays 250 ms at 115200 baud, becomes 33 ms at
	// 921600. A read that brings PendingBudget bytes or more is followed by another at
	// once (the console is faster than the pause assumed). An attended console is read
	// without pause. Zero means DefaultCoalesce; negative turns it off.
	Coalesce time.Duration
}

// DefaultCoalesce is Config.Coalesce's default (chosen by measurement: see the console
// rows of make bench).
const DefaultCoalesce = 250 * time.Millisecond

// PendingBudget is how many bytes the line rate may bring during one coalescing pause:
// three quarters of the 4 KiB buffer of the kernel's line discipline (N_TTY_BUF_SIZE).
const PendingBudget = 3 * 1024

// Pause returns how long Run waits between two reads of an unattended console: Coalesce
// (with its default), capped so that the line rate brings at most PendingBudget bytes
// meanwhile; zero when coalescing is off.
func (c Config) Pause() time.Duration {
	c = c.withDefaults()
	if c.Coalesce <= 0 {
		return 0
	}
	bits := 1 + c.DataBits + c.StopBits // a start bit, the data bits, the stop bits
	if c.Parity != "none" {
		bits++
	}
	bytesPerSecond := float64(c.Baud) / float64(bits)
	capped := time.Duration(float64(PendingBudget) / bytesPerSecond * float64(time.Second))
	return min(c.Coalesce, capped)
}

// withDefaults returns c with its zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Coalesce == 0 {
		c.Coalesce = DefaultCoalesce
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Baud == 0 {
		c.Baud = DefaultBaud
	}
	if c.Parity == "" {
		c.Parity = "none"
	}
	if c.DataBits == 0 {
		c.DataBits = DefaultDataBits
	}
	if c.StopBits == 0 {
		c.StopBits = DefaultStopBits
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	return c
}

// Mode validates c (with its defaults applied) and returns its line settings as a
// go.bug.st/serial Mode. InitialStatusBits stays nil: modem lines are left alone (a pty
// has none, and setting them makes serial.Open fail there).
func (c Config) Mode() (bugst.Mode, error) {
	c = c.withDefaults()
	var m bugst.Mode
	if c.Device == "" {
		return m, fmt.Errorf("serial: device: required (e.g. /dev/ttyUSB0)")
	}
	if !filepath.IsAbs(c.Device) {
		return m, fmt.Errorf("serial: device: %q is not an absolute path", c.Device)
	}
	if c.Baud < 50 || c.Baud > 4000000 {
		return m, fmt.Errorf("serial %s: baud: %d is out of range (50 to 4000000)", c.Device, c.Baud)
	}
	if _, std := baudRates[c.Baud]; !std && !otherBaudSupported {
		return m, fmt.Errorf("serial %s: baud: %d is not a standard rate, and this architecture cannot set others", c.Device, c.Baud)
	}
	m.BaudRate = c.Baud
	switch c.Parity {
	case "none":
		m.Parity = bugst.NoParity
	case "odd":
		m.Parity = bugst.OddParity
	case "even":
		m.Parity = bugst.EvenParity
	case "mark":
		m.Parity = bugst.MarkParity
	case "space":
		m.Parity = bugst.SpaceParity
	default:
		return m, fmt.Errorf("serial %s: parity: unknown parity %q (want none, odd, even, mark or space)", c.Device, c.Parity)
	}
	if c.DataBits < 5 || c.DataBits > 8 {
		return m, fmt.Errorf("serial %s: data bits: %d is out of range (want 5 to 8)", c.Device, c.DataBits)
	}
	m.DataBits = c.DataBits
	switch c.StopBits {
	case 1:
		m.StopBits = bugst.OneStopBit
	case 2:
		m.StopBits = bugst.TwoStopBits
	default:
		return m, fmt.Errorf("serial %s: stop bits: %d is not 1 or 2", c.Device, c.StopBits)
	}
	return m, nil
}

// baudRates are the rates termios names with a Bnnn constant.
var baudRates = map[int]uint32{
	50: unix.B50, 75: unix.B75, 110: unix.B110, 134: unix.B134, 150: unix.B150,
	200: unix.B200, 300: unix.B300, 600: unix.B600, 1200: unix.B1200, 1800: unix.B1800,
	2400: unix.B2400, 4800: unix.B4800, 9600: unix.B9600, 19200: unix.B19200,
	38400: unix.B38400, 57600: unix.B57600, 115200: unix.B115200, 230400: unix.B230400,
	460800: unix.B460800, 500000: unix.B500000, 576000: unix.B576000,
	921600: unix.B921600, 1000000: unix.B1000000, 1152000: unix.B1152000,
	1500000: unix.B1500000, 2000000: unix.B2000000, 2500000: unix.B2500000,
	3000000: unix.B3000000, 3500000: unix.B3500000, 4000000: unix.B4000000,
}

// applyMode sets raw mode and m's line settings on the terminal fd.
func applyMode(fd int, m bugst.Mode) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	tty.MakeRaw(t)
	t.Cflag &^= unix.CSIZE
	t.Cflag |= map[int]uint32{5: unix.CS5, 6: unix.CS6, 7: unix.CS7, 8: unix.CS8}[m.DataBits]
	switch m.Parity {
	case bugst.OddParity:
		t.Cflag |= unix.PARENB | unix.PARODD
	case bugst.EvenParity:
		t.Cflag |= unix.PARENB
	case bugst.MarkParity:
		t.Cflag |= unix.PARENB | unix.PARODD | unix.CMSPAR
	case bugst.SpaceParity:
		t.Cflag |= unix.PARENB | unix.CMSPAR
	}
	if m.Parity != bugst.NoParity {
		t.Iflag |= unix.INPCK
	}
	if m.StopBits == bugst.TwoStopBits {
		t.Cflag |= unix.CSTOPB
	}
	if b, ok := baudRates[m.BaudRate]; ok {
		t.Cflag &^= unix.CBAUD
		t.Cflag |= b
		t.Ispeed, t.Ospeed = b, b
		return unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return err
	}
	return setOtherBaud(fd, m.BaudRate)
}
