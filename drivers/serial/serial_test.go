package serial_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
	"golang.org/x/sys/unix"
)

// sink collects what a console driver reads.
type sink struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{} // signalled (non-blocking) on every chunk
}

func newSink() *sink { return &sink{more: make(chan struct{}, 1)} }

func (s *sink) out(p []byte) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
}

func (s *sink) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.buf.Bytes())
}

// waitFor waits until cond holds for what was read, failing the test after timeout.
func (s *sink) waitFor(t *testing.T, what string, timeout time.Duration, cond func([]byte) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for !cond(s.bytes()) {
		select {
		case <-s.more:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			b := s.bytes()
			t.Fatalf("timed out after %s waiting for %s; read %d bytes, ending %q", timeout, what, len(b), tailOf(b, 300))
		}
	}
}

func (s *sink) waitForText(t *testing.T, text string, timeout time.Duration) {
	t.Helper()
	s.waitFor(t, fmt.Sprintf("%q", text), timeout, func(b []byte) bool { return bytes.Contains(b, []byte(text)) })
}

func tailOf(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// running is a Run in a goroutine of the test.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, d *serial.Driver, out func([]byte)) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- d.Run(ctx, out) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the Run and returns its error (nil when it stopped on the cancel).
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for a later stop
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of its context being cancelled")
		return nil
	}
}

// wait waits for the Run to return by itself.
func (r *running) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %s", timeout)
		return nil
	}
}

func newBoard(t *testing.T, name string, opts virtual.Options) *virtual.Board {
	t.Helper()
	b, err := virtual.New(name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func newDriver(t *testing.T, cfg serial.Config) *serial.Driver {
	t.Helper()
	d, err := serial.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitOpen waits until the driver has the device open (Write stops failing with
// ErrNotOpen).
func waitOpen(t *testing.T, d *serial.Driver) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := d.Write(nil)
		if !errors.Is(err, drivers.ErrNotOpen) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the driver did not open its device within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Several MB go through a pty into the driver; every byte arrives in order, in what out
// gets and in the lease's recording.
func TestThroughputEveryByteInOrder(t *testing.T) {
	const n = 8 << 20
	board := newBoard(t, "flood", virtual.Options{Unpaced: true, RandomBytes: n, Seed: 42})
	d := newDriver(t, serial.Config{Device: board.Path()})

	state := t.TempDir()
	rec, err := recording.New(recording.Options{StateDir: state, Board: "flood"})
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Close()
	if _, err := rec.Write([]byte("before the lease\n")); err != nil {
		t.Fatal(err)
	}
	if err := rec.StartLease("lease-1"); err != nil {
		t.Fatal(err)
	}

	h := sha256.New()
	var mu sync.Mutex
	got := 0
	gotAll := make(chan struct{})
	var prev []byte
	out := func(p []byte) {
		mu.Lock()
		defer mu.Unlock()
		if prev != nil && &prev[0] == &p[0] {
			t.Error("out got the same buffer twice: the driver must hand out copies")
		}
		prev = p
		h.Write(p)
		if _, err := rec.Write(p); err != nil {
			t.Error(err)
		}
		got += len(p)
		if got == n {
			close(gotAll)
		}
	}
	r := start(t, d, out)
	waitOpen(t, d)
	began := time.Now()
	if err := board.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gotAll:
	case <-time.After(60 * time.Second):
		mu.Lock()
		t.Fatalf("got %d of %d bytes in 60s", got, n)
	}
	elapsed := time.Since(began)
	if err := r.stop(t); err != nil {
		t.Fatalf("Run returned %v after its context was cancelled, want nil", err)
	}
	if err := rec.EndLease("lease-1"); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(virtual.RandomData(42, n))
	mu.Lock()
	sum := h.Sum(nil)
	mu.Unlock()
	if !bytes.Equal(sum, want[:]) {
		t.Fatalf("the bytes read differ from the bytes sent (sha256 %x, want %x)", sum, want)
	}
	rc, err := recording.ReadLease(state, "flood", "lease-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rh := sha256.New()
	if m, err := io.Copy(rh, rc); err != nil || m != n {
		t.Fatalf("recording of the lease: %d bytes, %v; want %d", m, err, n)
	}
	if !bytes.Equal(rh.Sum(nil), want[:]) {
		t.Fatal("the lease's recording differs from the bytes sent")
	}
	t.Logf("%d MiB in %s (%.0f MiB/s)", n>>20, elapsed.Round(time.Millisecond), float64(n)/(1<<20)/elapsed.Seconds())
}

// raiseFDs fills the descriptor table with /dev/null until the lowest free descriptor
// is above min, for the rest of the test.
func raiseFDs(t *testing.T, min int) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < uint64(min)+64 {
		want := lim
		want.Cur = min64(max(uint64(min)+64, 4096), lim.Max)
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err != nil || want.Cur < uint64(min)+64 {
			t.Skipf("cannot raise RLIMIT_NOFILE to %d (hard limit %d): %v", min+64, lim.Max, err)
		}
		t.Cleanup(func() { _ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) })
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	// null stays open too: closing it would free a low descriptor.
	var fds []int
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		null.Close()
	})
	for {
		fd, err := unix.Dup(int(null.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
		if fd > min {
			return
		}
	}
}

func min64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

// fdsOf returns the descriptors of this process that are open on path.
func fdsOf(t *testing.T, path string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var fds []int
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || target != path {
			continue
		}
		fd, _ := strconv.Atoi(e.Name())
		fds = append(fds, fd)
	}
	return fds
}

// Consoles opened at descriptor numbers above 1024 read and write without a panic (the
// go.bug.st/serial Port.Read trap).
func TestDescriptorsAbove1024(t *testing.T) {
	login := newBoard(t, "rpi4-01", virtual.Options{Unpaced: true})
	flood := newBoard(t, "flood", virtual.Options{Unpaced: true, RandomBytes: 1 << 20, Seed: 7})
	raiseFDs(t, 1100)

	// A console with a login session.
	d := newDriver(t, serial.Config{Device: login.Path()})
	s := newSink()
	start(t, d, s.out)
	waitOpen(t, d)
	high := false
	for _, fd := range fdsOf(t, login.Path()) {
		high = high || fd > 1024
	}
	if !high {
		t.Fatalf("the console's descriptors are %v, want one above 1024", fdsOf(t, login.Path()))
	}
	if err := login.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.waitForText(t, "U-Boot 2024.01", 5*time.Second)
	s.waitForText(t, "rpi4-01 login: ", 5*time.Second)
	for _, step := range []struct{ in, want string }{
		{"root\r", "Password: "},
		{"secret\r", "root@rpi4-01:~# "},
		{"uname -a\r", "Linux rpi4-01 "},
	} {
		if _, err := d.Write([]byte(step.in)); err != nil {
			t.Fatal(err)
		}
		s.waitForText(t, step.want, 5*time.Second)
	}
	if _, err := d.ModemStatus(); !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("ModemStatus on a pty: %v, want an error wrapping ErrNotSupported", err)
	}
	if err := d.SetDTR(true); !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("SetDTR on a pty: %v, want an error wrapping ErrNotSupported", err)
	}
	if err := d.SendBreak(0); err != nil && !errors.Is(err, drivers.ErrNotSupported) {
		t.Errorf("SendBreak on a pty: %v", err)
	}

	// A console with a flood of data.
	d2 := newDriver(t, serial.Config{Device: flood.Path()})
	s2 := newSink()
	start(t, d2, s2.out)
	waitOpen(t, d2)
	if fds := fdsOf(t, flood.Path()); len(fds) != 2 || max(fds[0], fds[1]) <= 1024 {
		t.Fatalf("the flood console's descriptors are %v, want one above 1024", fds)
	}
	if err := flood.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2.waitFor(t, "1 MiB", 20*time.Second, func(b []byte) bool { return len(b) == 1<<20 })
	if !bytes.Equal(s2.bytes(), virtual.RandomData(7, 1<<20)) {
		t.Fatal("the flood arrived altered")
	}
}

