package main

import (
	"strings"
	"testing"
	"time"
)

// The window's figures are over the timings inside it only, and a missing track says
// nothing.
func TestSpeedTrackCost(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	us := func(n int) time.Duration { return time.Duration(n) * time.Microsecond }
	tr := &speedTrack{}
	// Before the window: one slow timing that must not count.
	tr.s = append(tr.s, speedSample{at: at(0), cost: us(900)})
	for i, c := range []int{200, 170, 180, 400, 190, 175, 185, 210, 195, 600} {
		tr.s = append(tr.s, speedSample{at: at(500 * (i + 1)), cost: us(c)})
	}
	p50, p90, least, n := tr.cost(at(500), at(5000))
	if n != 10 || p50 != us(195) || p90 != us(600) || least != us(170) {
		t.Fatalf("cost = p50 %v, p90 %v, least %v, n %d; want 195µs, 600µs, 170µs, 10", p50, p90, least, n)
	}
	if _, _, _, n := tr.cost(at(6000), at(7000)); n != 0 {
		t.Fatalf("a window without timings has %d", n)
	}
	got := tr.note(at(500), at(5000))
	for _, want := range []string{"SHA-256 of 256 KiB", "took 0.195 ms of CPU time (median of 10 timings, one every 500ms", "p90 0.600 ms, least 0.170 ms"} {
		if !strings.Contains(got, want) {
			t.Fatalf("note = %q, want it to say %q", got, want)
		}
	}
	if n := (*speedTrack)(nil).note(at(0), at(1)); n != "" {
		t.Fatalf("no track: note = %q", n)
	}
	if x := speedX(window{}); x != "unknown" {
		t.Fatalf("no track: speedX = %q", x)
	}
}

// The work is timed on this machine: a timing is there and is plausible (a thread's CPU
// clock that did not move would say nothing).
func TestSpeedTrackOnce(t *testing.T) {
	tr := newSpeedTrack()
	c, ok := tr.once()
	if !ok || c <= 0 || c > 5*time.Second {
		t.Fatalf("once = %v, %v", c, ok)
	}
}
