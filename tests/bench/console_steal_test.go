package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseCPUStat(t *testing.T) {
	for _, c := range []struct {
		in           string
		steal, total int64
		ok           bool
	}{
		{"cpu  704648 3683 642670 11983149 31669 0 43570 67342 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n", 67342, 704648 + 3683 + 642670 + 11983149 + 31669 + 43570 + 67342, true},
		{"cpu  1 2 3 4 5 6 7 8\n", 8, 36, true},
		{"cpu  1 2 3 4 5 6 7\n", 0, 0, false},   // no steal accounting
		{"cpu0 1 2 3 4 5 6 7 8\n", 0, 0, false}, // not the aggregate line
		{"cpu  1 2 3 x 5 6 7 8\n", 0, 0, false},
		{"cpu  1 2 3 -4 5 6 7 8\n", 0, 0, false},
		{"", 0, 0, false},
	} {
		st, tot, ok := parseCPUStat([]byte(c.in))
		if st != c.steal || tot != c.total || ok != c.ok {
			t.Errorf("parseCPUStat(%q) = %d, %d, %v; want %d, %d, %v", c.in, st, tot, ok, c.steal, c.total, c.ok)
		}
	}
}

// A hypervisor that took a tenth of the CPUs in the second half-second only: the keys
// typed then are the slow ones, and the notes say so.
func TestStealTrackSharesAndSlowKeys(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tr := &stealTrack{s: []cpuSample{
		{at: at(0), steal: 0, total: 0},
		{at: at(500), steal: 0, total: 100},
		{at: at(1000), steal: 10, total: 200},
		{at: at(1500), steal: 10, total: 300},
	}}
	if s, ok := tr.between(at(0), at(1500)); !ok || s < 0.0333 || s > 0.0334 {
		t.Fatalf("between the whole track = %v, %v; want 10/300", s, ok)
	}
	if s, ok := tr.at(at(700)); !ok || s != 0.1 {
		t.Fatalf("at 700 ms = %v, %v; want 0.1", s, ok)
	}
	if s, ok := tr.at(at(500)); !ok || s != 0.1 {
		t.Fatalf("at a sample's own moment = %v, %v; want the span that starts there (0.1)", s, ok)
	}
	if _, ok := tr.at(at(1600)); ok {
		t.Fatal("a moment after the last sample has no span")
	}
	if _, ok := tr.at(at(-1)); ok {
		t.Fatal("a moment before the first sample has no span")
	}
	if p := tr.peak(at(0), at(1500)); p != 0.1 {
		t.Fatalf("peak = %v, want 0.1", p)
	}

	var k keystrokes
	k.record(at(100), 2*time.Millisecond)
	k.record(at(600), 15*time.Millisecond)
	k.record(at(900), 12*time.Millisecond)
	k.record(at(1200), 3*time.Millisecond)
	got := k.slowNote(tr, 10*time.Millisecond, at(0), at(1500))
	if !strings.Contains(got, "the 2 keys over 10ms were typed while the hypervisor took 10.0% of the CPUs on average (in the 500ms spans they fell in), against 3.3% over the window") {
		t.Fatalf("slowNote = %q", got)
	}
	var one keystrokes
	one.record(at(600), 15*time.Millisecond)
	if n := one.slowNote(tr, 10*time.Millisecond, at(0), at(1500)); !strings.HasPrefix(n, "the key over 10ms was typed while the hypervisor took 10.0%") {
		t.Fatalf("one slow key: slowNote = %q", n)
	}
	if n := (&keystrokes{}).slowNote(tr, 10*time.Millisecond, at(0), at(1500)); n != "" {
		t.Fatalf("no slow keys: slowNote = %q, want nothing", n)
	}
	if n := k.slowNote(nil, 10*time.Millisecond, at(0), at(1500)); n != "" {
		t.Fatalf("no track: slowNote = %q, want nothing", n)
	}
	if n := (*stealTrack)(nil).note(at(0), at(1500)); n != "" {
		t.Fatalf("no track: note = %q, want nothing", n)
	}
	if n := tr.note(at(0), at(1500)); !strings.Contains(n, "3.3% of the CPUs' time in the window") || !strings.Contains(n, "at most 10.0%") {
		t.Fatalf("note = %q", n)
	}
}