// The device goes away while it is read (its path removed, or hung up) and comes back as
// another pty: Run fails naming the device, a Run while it is absent fails clearly, and
// the next Run reads the new device only. Bytes before and after are not mixed.
func TestUnplugAndReplug(t *testing.T) {
	for _, how := range []string{"path removed", "hangup"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			link := filepath.Join(dir, "ttyUSB0")
			const n = 256 << 10
			a := newBoard(t, "a", virtual.Options{Unpaced: true, RandomBytes: n, Seed: 1})
			if err := os.Symlink(a.Path(), link); err != nil {
				t.Fatal(err)
			}
			d := newDriver(t, serial.Config{Device: link, CheckInterval: 50 * time.Millisecond})

			before := newSink()
			r := start(t, d, before.out)
			waitOpen(t, d)
			if err := a.On(context.Background()); err != nil {
				t.Fatal(err)
			}
			before.waitFor(t, "board a's data", 20*time.Second, func(b []byte) bool { return len(b) >= n })

			// Unplug.
			switch how {
			case "path removed":
				if err := os.Remove(link); err != nil {
					t.Fatal(err)
				}
			case "hangup":
				a.Close()
				if err := os.Remove(link); err != nil {
					t.Fatal(err)
				}
			}
			err := r.wait(t, 5*time.Second)
			want := "serial " + link + ": device gone: "
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("Run after the unplug returned %v, want an error starting %q", err, want)
			}
			t.Logf("unplugged: %v", err)
			if _, werr := d.Write([]byte("x")); !errors.Is(werr, drivers.ErrNotOpen) || !strings.Contains(werr.Error(), "console not open") {
				t.Errorf("Write while unplugged: %v, want console not open", werr)
			}

			// While it is absent, a restart fails at once and clearly.
			err = d.Run(context.Background(), func([]byte) { t.Error("read from an absent device") })
			want = "serial " + link + ": device not present: "
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("Run with the device absent returned %v, want an error starting %q", err, want)
			}

			// Replug: another device at the same path.
			b := newBoard(t, "b", virtual.Options{Unpaced: true, RandomBytes: n, Seed: 2})
			if err := os.Symlink(b.Path(), link); err != nil {
				t.Fatal(err)
			}
			after := newSink()
			r2 := start(t, d, after.out)
			waitOpen(t, d)
			if err := b.On(context.Background()); err != nil {
				t.Fatal(err)
			}
			after.waitFor(t, "board b's data", 20*time.Second, func(b []byte) bool { return len(b) >= n })
			if err := r2.stop(t); err != nil {
				t.Fatalf("second Run: %v", err)
			}
			if !bytes.Equal(before.bytes(), virtual.RandomData(1, n)) {
				t.Error("the first Run read something else than board a's bytes")
			}
			if !bytes.Equal(after.bytes(), virtual.RandomData(2, n)) {
				t.Error("the second Run read something else than board b's bytes")
			}
		})
	}
}

