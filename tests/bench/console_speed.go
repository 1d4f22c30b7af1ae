package main

import (
	"crypto/sha256"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A virtual CPU can also run slow without being taken away: a neighbour on the host's
// other hyperthread, its caches or its memory bus, or a lower clock. Steal does not count
// that, and every process's CPU time then grows for the same work. (One full run on this
// host, before this figure was taken, had the supervisor at 34 % of a core for the system
// calls a second that cost it 17 % in the runs around it, with the feeder behind and 4.7 %
// steal; whether the host ran slow then is not known.) So the console scenario also times
// a fixed piece of work through each window, in CPU time of the thread that does it. The
// figure is absolute, to be compared with other runs on the same host (docs/console.md
// says what it is on a quiet one): a reference taken before the stream would not do,
// because an idle virtual CPU comes back to cold caches, and the same work timed at idle
// here varied from 0.16 to 0.44 ms. The scenario's own load is in the figure too.

// speedWorkBytes is the fixed work: SHA-256 of this many bytes, about 0.17 ms of one core
// here, so that timing it every stealEvery costs the bench 0.04 % of a core.
const speedWorkBytes = 256 << 10

type speedSample struct {
	at   time.Time
	cost time.Duration
}

// speedTrack is the cost of the fixed work, sampled through a window.
type speedTrack struct {
	buf []byte
	mu  sync.Mutex
	s   []speedSample
}

func newSpeedTrack() *speedTrack {
	buf := make([]byte, speedWorkBytes)
	for i := range buf {
		buf[i] = byte(i * 131)
	}
	return &speedTrack{buf: buf}
}

// threadCPU is the CPU time of the calling thread so far.
func threadCPU() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

// once does the work on one thread and returns the CPU time it took; ok is false if the
// thread's clock cannot be read.
func (t *speedTrack) once() (time.Duration, bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c0, err := threadCPU()
	if err != nil {
		return 0, false
	}
	sha256.Sum256(t.buf)
	c1, err := threadCPU()
	if err != nil || c1 <= c0 {
		return 0, false
	}
	return c1 - c0, true
}

func (t *speedTrack) add(now time.Time) {
	if c, ok := t.once(); ok {
		t.mu.Lock()
		t.s = append(t.s, speedSample{at: now, cost: c})
		t.mu.Unlock()
	}
}

// sample times the work every stealEvery until stop is closed.
func (t *speedTrack) sample(stop <-chan struct{}) {
	tick := time.NewTicker(stealEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-tick.C:
			t.add(now)
		}
	}
}

// cost returns the median, the 90th percentile and the least of the work's cost in
// [from, to] and how many timings there were; n is zero without any.
func (t *speedTrack) cost(from, to time.Time) (p50, p90, least time.Duration, n int) {
	if t == nil {
		return 0, 0, 0, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var d []time.Duration
	for _, s := range t.s {
		if !s.at.Before(from) && !s.at.After(to) {
			d = append(d, s.cost)
		}
	}
	if len(d) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(d)
	return d[len(d)/2], d[len(d)*9/10], d[0], len(d)
}

// note says what the fixed work cost in [from, to], for a note; empty if it was not
// measured.
func (t *speedTrack) note(from, to time.Time) string {
	p50, p90, least, n := t.cost(from, to)
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("the host's speed: a fixed piece of work (SHA-256 of %d KiB) took %s of CPU time (median of %d timings, one every %s; p90 %s, least %s; more on a slow host)",
		speedWorkBytes>>10, ms3(p50), n, stealEvery, ms3(p90), ms3(least))
}

// speedX is the window's median cost of the fixed work, for a log line.
func speedX(w window) string {
	p50, _, _, n := w.speed.cost(w.from, w.end())
	if n == 0 {
		return "unknown"
	}
	return ms3(p50)
}

// ms3 is a duration in milliseconds to the microsecond.
func ms3(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }
