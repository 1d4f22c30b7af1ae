package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// On a virtual machine the hypervisor runs other guests on the host's CPUs now and then,
// and a virtual CPU that it takes is stopped mid-slice: whatever runs on it, an echo's
// thread included, waits until it is given back. Linux counts that time as steal (the
// eighth figure of /proc/stat's cpu line). The console scenario samples it through each
// window, so that a run whose keys were slow while the hypervisor took the CPUs can be told
// from a slow path, as the floor row does for the host's own load.

// stealEvery is how often the steal is sampled. /proc/stat counts in hundredths of a
// second per CPU, so shorter spans would hold too few counts to say anything.
const stealEvery = 500 * time.Millisecond

// cpuSample is the host's cumulative CPU time at a moment, in /proc/stat's units.
type cpuSample struct {
	at           time.Time
	steal, total int64
}

// stealTrack is the host's steal sampled through a window, in time order.
type stealTrack struct {
	mu sync.Mutex
	s  []cpuSample
}

// parseCPUStat reads the steal and the total of /proc/stat's aggregate cpu line: user,
// nice, system, idle, iowait, irq, softirq, steal (guest time is already in user and
// nice). ok is false if the line is not there or too short (a kernel without steal
// accounting has seven figures).
func parseCPUStat(b []byte) (steal, total int64, ok bool) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i := 1; i <= 8; i++ {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil || n < 0 {
			return 0, 0, false
		}
		total += n
		if i == 8 {
			steal = n
		}
	}
	return steal, total, true
}

// add records the host's CPU time now; a /proc/stat that cannot be read or parsed adds
// nothing.
func (t *stealTrack) add(now time.Time) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return
	}
	if st, tot, ok := parseCPUStat(b); ok {
		t.mu.Lock()
		t.s = append(t.s, cpuSample{at: now, steal: st, total: tot})
		t.mu.Unlock()
	}
}

// sample adds a sample now and then every stealEvery until stop is closed, and one more
// then.
func (t *stealTrack) sample(stop <-chan struct{}) {
	t.add(time.Now())
	tick := time.NewTicker(stealEvery)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			t.add(time.Now())
			return
		case now := <-tick.C:
			t.add(now)
		}
	}
}

// between returns the share of the host's CPU time stolen from the last sample at or
// before from to the first after it at or after to (the span that covers [from, to]);
// ok is false if no samples cover it.
func (t *stealTrack) between(from, to time.Time) (share float64, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := -1
	for k, s := range t.s {
		if s.at.After(from) {
			break
		}
		i = k
	}
	if i < 0 {
		return 0, false
	}
	for j := i + 1; j < len(t.s); j++ {
		if !t.s[j].at.Before(to) {
			return stolen(t.s[i], t.s[j]), true
		}
	}
	return 0, false
}

// peak returns the highest share stolen over any one sampling span from from to to.
func (t *stealTrack) peak(from, to time.Time) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := 0.0
	for k := 1; k < len(t.s); k++ {
		if t.s[k].at.Before(from) || t.s[k-1].at.After(to) {
			continue
		}
		m = max(m, stolen(t.s[k-1], t.s[k]))
	}
	return m
}

func stolen(a, b cpuSample) float64 {
	if b.total <= a.total {
		return 0
	}
	return float64(b.steal-a.steal) / float64(b.total-a.total)
}

// at returns the share stolen in the sampling span in which t falls.
func (t *stealTrack) at(when time.Time) (float64, bool) {
	return t.between(when, when)
}

// note says how much of the CPUs the hypervisor took over [from, to], for a note;
// empty if the host does not say.
func (t *stealTrack) note(from, to time.Time) string {
	if t == nil {
		return ""
	}
	share, ok := t.between(from, to)
	if !ok {
		return ""
	}
	return fmt.Sprintf("the hypervisor took %.1f%% of the CPUs' time in the window (steal, /proc/stat; at most %.1f%% in a %s span)",
		share*100, t.peak(from, to)*100, stealEvery)
}

// keySteal is one key's round trip and the share of the CPUs the hypervisor took in the
// sampling span it was typed in (known is false where no span covers it).
type keySteal struct {
	d     time.Duration
	steal float64
	known bool
}

