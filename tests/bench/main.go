// Command bench measures the figures of DESIGN.md §11 and prints them as one table
// (figure, value, target, baseline, ratio), also written as JSON. `make bench` builds it
// with the boardvisor binary and runs it.
//
// Each scenario runs in a child process of its own (this binary, run as `bench child
// SCENARIO`), so that its memory, CPU time, goroutines and descriptors are measured
// alone and a scenario that fails does not take the others with it. Every scenario is
// bounded in time and cleans up its processes; one that has to scale down says so in its
// row's note.
//
//	bench [-bin bin/boardvisor] [-out bin/bench-results.json] [-only idle,lease,...] [-profile DIR] [-fleet-duration 60s]
//	      [-console-boards 1000] [-console-seconds 30] [-console-baselines forwarder,ser2net,ser2net-4k] [-console-sweep 50ms,...] [-console-keys FILE]
//	bench pool FILE...    (the keys files of -console-keys, pooled by the steal of each key's span)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Row is one line of the table.
type Row struct {
	Figure   string  `json:"figure"`
	Value    string  `json:"value"`
	Num      float64 `json:"num"`
	Unit     string  `json:"unit"`
	Target   string  `json:"target"`
	Baseline string  `json:"baseline,omitempty"`
	// Ratio is how many times better than the baseline the value is, where there is a
	// baseline; else value ÷ target (a lower-is-better figure meets its target at a ratio
	// below 1, a higher-is-better one above 1; Met says whether it does).
	Ratio string `json:"ratio,omitempty"`
	Met   *bool  `json:"met,omitempty"`
	Note  string `json:"note,omitempty"`
}

// scenario is one child run. Its rows come back through a JSON file.
type scenario struct {
	name    string
	timeout time.Duration
	args    []string
}