// Only the keys typed in spans under quietSteal count as quiet: the slow keys of the
// noisy span are left out, and so are keys typed where no span is known.
func TestQuietKeys(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tr := &stealTrack{s: []cpuSample{
		{at: at(0), steal: 0, total: 0},
		{at: at(500), steal: 1, total: 100},   // 1 %: quiet
		{at: at(1000), steal: 11, total: 200}, // 10 %
		{at: at(1500), steal: 13, total: 300}, // 2 %: not under it
	}}
	var k keystrokes
	k.record(at(100), 2*time.Millisecond)
	k.record(at(200), 11*time.Millisecond)
	k.record(at(600), 30*time.Millisecond)
	k.record(at(1200), 25*time.Millisecond)
	k.record(at(2000), 40*time.Millisecond) // after the last sample
	q := k.quiet(tr, quietSteal)
	if q.n() != 2 || q.pct(100) != 11*time.Millisecond {
		t.Fatalf("quiet keys = %v; want the two typed in the first span", q.d)
	}
	want := "the 2 of 5 keys typed in 500ms spans in which the hypervisor took under 2% of the CPUs: p99 2.00 ms, 1 over 10ms (50.0%)"
	if got := k.quietNote(tr, 10*time.Millisecond); got != want {
		t.Fatalf("quietNote = %q\nwant        %q", got, want)
	}
	if n := k.quietNote(nil, 10*time.Millisecond); n != "" {
		t.Fatalf("no track: quietNote = %q, want nothing", n)
	}
	var loud keystrokes
	loud.record(at(600), 30*time.Millisecond)
	if n := loud.quietNote(tr, 10*time.Millisecond); n != "" {
		t.Fatalf("no quiet key: quietNote = %q, want nothing", n)
	}
}

// The keys file carries each key's steal, "-" where it is not known.
func TestKeystrokesAppendTo(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tr := &stealTrack{s: []cpuSample{{at: t0, total: 0}, {at: t0.Add(stealEvery), steal: 5, total: 100}}}
	var k keystrokes
	k.record(t0.Add(time.Millisecond), 1500*time.Microsecond)
	k.record(t0.Add(time.Hour), 2*time.Millisecond)
	name := t.TempDir() + "/keys"
	if err := k.appendTo(name, "boardvisor", tr); err != nil {
		t.Fatal(err)
	}
	if err := k.appendTo(name, "floor", nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	want := "boardvisor 1.500 5.0\nboardvisor 2.000 -\nfloor 1.500 -\nfloor 2.000 -\n"
	if string(b) != want {
		t.Fatalf("keys file:\n%s\nwant:\n%s", b, want)
	}
}

// Pooling sorts each key into its steal bucket by label, keeps unknown spans apart, and
// refuses a line it cannot read with its file and line.
func TestPoolKeys(t *testing.T) {
	p := pooled{}
	in := "boardvisor 1.000 0.0\nboardvisor 12.500 1.9\nboardvisor 3.000 2.0\nboardvisor 30.000 15.0\n\nfloor 0.300 -\n"
	if err := p.readKeys(strings.NewReader(in), "k"); err != nil {
		t.Fatal(err)
	}
	if d := p["boardvisor"]["under 2 %"]; len(d) != 2 || d[1] != 12500*time.Microsecond {
		t.Fatalf("under 2 %%: %v", d)
	}
	if d := p["boardvisor"]["2-5 %"]; len(d) != 1 {
		t.Fatalf("2-5 %%: %v (2.0 is not under 2)", d)
	}
	if d := p["boardvisor"]["10 % or more"]; len(d) != 1 {
		t.Fatalf("10 %% or more: %v", d)
	}
	if d := p["floor"][stealUnknown]; len(d) != 1 {
		t.Fatalf("floor, steal not known: %v", d)
	}
	var b strings.Builder
	p.write(&b)
	rows := map[string]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			rows[f[0]+" "+strings.Join(f[1:len(f)-9], " ")] = strings.Join(f[len(f)-9:], " ")
		}
	}
	for row, want := range map[string]string{
		"boardvisor under 2 %":    "2 1.00 ms 1.00 ms 1.00 ms 1 (50.0%)",
		"boardvisor 10 % or more": "1 30.00 ms 30.00 ms 30.00 ms 1 (100.0%)",
		"boardvisor all":          "4 3.00 ms 12.50 ms 12.50 ms 2 (50.0%)",
		"floor steal not known":   "1 0.30 ms 0.30 ms 0.30 ms 0 (0.0%)",
	} {
		if rows[row] != want {
			t.Errorf("row %q = %q, want %q; table:\n%s", row, rows[row], want, b.String())
		}
	}
	for _, bad := range []string{"boardvisor 1.0\n", "boardvisor x 1.0\n", "boardvisor 1.0 y\n", "boardvisor -1 0\n"} {
		if err := (pooled{}).readKeys(strings.NewReader("floor 1 0\n"+bad), "k"); err == nil || !strings.HasPrefix(err.Error(), "k:2: ") {
			t.Errorf("%q: err = %v, want one naming k:2", bad, err)
		}
	}
}