// withSteal returns every key's round trip with its span's steal, in the order they were
// recorded; with no track (t nil) no steal is known.
func (k *keystrokes) withSteal(t *stealTrack) []keySteal {
	k.lat.mu.Lock()
	defer k.lat.mu.Unlock()
	out := make([]keySteal, len(k.lat.d))
	for i, d := range k.lat.d {
		out[i].d = d
		if t != nil {
			out[i].steal, out[i].known = t.at(k.typed[i])
		}
	}
	return out
}

// slowNote says how much of the CPUs the hypervisor took while the keys over limit were
// typed, against the whole window, so that a run's slow keys can be laid at the host's
// door or not; empty when no key was over it or the host does not say.
func (k *keystrokes) slowNote(t *stealTrack, limit time.Duration, from, to time.Time) string {
	if t == nil {
		return ""
	}
	all, ok := t.between(from, to)
	if !ok {
		return ""
	}
	sum, n := 0.0, 0
	for _, ks := range k.withSteal(t) {
		if ks.d > limit && ks.known {
			sum, n = sum+ks.steal, n+1
		}
	}
	if n == 0 {
		return ""
	}
	what := fmt.Sprintf("the %d keys over %s were typed", n, limit)
	if n == 1 {
		what = fmt.Sprintf("the key over %s was typed", limit)
	}
	return fmt.Sprintf("%s while the hypervisor took %.1f%% of the CPUs on average (in the %s spans they fell in), against %.1f%% over the window",
		what, sum/float64(n)*100, stealEvery, all*100)
}

// quietSteal is the hypervisor's share of the CPUs under which a sampling span counts as
// quiet for quietNote. /proc/stat's hundredths make a span's figure coarse: one count is
// 1 % of a 500 ms span on 2 CPUs, so under 2 % is at most one count.
const quietSteal = 0.02

// quiet returns the round trips of the keys typed in sampling spans in which the
// hypervisor took less than below of the CPUs; keys whose span is not known are left out.
func (k *keystrokes) quiet(t *stealTrack, below float64) *latencies {
	q := &latencies{}
	for _, ks := range k.withSteal(t) {
		if ks.known && ks.steal < below {
			q.d = append(q.d, ks.d)
		}
	}
	return q
}

// quietNote gives the p99 and the keys over limit of the keys typed while the hypervisor
// took less than quietSteal of the CPUs, so that one run says what the path did on a
// quiet host; empty when the host does not say or no key was typed in a quiet span.
func (k *keystrokes) quietNote(t *stealTrack, limit time.Duration) string {
	q := k.quiet(t, quietSteal)
	if q.n() == 0 {
		return ""
	}
	slow := q.over(limit)
	return fmt.Sprintf("the %d of %d keys typed in %s spans in which the hypervisor took under %.0f%% of the CPUs: p99 %s, %d over %s (%.1f%%)",
		q.n(), k.lat.n(), stealEvery, quietSteal*100, ms(q.pct(99)), slow, limit, 100*float64(slow)/float64(q.n()))
}

// appendTo appends each key's round trip to the file name (nothing if name is empty),
// one a line: label, milliseconds, and the share of the CPUs the hypervisor took in the
// sampling span the key was typed in (in %, "-" where unknown), so that runs can be pooled.
func (k *keystrokes) appendTo(name, label string, t *stealTrack) error {
	if name == "" {
		return nil
	}
	var b strings.Builder
	for _, ks := range k.withSteal(t) {
		steal := "-"
		if ks.known {
			steal = fmt.Sprintf("%.1f", ks.steal*100)
		}
		fmt.Fprintf(&b, "%s %.3f %s\n", label, float64(ks.d)/float64(time.Millisecond), steal)
	}
	f, err := os.OpenFile(name, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// stealPct is the window's steal as a percentage, or "unknown".
func stealPct(w window) string {
	if w.steal == nil {
		return "unknown"
	}
	share, ok := w.steal.between(w.from, w.end())
	if !ok {
		return "unknown"
	}
	return fmt.Sprintf("%.1f%%", share*100)
}
