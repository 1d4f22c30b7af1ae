package serial_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/internal/ptypair"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
)

// counter is an out callback that keeps what it gets and counts the calls (reads).
type counter struct {
	sink
	mu    sync.Mutex
	reads int
}

func newCounter() *counter { return &counter{sink: sink{more: make(chan struct{}, 1)}} }

func (c *counter) out(p []byte) {
	c.mu.Lock()
	c.reads++
	c.mu.Unlock()
	c.sink.out(p)
}

func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads
}

func TestPause(t *testing.T) {
	for _, tc := range []struct {
		cfg  serial.Config
		want time.Duration
	}{
		{serial.Config{Device: "/dev/x"}, serial.DefaultCoalesce},
		{serial.Config{Device: "/dev/x", Coalesce: -1}, 0},
		{serial.Config{Device: "/dev/x", Coalesce: time.Second, Baud: 9600}, time.Second},
		// 3 KiB at 921600 baud (92160 bytes/s) take 33.3 ms.
		{serial.Config{Device: "/dev/x", Coalesce: time.Second, Baud: 921600}, 3072 * time.Second / 92160},
		// 7E2 with parity: 11 bits a byte.
		{serial.Config{Device: "/dev/x", Coalesce: time.Second, Baud: 115200, DataBits: 7, Parity: "even", StopBits: 2}, 3072 * time.Second * 11 / 115200},
	} {
		if got := tc.cfg.Pause(); got != tc.want {
			t.Errorf("%+v: Pause() = %s, want %s", tc.cfg, got, tc.want)
		}
	}
	// At the default 115200 baud, the default is not capped: the bytes of one pause fit
	// the budget.
	if p := (serial.Config{Device: "/dev/x"}).Pause(); float64(p)/float64(time.Second)*11520 > serial.PendingBudget {
		t.Errorf("default pause %s brings more than %d bytes at 115200 baud", p, serial.PendingBudget)
	}
}

