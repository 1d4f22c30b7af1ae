package virtual_test

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
)

// console reads a board through the serial driver, as the supervisor does.
type console struct {
	d      *serial.Driver
	mu     sync.Mutex
	buf    bytes.Buffer
	cancel context.CancelFunc
	done   chan error
}

func openConsole(t *testing.T, b *virtual.Board) *console {
	t.Helper()
	d, err := serial.New(serial.Config{Device: b.Path()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &console{d: d, cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- d.Run(ctx, func(p []byte) {
			c.mu.Lock()
			c.buf.Write(p)
			c.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-c.done; err != nil {
			t.Errorf("console Run: %v", err)
		}
	})
	return c
}

func (c *console) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *console) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(c.text(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console within %s; it shows:\n%s", s, timeout, c.text())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (c *console) send(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.d.Write([]byte(s))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
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

func TestBootLoginShell(t *testing.T) {
	b := newBoard(t, "rpi4-01", virtual.Options{})
	c := openConsole(t, b)
	ctx := context.Background()
	if b.Powered() {
		t.Fatal("a new board is on")
	}
	if err := b.On(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "U-Boot 2024.01", 2*time.Second)
	c.waitFor(t, "Booting Linux on physical CPU", 5*time.Second)
	c.waitFor(t, "rpi4-01 login: ", 5*time.Second)
	for _, step := range []struct{ in, want string }{
		{"alice\r", "alice\r\nPassword: "},
		{"hunter2\r", "root@rpi4-01:~# "},
		{"uname -a\r", "uname -a\r\nLinux rpi4-01 6.6.22-boardvisor #1 SMP PREEMPT"},
		{"echo hello  world\r", "hello world\r\nroot@rpi4-01:~# "},
		// Bytes that are not UTF-8 are echoed and printed as they were typed.
		{"echo \xff\xfe\x80 raw\r", "echo \xff\xfe\x80 raw\r\n\xff\xfe\x80 raw\r\n"},
		{"hostnamX\x7fe\r", "hostnamX\b \be\r\nrpi4-01\r\n"},
		{"frobnicate\r", "-sh: frobnicate: not found\r\n"},
		{"exit\r", "logout\r\n\r\nrpi4-01 login: "},
	} {
		c.send(t, step.in)
		c.waitFor(t, step.want, 5*time.Second)
	}
	if strings.Contains(c.text(), "hunter2") {
		t.Error("the password was echoed")
	}

	// Cycle boots again; Off stops the output.
	if err := b.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(c.text(), "U-Boot 2024.01") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no second boot after Cycle")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := b.Off(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Powered() {
		t.Error("Powered after Off")
	}
	time.Sleep(50 * time.Millisecond) // what was in flight
	n := len(c.text())
	c.send(t, "root\r")
	time.Sleep(200 * time.Millisecond)
	if m := len(c.text()); m != n {
		t.Errorf("the board wrote %q while off", c.text()[n:])
	}
}

// The output is paced to the baud rate: 10 bits a byte.
func TestPacing(t *testing.T) {
	const baud, n = 38400, 4800 // 3840 bytes/s: 1.25s
	b := newBoard(t, "slow", virtual.Options{Baud: baud, RandomBytes: n, Seed: 3})
	c := openConsole(t, b)
	start := time.Now()
	if err := b.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	for len(c.text()) < n {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("got %d of %d bytes in 10s", len(c.text()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	want := time.Duration(float64(n) / (baud / 10) * float64(time.Second))
	if elapsed < want*8/10 || elapsed > want*2 {
		t.Errorf("%d bytes at %d baud took %s, want about %s", n, baud, elapsed, want)
	}
	if c.text() != string(virtual.RandomData(3, n)) {
		t.Error("the paced data differs from RandomData")
	}
}

func TestBootDelay(t *testing.T) {
	b := newBoard(t, "slowboot", virtual.Options{Unpaced: true, BootDelay: 300 * time.Millisecond})
	c := openConsole(t, b)
	start := time.Now()
	if err := b.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "Starting kernel", 2*time.Second)
	c.waitFor(t, "login: ", 2*time.Second)
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("boot took %s, want at least the 300ms boot delay", d)
	}
}

func TestRandomDataIsDeterministic(t *testing.T) {
	whole := virtual.RandomData(9, 10000)
	r := virtual.NewRandom(9)
	var cut bytes.Buffer
	for _, n := range []int{1, 79, 80, 81, 1000, 8759} {
		p := make([]byte, n)
		r.Read(p)
		cut.Write(p)
	}
	if !bytes.Equal(whole, cut.Bytes()) {
		t.Fatal("the stream depends on how it is read")
	}
	if bytes.Equal(whole, virtual.RandomData(10, 10000)) {
		t.Fatal("two seeds give the same data")
	}
	for i, c := range whole {
		if (c < 0x20 || c > 0x7e) && c != '\n' {
			t.Fatalf("byte %d is %#x, not printable", i, c)
		}
	}
}

// Close stops every goroutine of the board, even with output pending that nobody reads,
// and the power methods then fail.
func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 5 {
		b, err := virtual.New("x", virtual.Options{Unpaced: true, RandomBytes: 10 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.On(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // the pty fills up: nobody reads it
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := b.On(context.Background()); !errors.Is(err, virtual.ErrClosed) {
			t.Errorf("On after Close: %v", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