// A symlink re-pointed at another device (no hangup) is noticed too.
func TestPathNowNamesAnotherDevice(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "console")
	a := newBoard(t, "a", virtual.Options{})
	b := newBoard(t, "b", virtual.Options{})
	if err := os.Symlink(a.Path(), link); err != nil {
		t.Fatal(err)
	}
	d := newDriver(t, serial.Config{Device: link, CheckInterval: 30 * time.Millisecond})
	r := start(t, d, func([]byte) {})
	waitOpen(t, d)
	tmp := link + ".new"
	if err := os.Symlink(b.Path(), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	err := r.wait(t, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "device gone: "+link+" now names another device") {
		t.Fatalf("Run returned %v, want device gone: now names another device", err)
	}
}

func TestRunErrors(t *testing.T) {
	d := newDriver(t, serial.Config{Device: "/dev/null"})
	err := d.Run(context.Background(), func([]byte) {})
	if err == nil || !strings.HasPrefix(err.Error(), "serial /dev/null: not a terminal device") {
		t.Errorf("Run on /dev/null: %v", err)
	}
	if _, err := d.Write([]byte("x")); err == nil || err.Error() != "serial /dev/null: console not open" {
		t.Errorf("Write before Run: %v", err)
	}
	// A cancelled context: nil, without opening.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := newDriver(t, serial.Config{Device: "/nonexistent"}).Run(ctx, nil); err != nil {
		t.Errorf("Run with a done context: %v, want nil", err)
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  serial.Config
		want string
	}{
		{serial.Config{}, "serial: device: required (e.g. /dev/ttyUSB0)"},
		{serial.Config{Device: "ttyUSB0"}, `serial: device: "ttyUSB0" is not an absolute path`},
		{serial.Config{Device: "/dev/x", Baud: 10}, "serial /dev/x: baud: 10 is out of range (50 to 4000000)"},
		{serial.Config{Device: "/dev/x", Parity: "n"}, `serial /dev/x: parity: unknown parity "n" (want none, odd, even, mark or space)`},
		{serial.Config{Device: "/dev/x", DataBits: 9}, "serial /dev/x: data bits: 9 is out of range (want 5 to 8)"},
		{serial.Config{Device: "/dev/x", StopBits: 3}, "serial /dev/x: stop bits: 3 is not 1 or 2"},
	} {
		if _, err := serial.New(tc.cfg); err == nil || err.Error() != tc.want {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	d := newDriver(t, serial.Config{Device: "/dev/x"})
	if m := d.Mode(); m.BaudRate != 115200 || m.DataBits != 8 || m.Parity != 0 || m.StopBits != 0 || m.InitialStatusBits != nil {
		t.Errorf("default mode %+v", m)
	}
	if d.Name() != "serial" {
		t.Errorf("default name %q", d.Name())
	}
}

// Concurrent writers: each Write's bytes arrive whole (the board echoes them).
func TestConcurrentWrites(t *testing.T) {
	board := newBoard(t, "w", virtual.Options{Unpaced: true})
	d := newDriver(t, serial.Config{Device: board.Path()})
	s := newSink()
	start(t, d, s.out)
	waitOpen(t, d)
	if err := board.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.waitForText(t, "w login: ", 5*time.Second)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			word := strings.Repeat(string(rune('a'+i)), 40)
			if _, err := d.Write([]byte(word)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	s.waitFor(t, "the echo", 5*time.Second, func(b []byte) bool {
		i := bytes.LastIndex(b, []byte("login: "))
		return len(b)-i-len("login: ") >= 320
	})
	b := s.bytes()
	echo := string(b[bytes.LastIndex(b, []byte("login: "))+len("login: "):])
	for i := range 8 {
		word := strings.Repeat(string(rune('a'+i)), 40)
		if !strings.Contains(echo, word) {
			t.Errorf("the echo %q lacks %q whole", echo, word)
		}
	}
}