// An attended console is read at once: each chunk written to it reaches out before the
// next is written, although the console's pause, unattended, is minutes here; attending
// it cuts a pause under way short. At a descriptor number above 1024.
func TestAttendedConsoleForwardsEveryChunkAtOnce(t *testing.T) {
	p, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	raiseFDs(t, 1100)
	// At 50 baud the 3 KiB budget is 10 minutes: the pause is Coalesce itself.
	d := newDriver(t, serial.Config{Device: p.Path, Baud: 50, Coalesce: time.Hour})
	if d.Pause() < 10*time.Minute {
		t.Fatalf("pause %s, want at least 10 minutes for this test to mean anything", d.Pause())
	}
	c := newCounter()
	start(t, d, c.out)
	waitOpen(t, d)
	if fds := fdsOf(t, p.Path); len(fds) != 2 || max(fds[0], fds[1]) <= 1024 {
		t.Fatalf("the console's descriptors are %v, want one above 1024", fds)
	}
	write := func(s string) {
		t.Helper()
		if _, err := p.Master.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	// Unattended, a console quiet for a while that prints one byte has a rate of a few
	// bytes a second: the pause after that read is long (minutes), and what comes next
	// waits for it.
	time.Sleep(100 * time.Millisecond)
	write("x")
	c.waitForText(t, "x", 10*time.Second)
	write("y")
	// Attending it cuts the pause short: "y" comes now, not in minutes.
	d.SetAttended(true)
	c.waitForText(t, "xy", 10*time.Second)
	// Attended, every chunk is read as it comes: each before the next is written.
	want := "xy"
	for i := 0; i < 30; i++ {
		k := string(rune('a' + i%26))
		write(k)
		want += k
		c.waitForText(t, want, 10*time.Second)
	}
}

// Unattended, a console streaming at 115200 baud is read in a few large reads; attended,
// in many small ones as the bytes come. Meanwhile a third console, flooded as fast as the
// pty goes, is switched between the two modes over and over: not a byte is lost,
// doubled or reordered in any of them. At descriptor numbers above 1024.
func TestUnattendedReadsFewerLargerAndSwitchingLosesNothing(t *testing.T) {
	const paced = 11520 * 2 // two seconds at 115200 baud
	const flood = 4 << 20
	quiet := newBoard(t, "quiet", virtual.Options{RandomBytes: paced, Seed: 1})
	busy := newBoard(t, "busy", virtual.Options{RandomBytes: paced, Seed: 2})
	toggled := newBoard(t, "toggled", virtual.Options{Unpaced: true, RandomBytes: flood, Seed: 3})
	raiseFDs(t, 1100)

	run := func(b *virtual.Board, attended bool) (*serial.Driver, *counter) {
		d := newDriver(t, serial.Config{Device: b.Path()})
		d.SetAttended(attended)
		c := newCounter()
		start(t, d, c.out)
		waitOpen(t, d)
		// The board holds the pty's slave open too (below 1024); the driver's is the other.
		if fds := fdsOf(t, b.Path()); len(fds) != 2 || max(fds[0], fds[1]) <= 1024 {
			t.Fatalf("%s: the console's descriptors are %v, want one above 1024", b.Name(), fds)
		}
		return d, c
	}
	_, unattended := run(quiet, false)
	_, attended := run(busy, true)
	td, toggling := run(toggled, false)

	stop := make(chan struct{})
	toggles := make(chan int)
	go func() {
		n := 0
		defer func() { toggles <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(1+n%7) * time.Millisecond):
				td.SetAttended(n%2 == 0)
				n++
			}
		}
	}()
	for _, b := range []*virtual.Board{quiet, busy, toggled} {
		if err := b.On(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []struct {
		c    *counter
		n    int
		seed uint64
		name string
	}{{unattended, paced, 1, "unattended"}, {attended, paced, 2, "attended"}, {toggling, flood, 3, "switched"}} {
		x.c.waitFor(t, x.name+": all bytes", 60*time.Second, func(b []byte) bool { return len(b) >= x.n })
		if got := x.c.bytes(); !bytes.Equal(got, virtual.RandomData(x.seed, x.n)) {
			t.Errorf("%s console: %d bytes that differ from the %d sent", x.name, len(got), x.n)
		}
	}
	close(stop)
	n := <-toggles
	if n < 20 {
		t.Errorf("the mode was switched only %d times during the flood", n)
	}
	u, a := unattended.count(), attended.count()
	t.Logf("%d bytes at 115200 baud: %d reads unattended (%d bytes each), %d attended; flood of %d MiB read across %d mode switches in %d reads",
		paced, u, paced/max(u, 1), a, flood>>20, n, toggling.count())
	if u*4 > a {
		t.Errorf("unattended: %d reads for %d bytes; attended: %d; want at most a quarter as many", u, paced, a)
	}
	if paced/max(u, 1) < 1024 {
		t.Errorf("unattended: %d bytes a read on average, want at least 1 KiB", paced/max(u, 1))
	}
}

// A client may attend a console while its Run is still opening it (a watcher attaching
// as the supervisor starts): SetAttended then meets a registration the reader is still
// setting up. It must see it whole or not at all (go test -race tells; CI once caught
// the supervisor's TestStreamWatcherGetsEachEchoBeforeTheNextKeystroke on it), and the
// console still forwards what comes.
func TestSetAttendedWhileRunStarts(t *testing.T) {
	p, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for i := 0; i < 100; i++ {
		d := newDriver(t, serial.Config{Device: p.Path, Baud: 50, Coalesce: time.Hour})
		stop, flipped := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(flipped)
			for on := true; ; on = !on {
				select {
				case <-stop:
					d.SetAttended(true)
					return
				default:
					d.SetAttended(on)
				}
			}
		}()
		c := newCounter()
		r := start(t, d, c.out)
		waitOpen(t, d)
		close(stop)
		<-flipped
		k := string(rune('a' + i%26))
		if _, err := p.Master.WriteString(k); err != nil {
			t.Fatal(err)
		}
		c.waitForText(t, k, 10*time.Second)
		if err := r.stop(t); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
}

// An attended console is read apart from the readers' rounds: its bytes come while the
// reader of every console is held up in a round (here by another console's out, which
// blocks). Before the attended reader, an echo waited for the end of the round it came
// in: on the console bench, rounds of hundreds of consoles took up to 34 ms.
//
// And attending and unattending under a lock that out takes (as devices does: its
// watchers' lock) while the console streams never deadlocks, and loses no byte.
func TestAttendedConsoleIsReadApartFromTheRounds(t *testing.T) {
	// One reader for every console: the two below share its rounds.
	t.Cleanup(func(n int) func() { return func() { runtime.GOMAXPROCS(n) } }(runtime.GOMAXPROCS(1)))
	pa, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pa.Close() })
	pb, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pb.Close() })

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b := newDriver(t, serial.Config{Device: pb.Path})
	start(t, b, func(p []byte) {
		if bytes.Contains(p, []byte("!")) {
			once.Do(func() { close(held) })
			select {
			case <-release:
			case <-time.After(20 * time.Second):
			}
		}
	})
	var released sync.Once
	letGo := func() { released.Do(func() { close(release) }) }
	t.Cleanup(letGo)  // before b's Run is stopped
	var mu sync.Mutex // the lock SetAttended is called under, and out takes
	c := newCounter()
	a := newDriver(t, serial.Config{Device: pa.Path, Baud: 50, Coalesce: time.Hour})
	start(t, a, func(p []byte) {
		mu.Lock()
		defer mu.Unlock()
		c.out(p)
	})
	waitOpen(t, a)
	waitOpen(t, b)
	a.SetAttended(true)

	if _, err := pb.Master.WriteString("!"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("console b's out was not called within 10s")
	}
	// The reader is held in b's out: a's keystroke comes all the same.
	if _, err := pa.Master.WriteString("k"); err != nil {
		t.Fatal(err)
	}
	c.waitForText(t, "k", 5*time.Second)
	letGo()

	// Toggling attended under the lock out takes, while a streams.
	const lines = 2000
	want := "k"
	for i := range lines {
		want += fmt.Sprintf("line %04d\n", i)
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := pa.Master.WriteString(want[1:])
		wrote <- err
	}()
	for i := 0; i < 300; i++ {
		mu.Lock()
		a.SetAttended(i%2 == 0)
		mu.Unlock()
	}
	a.SetAttended(true)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	c.waitFor(t, "every streamed byte", 10*time.Second, func(got []byte) bool { return len(got) >= len(want) })
	if got := string(c.bytes()); got != want {
		t.Fatalf("console a's bytes differ from those written: %d bytes, want %d", len(got), len(want))
	}
}

// A console the attended reader let go is read by its own reader again: attended, its
// reader leaves it unarmed (only the attended reader wakes for its bytes), so that
// unattending it must hand it back.
func TestUnattendedAgainIsReadByItsReader(t *testing.T) {
	p, err := ptypair.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	d := newDriver(t, serial.Config{Device: p.Path, Coalesce: 50 * time.Millisecond})
	c := newCounter()
	start(t, d, c.out)
	waitOpen(t, d)
	want := ""
	for i := range 20 {
		d.SetAttended(true)
		k := fmt.Sprintf("attended %d\n", i)
		if _, err := p.Master.WriteString(k); err != nil {
			t.Fatal(err)
		}
		want += k
		c.waitForText(t, want, 10*time.Second)
		d.SetAttended(false)
		k = fmt.Sprintf("unattended %d\n", i)
		if _, err := p.Master.WriteString(k); err != nil {
			t.Fatal(err)
		}
		want += k
		c.waitForText(t, want, 10*time.Second)
	}
}