var scenarios = []scenario{
	{name: "idle", timeout: 90 * time.Second},
	{name: "lease", timeout: 90 * time.Second},
	{name: "lease-hooks", timeout: 90 * time.Second},
	{name: "hooklog", timeout: 60 * time.Second},
	{name: "hookflood", timeout: 180 * time.Second},
	{name: "status", timeout: 60 * time.Second},
	{name: "console", timeout: 300 * time.Second},
	{name: "restart", timeout: 180 * time.Second},
	{name: "link", timeout: 60 * time.Second},
	{name: "image", timeout: 180 * time.Second},
	{name: "retention", timeout: 180 * time.Second},
	{name: "web", timeout: 240 * time.Second},
	{name: "fleet"}, // timeout and args from -fleet-duration
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		os.Exit(childMain(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "pool" {
		os.Exit(poolMain(os.Args[2:]))
	}
	bin := flag.String("bin", "bin/boardvisor", "the boardvisor binary to measure")
	out := flag.String("out", "bin/bench-results.json", "where to write the table as JSON")
	only := flag.String("only", "", "comma-separated scenarios to run (default all): "+names())
	profile := flag.String("profile", "", "directory for a CPU profile of each in-process scenario")
	fleetDuration := flag.Duration("fleet-duration", FleetDefaultDuration, "how long the fleet scenario's load runs (its baseline runs a quarter of it, at least 10s)")
	conBoards := flag.Int("console-boards", ConsoleBoards, "console scenario: pseudo-terminals, one of them the shell typed into")
	conSeconds := flag.Int("console-seconds", ConsoleSeconds, "console scenario: how long each run streams")
	conBaselines := flag.String("console-baselines", ConsoleBaselines, "console scenario: baseline runs (forwarder, ser2net, ser2net-4k; empty: none)")
	conSweep := flag.String("console-sweep", "", "console scenario: coalescing pauses to measure bare reads with, e.g. 50ms,100ms,200ms,500ms")
	conKeys := flag.String("console-keys", "", "console scenario: append each keystroke's echo round trip to this file, for pooling runs: `boardvisor MS` through boardvisor console, `floor MS` straight into a board's pty")
	flag.Parse()
	for i := range scenarios {
		if scenarios[i].name == "console" {
			scenarios[i].args = []string{"-boards", fmt.Sprint(*conBoards), "-seconds", fmt.Sprint(*conSeconds), "-baselines", *conBaselines, "-sweep", *conSweep, "-keys", *conKeys}
		}
		if scenarios[i].name == "fleet" {
			scenarios[i].args = []string{"-duration", fleetDuration.String()}
			scenarios[i].timeout = *fleetDuration*5/2 + 6*time.Minute // SQLite, its baseline, PostgreSQL
		}
	}
	absBin, err := filepath.Abs(*bin)
	if err == nil {
		_, err = os.Stat(absBin)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: boardvisor binary: %v (build it with `make build`)\n", err)
		os.Exit(1)
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	began := time.Now()
	loadBefore := loadAvg()
	var rows []Row
	for _, sc := range scenarios {
		if len(want) > 0 && !want[sc.name] {
			continue
		}
		fmt.Fprintf(os.Stderr, "== %s\n", sc.name)
		start := time.Now()
		rs, err := runChild(self, absBin, *profile, sc)
		if err != nil {
			fmt.Fprintf(os.Stderr, "== %s FAILED: %v\n", sc.name, err)
			rs = append(rs, Row{Figure: sc.name, Value: "error", Note: oneLine(err.Error())})
		}
		fmt.Fprintf(os.Stderr, "== %s done in %s\n", sc.name, time.Since(start).Round(100*time.Millisecond))
		rows = append(rows, rs...)
	}
	printTable(os.Stdout, rows)
	fmt.Printf("\n(%s, load average %s before and %s after; %s in all; ratio = times better than the baseline where one is given, else value÷target)\n",
		hostLine(), loadBefore, loadAvg(), time.Since(began).Round(time.Second))
	if *out != "" {
		err := os.MkdirAll(filepath.Dir(*out), 0o755)
		if err == nil {
			b, _ := json.MarshalIndent(map[string]any{"host": hostLine(), "load_before": loadBefore, "load_after": loadAvg(), "when": time.Now().UTC().Format(time.RFC3339),
				"seconds": time.Since(began).Seconds(), "rows": rows}, "", "  ")
			err = os.WriteFile(*out, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: write results:", err)
			os.Exit(1)
		}
		fmt.Printf("results written to %s\n", *out)
	}
}

func names() string {
	var n []string
	for _, s := range scenarios {
		n = append(n, s.name)
	}
	return strings.Join(n, ",")
}

// runChild runs one scenario in a child process and reads its rows.
func runChild(self, bin, profile string, sc scenario) ([]Row, error) {
	dir, err := os.MkdirTemp("", "boardvisor-bench-"+sc.name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	result := filepath.Join(dir, "result.json")
	args := []string{"child", sc.name, "-bin", bin, "-dir", dir, "-result", result}
	if profile != "" {
		if err := os.MkdirAll(profile, 0o755); err != nil {
			return nil, err
		}
		args = append(args, "-cpuprofile", filepath.Join(profile, sc.name+".cpu.pprof"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), sc.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, append(args, sc.args...)...)
	// Its own process group: whatever it leaves behind is killed with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc2 := bufio.NewScanner(pr)
		sc2.Buffer(make([]byte, 1<<20), 1<<20)
		for sc2.Scan() {
			fmt.Fprintf(os.Stderr, "   %s\n", sc2.Text())
		}
	}()
	err = cmd.Run()
	pw.Close()
	// Anything the child left in its group goes now.
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	var rows []Row
	if b, rerr := os.ReadFile(result); rerr == nil {
		if jerr := json.Unmarshal(b, &rows); jerr != nil && err == nil {
			err = jerr
		}
	} else if err == nil {
		err = fmt.Errorf("no result: %w", rerr)
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %s", sc.timeout)
	}
	return rows, err
}

func printTable(w io.Writer, rows []Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tvalue\ttarget\tbaseline\tratio\tmet\tnote")
	fmt.Fprintln(tw, "------\t-----\t------\t--------\t-----\t---\t----")
	for _, r := range rows {
		met := "-"
		if r.Met != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*r.Met]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Figure, r.Value, dash(r.Target), dash(r.Baseline), dash(r.Ratio), met, r.Note)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// loadAvg is the 1-minute load average: a busy machine (other builds and tests) makes
// the latency and CPU figures worse.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func hostLine() string {
	cpus := 0
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		cpus = strings.Count(string(b), "\nprocessor")
		if strings.HasPrefix(string(b), "processor") {
			cpus++
		}
	}
	return fmt.Sprintf("%d CPUs", cpus)
}
