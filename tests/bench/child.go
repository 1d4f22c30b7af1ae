package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/hashicorp/go-hclog"
)

// env is what every child scenario gets.
type env struct {
	bin    string // the boardvisor binary
	self   string // this binary
	dir    string // a scratch directory, removed by the parent
	result string
	flags  *flag.FlagSet
	rows   []Row
}

var children = map[string]func(e *env) error{
	"idle":        runIdle,
	"lease":       func(e *env) error { return runLease(e, false) },
	"lease-hooks": func(e *env) error { return runLease(e, true) },
	"hooklog":     runHookLog,
	"status":      runStatus,
	"console":     runConsole,
	"restart":     runRestart,
	"link":        runLink,
	"hookflood":   runHookFlood,
	"image":       runImage,
	"retention":   runRetention,
	"web":         runWeb,
	"fleet":       runFleet,
	// Helpers run by scenarios, not scenarios themselves.
	"farm":      runFarm,
	"forwarder": runForwarder,
	"hookprint": runHookPrint,
}

func childMain(args []string) int {
	if len(args) == 0 || children[args[0]] == nil {
		fmt.Fprintf(os.Stderr, "bench child: unknown scenario %q\n", strings.Join(args, " "))
		return 2
	}
	name := args[0]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	e := &env{flags: fs}
	fs.StringVar(&e.bin, "bin", "bin/boardvisor", "")
	fs.StringVar(&e.dir, "dir", os.TempDir(), "")
	fs.StringVar(&e.result, "result", "", "")
	cpuprofile := fs.String("cpuprofile", "", "")
	// Helper flags.
	fs.Int("n", 0, "")
	fs.Int64("bytes", 0, "")
	fs.Duration("every", 0, "")
	fs.Duration("delay", 0, "")
	fs.Duration("duration", 0, "")
	fs.String("ptys", "", "")
	fs.Bool("shell", false, "")
	fs.String("addr", "", "")
	// Console scenario.
	fs.Int("boards", ConsoleBoards, "")
	fs.Int("seconds", ConsoleSeconds, "")
	fs.String("baselines", ConsoleBaselines, "")
	fs.String("sweep", "", "")
	fs.String("keys", "", "")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	e.self, _ = os.Executable()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpuprofile:", err)
			return 1
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	err := children[name](e)
	if e.result != "" {
		b, _ := json.Marshal(e.rows)
		if werr := os.WriteFile(e.result, b, 0o644); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

func (e *env) intFlag(name string) int {
	v, _ := strconv.Atoi(e.flags.Lookup(name).Value.String())
	return v
}

func (e *env) int64Flag(name string) int64 {
	v, _ := strconv.ParseInt(e.flags.Lookup(name).Value.String(), 10, 64)
	return v
}

func (e *env) durFlag(name string) time.Duration {
	d, _ := time.ParseDuration(e.flags.Lookup(name).Value.String())
	return d
}

func (e *env) add(r Row) { e.rows = append(e.rows, r) }

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
}

// met returns a pointer for Row.Met.
func met(v bool) *bool { return &v }

// ratio formats a÷b.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a/b)
}

// latencies collects durations safely from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

// pct returns the p-th percentile (0..100) and the count.
func (l *latencies) pct(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// over returns how many durations exceed d.
func (l *latencies) over(d time.Duration) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.d {
		if x > d {
			n++
		}
	}
	return n
}

// last returns the latest duration added (0 if none).
func (l *latencies) last() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	return l.d[len(l.d)-1]
}

func (l *latencies) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// procStatus reads fields of /proc/PID/status ("VmRSS", "Threads", ...), in kB for sizes.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// pssKB reads a process's proportional set size (shared pages divided among sharers).
func pssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Pss:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}

// cpuTime returns the CPU time (user+system) a process used so far, from /proc/PID/stat.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// Fields after the command: state is f[0]; utime is field 14 of stat, f[11] here.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz
}

