package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// `bench pool FILE...` pools the keys files of console runs (-console-keys): for each
// label (boardvisor, floor), the keys by the hypervisor's share of the 500 ms span each
// was typed in, with their p50, p90, p99 and the keys over 10 ms. One run's keys are too
// few for a p99 that one stall does not decide, so the tables of docs/console.md pool
// many runs; this is the command that makes them.

// poolBuckets are the steal buckets, in % of the CPUs: a key falls in the first whose
// bound its span's steal is under. Keys whose span is not known ("-") go in their own.
// The first is the rows' quiet spans (quietSteal).
var poolBuckets = []struct {
	name  string
	under float64
}{
	{fmt.Sprintf("under %.0f %%", quietSteal*100), quietSteal * 100},
	{"2-5 %", 5},
	{"5-10 %", 10},
	{"10 % or more", 1e9},
}

const stealUnknown = "steal not known"

// pooled is the round trips of one label, by bucket name.
type pooled map[string]map[string][]time.Duration

// readKeys adds the lines of a keys file to p: "LABEL MS STEAL", STEAL in % or "-".
// name is for errors.
func (p pooled) readKeys(r io.Reader, name string) error {
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return fmt.Errorf("%s:%d: want `LABEL MS STEAL`, got %q", name, n, line)
		}
		msv, err := strconv.ParseFloat(f[1], 64)
		if err != nil || msv < 0 {
			return fmt.Errorf("%s:%d: %q is not a round trip in milliseconds", name, n, f[1])
		}
		bucket := stealUnknown
		if f[2] != "-" {
			st, err := strconv.ParseFloat(f[2], 64)
			if err != nil || st < 0 {
				return fmt.Errorf("%s:%d: %q is not a steal in %% (or -)", name, n, f[2])
			}
			for _, b := range poolBuckets {
				if st < b.under {
					bucket = b.name
					break
				}
			}
		}
		if p[f[0]] == nil {
			p[f[0]] = map[string][]time.Duration{}
		}
		p[f[0]][bucket] = append(p[f[0]][bucket], time.Duration(msv*float64(time.Millisecond)))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// write prints one line per label and bucket that has keys, and one for all of a label's
// keys, in the percentiles latencies.pct gives.
func (p pooled) write(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "label\tsteal in the key's span\tkeys\tp50\tp90\tp99\tover 10 ms")
	labels := make([]string, 0, len(p))
	for l := range p {
		labels = append(labels, l)
	}
	slices.Sort(labels)
	row := func(label, bucket string, d []time.Duration) {
		l := latencies{d: d}
		slow := l.over(10 * time.Millisecond)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%d (%.1f%%)\n", label, bucket, len(d), ms(l.pct(50)), ms(l.pct(90)), ms(l.pct(99)),
			slow, 100*float64(slow)/float64(max(len(d), 1)))
	}
	for _, label := range labels {
		var all []time.Duration
		for _, b := range poolBuckets {
			if d := p[label][b.name]; len(d) > 0 {
				row(label, b.name, d)
				all = append(all, d...)
			}
		}
		if d := p[label][stealUnknown]; len(d) > 0 {
			row(label, stealUnknown, d)
			all = append(all, d...)
		}
		row(label, "all", all)
	}
	tw.Flush()
}

// poolMain is `bench pool FILE...`.
func poolMain(files []string) int {
	if len(files) == 0 {
		fmt.Fprintln(os.Stderr, "bench pool: name the keys files to pool (written by bench -console-keys FILE)")
		return 2
	}
	p := pooled{}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench pool: %v\n", err)
			return 1
		}
		err = p.readKeys(f, name)
		f.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "bench pool: %v\n", err)
			return 1
		}
	}
	p.write(os.Stdout)
	return 0
}
