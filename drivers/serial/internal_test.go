package serial

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/internal/ptypair"
	"github.com/boardvisor/boardvisor/drivers/internal/tty"
	bugst "go.bug.st/serial"
	"golang.org/x/sys/unix"
)

// termiosOf reads the line settings of the terminal f.
func termiosOf(t *testing.T, f *os.File) *unix.Termios {
	t.Helper()
	var got *unix.Termios
	if err := tty.Control(f, func(fd int) (err error) {
		got, err = unix.IoctlGetTermios(fd, unix.TCGETS)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// termiosOfFD reads the line settings of the terminal descriptor fd.
func termiosOfFD(t *testing.T, fd int) *unix.Termios {
	t.Helper()
	got, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The line settings applied from a Mode are the ones go.bug.st/serial applies for the
// same Mode (on a pty, where its Open works at a low descriptor number).
func TestLineSettingsMatchGoBugStSerial(t *testing.T) {
	const cflagMask = unix.CBAUD | unix.CSIZE | unix.PARENB | unix.PARODD | unix.CMSPAR | unix.CSTOPB | unix.CRTSCTS | unix.CREAD | unix.CLOCAL
	const iflagMask = unix.INPCK | unix.IXON | unix.IXOFF | unix.ICRNL | unix.ISTRIP | unix.IGNBRK | unix.BRKINT
	const lflagMask = unix.ICANON | unix.ECHO | unix.ISIG | unix.IEXTEN
	for _, cfg := range []Config{
		{Baud: 115200},
		{Baud: 9600, Parity: "even", DataBits: 7, StopBits: 2},
		{Baud: 57600, Parity: "odd"},
		{Baud: 1500000, Parity: "mark", DataBits: 6},
		{Baud: 300, Parity: "space", DataBits: 5},
	} {
		ours, theirs := openPair(t), openPair(t)
		cfg.Device = ours.Path
		m, err := cfg.Mode()
		if err != nil {
			t.Fatal(err)
		}
		p, err := bugst.Open(theirs.Path, &m)
		if err != nil {
			t.Fatalf("go.bug.st/serial Open(%s, %+v): %v", theirs.Path, m, err)
		}
		p.Close()
		d, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		f, _, err := d.open()
		if err != nil {
			t.Fatal(err)
		}
		got := termiosOfFD(t, f)
		unix.Close(f)
		want := termiosOf(t, theirs.Slave)
		if got.Cflag&cflagMask != want.Cflag&cflagMask || got.Iflag&iflagMask != want.Iflag&iflagMask ||
			got.Lflag&lflagMask != want.Lflag&lflagMask || got.Oflag&unix.OPOST != want.Oflag&unix.OPOST {
			t.Errorf("%+v: ours cflag %#o iflag %#o lflag %#o oflag %#o; go.bug.st/serial's %#o %#o %#o %#o",
				m, got.Cflag&cflagMask, got.Iflag&iflagMask, got.Lflag&lflagMask, got.Oflag,
				want.Cflag&cflagMask, want.Iflag&iflagMask, want.Lflag&lflagMask, want.Oflag)
		}
	}
}

// A rate outside the Bnnn table is set with BOTHER.
func TestNonStandardBaud(t *testing.T) {
	if !otherBaudSupported {
		t.Skip("no termios2 on this architecture")
	}
	p := openPair(t)
	d, err := New(Config{Device: p.Path, Baud: 250000})
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := d.open()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(f)
	t2, err := unix.IoctlGetTermios(f, unix.TCGETS2)
	if err != nil {
		t.Fatal(err)
	}
	if t2.Cflag&unix.CBAUD != unix.BOTHER || t2.Ospeed != 250000 {
		t.Errorf("cflag baud %#o, ospeed %d; want BOTHER, 250000", t2.Cflag&unix.CBAUD, t2.Ospeed)
	}
}

func openPair(t *testing.T) *ptypair.Pair {
	t.Helper()
	p, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func TestIdentify(t *testing.T) {
	// A pty: not USB.
	p := openPair(t)
	link := filepath.Join(t.TempDir(), "console")
	if err := os.Symlink(p.Path, link); err != nil {
		t.Fatal(err)
	}
	id, err := Identify(link)
	if err != nil || id.USB || id.Device != p.Path || id.Path != link {
		t.Errorf("Identify(pty) = %+v, %v", id, err)
	}
	if _, err := Identify("/nonexistent/ttyUSB9"); err == nil {
		t.Error("Identify of a missing path succeeded")
	}

	// A USB-serial adapter, in a sysfs laid out as the kernel does it.
	sys := t.TempDir()
	usbDev := filepath.Join(sys, "devices/pci0000:00/usb1/1-1")
	iface := filepath.Join(usbDev, "1-1:1.0")
	port := filepath.Join(iface, "ttyUSB7")
	mustMkdir(t, port, filepath.Join(sys, "bus/usb-serial"), filepath.Join(sys, "class/tty/"+filepath.Base(p.Path)))
	mustSymlink(t, filepath.Join(sys, "bus/usb-serial"), filepath.Join(port, "subsystem"))
	mustSymlink(t, port, filepath.Join(sys, "class/tty", filepath.Base(p.Path), "device"))
	for name, v := range map[string]string{"idVendor": "0403", "idProduct": "6001", "serial": "A50285BI", "manufacturer": "FTDI", "product": "FT232R USB UART"} {
		if err := os.WriteFile(filepath.Join(usbDev, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := sysClassTTY
	sysClassTTY = filepath.Join(sys, "class/tty")
	defer func() { sysClassTTY = old }()
	id, err = Identify(link)
	if err != nil {
		t.Fatal(err)
	}
	want := Identity{Path: link, Device: p.Path, USB: true, VID: "0403", PID: "6001", SerialNumber: "A50285BI", Manufacturer: "FTDI", Product: "FT232R USB UART"}
	if id != want {
		t.Errorf("Identify = %+v, want %+v", id, want)
	}
	if s := id.String(); s != p.Path+" (USB 0403:6001 serial A50285BI)" {
		t.Errorf("String() = %q", s)
	}
}

func mustMkdir(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// The pause after a cycle fits the console's rate into the budget: a slow console gets
// the whole pause, a faster one shorter pauses each cycle, a flood none.
func TestNextPause(t *testing.T) {
	const max = 250 * time.Millisecond
	for _, tc := range []struct {
		bytes   int
		elapsed time.Duration
		want    time.Duration
	}{
		{0, time.Second, max},
		{1, 10 * time.Second, max},
		{2880, 250 * time.Millisecond, max}, // 115200 baud
		{4095 + 600, 250 * time.Millisecond, 250 * time.Millisecond * 3072 / 4695}, // the line discipline filled up
		{64 << 10, 10 * time.Millisecond, 0},                                       // a flood: read on
		{PendingBudget, 2 * time.Millisecond, 2 * time.Millisecond},                // exactly the budget
	} {
		if got := nextPause(max, tc.bytes, tc.elapsed); got != tc.want {
			t.Errorf("nextPause(%s, %d bytes, %s) = %s, want %s", max, tc.bytes, tc.elapsed, got, tc.want)
		}
	}
	// Cycle after cycle at a rate the pause cannot hold, the pause shrinks to nothing.
	p, cycles := max, 0
	for ; p > 0 && cycles < 100; cycles++ {
		p = nextPause(max, 4095+600, p) // each cycle: a full line discipline and a little more
	}
	if p != 0 || cycles > 30 {
		t.Errorf("a flood still pauses %s after %d cycles", p, cycles)
	}
}

// A reader's round gives its CPU up every yieldEvery consoles (the echo path's threads
// wait behind a long round otherwise; docs/console.md measures it), and not before.
func TestReadRoundYieldsEveryYieldEveryConsoles(t *testing.T) {
	r := &reader{}
	for _, tc := range []struct{ consoles, want int }{{0, 0}, {1, 0}, {yieldEvery, 0}, {yieldEvery + 1, 1}, {3*yieldEvery + 5, 3}} {
		ready := make([]*conn, tc.consoles)
		for i := range ready {
			ready[i] = &conn{gone: true} // a visit of a console gone is a no-op
		}
		if got := r.readRound(ready); got != tc.want {
			t.Errorf("a round of %d consoles yielded %d times, want %d", tc.consoles, got, tc.want)
		}
	}
}