// conn is a SupervisorConnector for in-process scenarios: it keeps no events, and hands
// each to the callbacks set for it; it never blocks the outbox.
type conn struct {
	mu   sync.Mutex
	sup  connector.Supervisor
	run  chan struct{}
	once sync.Once
	// onEvent is called for every event (from the outbox actor); it must not block.
	onEvent func(ev connector.Event)
}

func newConn(onEvent func(connector.Event)) *conn {
	return &conn{run: make(chan struct{}), onEvent: onEvent}
}

func (c *conn) Run(ctx context.Context, sup connector.Supervisor) error {
	c.mu.Lock()
	c.sup = sup
	c.mu.Unlock()
	c.once.Do(func() { close(c.run) })
	<-ctx.Done()
	return ctx.Err()
}

func (c *conn) supervisor() connector.Supervisor {
	<-c.run
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sup
}

func (c *conn) StartJob(ctx context.Context, req connector.StartJobRequest) error {
	return c.supervisor().StartJob(ctx, req)
}

func (c *conn) StopJob(ctx context.Context, req connector.StopJobRequest) error {
	return c.supervisor().StopJob(ctx, req)
}

func (c *conn) UpdateJobState(ev connector.Event)    { c.onEvent(ev) }
func (c *conn) ReportJobError(ev connector.Event)    { c.onEvent(ev) }
func (c *conn) SendJobConsoleLog(ev connector.Event) { c.onEvent(ev) }
func (c *conn) UpdateEvent(ev connector.Event)       { c.onEvent(ev) }

// phases tells waiters when a job reaches a phase.
type phases struct {
	mu    sync.Mutex
	waits map[string]map[jobs.Phase]chan time.Time
}

func newPhases() *phases { return &phases{waits: map[string]map[jobs.Phase]chan time.Time{}} }

// expect returns a channel that receives the time job reaches p. Call before the job starts.
func (p *phases) expect(job string, ph ...jobs.Phase) []chan time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.waits[job]
	if m == nil {
		m = map[jobs.Phase]chan time.Time{}
		p.waits[job] = m
	}
	var out []chan time.Time
	for _, x := range ph {
		ch := make(chan time.Time, 1)
		m[x] = ch
		out = append(out, ch)
	}
	return out
}

func (p *phases) event(ev connector.Event) {
	if ev.Transition == nil {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	m := p.waits[ev.JobID]
	if m == nil {
		return
	}
	to := ev.Transition.To
	if ch := m[to]; ch != nil {
		ch <- now
		delete(m, to)
	}
	if to.Terminal() {
		// A lease that fails never reaches the phases still awaited: wake them.
		for ph, ch := range m {
			ch <- time.Time{}
			delete(m, ph)
		}
		delete(p.waits, ev.JobID)
	}
}

// inproc is a supervisor running in this process.
type inproc struct {
	sup    *supervisor.Supervisor
	cancel context.CancelFunc
	done   chan error
}

type inprocOpts struct {
	boards   []board.Config
	conn     connector.SupervisorConnector
	store    supervisor.Options
	exporter *exporter.Service
	sinks    []outbox.Sink
}

func startInproc(e *env, o inprocOpts) (*inproc, error) {
	opts := o.store
	opts.Boards, opts.Conn, opts.Exporter, opts.Sinks = o.boards, o.conn, o.exporter, o.sinks
	if opts.StateDir == "" {
		opts.StateDir = e.dir + "/state"
	}
	if len(opts.ShimCommand) == 0 {
		opts.ShimCommand, _ = jhook.ShimCommandNextTo(e.bin)
	}
	opts.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr, Name: "supervisor"})
	sup, err := supervisor.Start(opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &inproc{sup: sup, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- sup.Run(ctx) }()
	return p, nil
}

func (p *inproc) stop() error {
	p.cancel()
	select {
	case err := <-p.done:
		return err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("supervisor did not stop within 30s")
	}
}

func boardName(i int) string { return fmt.Sprintf("b%04d", i) }
