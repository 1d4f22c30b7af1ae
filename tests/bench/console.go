package main

import (
	"bufio"
	"context"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers/virtual"
)

// Console scenario: ConsoleBoards simulated boards in another process (the farm), each
// on a pseudo-terminal: all but one write ConsoleSeconds of random bytes at 115200 baud
// when powered on, the last one is a shell that echoes what is typed. The same ptys and
// the same feeder are read, one run after the other, by
//
//   - a trivial Go forwarder (pty -> TCP, a process of its own): the floor;
//   - ser2net from Debian (what labgrid uses), with its default buffers and with 4 KiB
//     ones, to TCP readers;
//   - the real path: a `boardvisor supervise` process with one serial board per pty,
//     its durable outbox (fsync), the gRPC link to a `boardvisor coordinator` process
//     storing the events in SQLite, and the console recordings; meanwhile keystrokes go
//     to the shell board through `boardvisor console` and their echo is timed.
//
// Each run measures the forwarder's CPU (from /proc) in the middle of the stream, and the
// feeder's own pace; the real path's bytes are compared per board at the coordinator
// (count and CRC-32C, from its database) and in the recordings. -boards, -seconds,
// -baselines and -sweep size the scenario (see `bench -h`).
const (
	ConsoleBoards  = 1000
	ConsoleSeconds = 30
	ConsoleBaud    = 115200
	// ConsoleBaselines are the baseline runs, in order.
	ConsoleBaselines = "forwarder,ser2net,ser2net-4k"
	// paceOK is the share of the line rate a feeder must reach for its run to count as
	// at the line rate.
	paceOK = 0.97
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// shellName is the shell board's name: the last board's (boardName(boards-1) in the
// supervisor's config); the virtual board prints it in its prompts.
var shellName = "shell"

// floorName is the second board of the shell board's process: one typed into straight
// through its pty, with nothing between, in the same runs, for the host's floor.
var floorName = "floor"

// consoleCount is what one board's reader got: bytes and their CRC-32C.
type consoleCount struct {
	n   int64
	crc uint32
}

// raiseNoFile raises the descriptor limit to its hard maximum.
func raiseNoFile() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// consoleSize is the scenario's size, from its flags.
type consoleSize struct {
	boards    int   // ptys in all, the shell board included
	streaming int   // boards writing random bytes (all but the shell)
	seconds   int   // how long each streams
	perBoard  int64 // bytes each streaming board writes
	baselines []string
	sweep     []time.Duration
}

func (s consoleSize) nominal() float64 { return float64(s.streaming) * ConsoleBaud / 10 }

func consoleSizeOf(e *env) (consoleSize, error) {
	s := consoleSize{boards: e.intFlag("boards"), seconds: e.intFlag("seconds")}
	if s.boards < 2 || s.seconds < 5 {
		return s, fmt.Errorf("console: -boards %d -seconds %d: want at least 2 boards and 5 seconds", s.boards, s.seconds)
	}
	s.streaming = s.boards - 1
	s.perBoard = int64(ConsoleBaud / 10 * s.seconds)
	for _, b := range strings.Split(e.flags.Lookup("baselines").Value.String(), ",") {
		if b = strings.TrimSpace(b); b != "" {
			s.baselines = append(s.baselines, b)
		}
	}
	for _, p := range strings.Split(e.flags.Lookup("sweep").Value.String(), ",") {
		if p = strings.TrimSpace(p); p != "" {
			d, err := time.ParseDuration(p)
			if err != nil || d <= 0 {
				return s, fmt.Errorf("console: -sweep %q: want durations such as 50ms,100ms", p)
			}
			s.sweep = append(s.sweep, d)
		}
	}
	return s, nil
}

func runConsole(e *env) error {
	raiseNoFile()
	// The scenario runs at FeederNice: the forwarders measured, their clients, the shell
	// board (the coordinator is put back at the default: it stands for another
	// machine). The streaming farm runs at FarmNice, the default, which is the kernel's
	// tty workers' too: they move every byte between the ptys, the echo's with the
	// rest. The boards stand for hardware, which takes no CPU from the host that reads
	// it; given the CPU first (FeederNice for the farm and the default for the rest),
	// they made every forwarder's echo wait behind their writes (echo p99 254 ms against
	// 62 ms at one priority for all, boardvisor, 2026-12-01), and at one priority the
	// farm outranked those kernel workers: pooled over three alternating runs each (569
	// keys), boardvisor's echo p50 2.76 -> 2.22 ms, p90 7.9 -> 6.3 ms, p99 21.3 -> 14.8
	// ms, keys over 10 ms 33 -> 15 with the farm at the default (2026-12-02). Below the
	// forwarders, the farm is read more often in smaller pieces by those that read as
	// soon as a byte comes (ser2net, the trivial forwarder), which costs them more, and
	// it may fall behind the line rate while the trivial forwarder runs (the row says
	// so): see docs/console.md.
	renice(os.Getpid(), FeederNice)
	size, err := consoleSizeOf(e)
	if err != nil {
		return err
	}
	f, err := startFeeders(e, size)
	if err != nil {
		return err
	}
	defer f.close()
	if len(f.paths) < size.boards {
		logf("SCALED DOWN: only %d of %d simulated boards could be made (%s)", len(f.paths), size.boards, f.note)
		size.boards = len(f.paths)
		size.streaming = size.boards - 1
		if size.boards < 2 {
			return fmt.Errorf("console: the farm made %d boards: %s", size.boards, f.note)
		}
	}
	scaled := ""
	if size.boards < ConsoleBoards {
		scaled = fmt.Sprintf("%d boards (of %d); ", size.boards, ConsoleBoards)
	}
	var base []*baseline
	for _, name := range size.baselines {
		if err := f.flush(); err != nil {
			return err
		}
		b, err := runBaseline(e, f, size, name)
		if err != nil {
			logf("console baseline %s: %v", name, err)
			e.add(Row{Figure: "console baseline: " + baselineTitle(name), Value: "skipped", Note: oneLine(err.Error())})
			continue
		}
		base = append(base, b)
	}
	if err := f.flush(); err != nil {
		return err
	}
	full, err := runFullPath(e, f, size)
	if err != nil {
		return err
	}
	full.rows(e, size, scaled, base)
	for _, p := range size.sweep {
		for _, driver := range []bool{false, true} {
			if err := f.flush(); err != nil {
				return err
			}
			if err := runSweep(e, f, size, p, driver); err != nil {
				logf("console sweep %s: %v", p, err)
			}
		}
	}
	return nil
}

// FeederNice is the nice value of the console scenario (the forwarders, their clients
// and the shell board); FarmNice that of the streaming boards' process (the feeder).
const (
	FeederNice = -10
	FarmNice   = 0
)

// renice sets the nice value of every thread of a process (Linux keeps it per thread;
// threads made later inherit it from the thread that makes them).
func renice(pid, nice int) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return
	}
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			_ = syscall.Setpriority(syscall.PRIO_PROCESS, tid, nice)
		}
	}
}

// farm is a child process holding simulated boards: the streaming ones, and (in a
// process of its own, shell) the shell board typed into, so that its echo does not wait
// behind a thousand boards' pacing timers: a real board echoes in its own hardware.
type farm struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	rd    *bufio.Reader
	paths []string // the streaming boards', then the shell board's
	floor string   // the floor board's pty (shell process only: floorName)
	note  string
	pid   int
	mu    sync.Mutex
	shell *farm
}

// startFeeders starts the streaming farm and the shell board's process.
func startFeeders(e *env, size consoleSize) (*farm, error) {
	f, err := startFarm(e, size.streaming, size.perBoard, false)
	if err != nil {
		return nil, err
	}
	sh, err := startFarm(e, 2, 0, true)
	if err == nil && len(sh.paths) != 2 {
		sh.close()
		err = fmt.Errorf("the shell boards' process gave %d ptys, want 2", len(sh.paths))
	}
	if err != nil {
		f.close()
		return nil, err
	}
	f.shell = sh
	f.paths = append(f.paths, sh.paths[0])
	f.floor = sh.paths[1]
	return f, nil
}

func startFarm(e *env, n int, perBoard int64, shell bool) (*farm, error) {
	cmd := exec.Command(e.self, "child", "farm", "-n", strconv.Itoa(n), "-bytes", strconv.FormatInt(perBoard, 10), "-shell="+strconv.FormatBool(shell))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// The streaming farm at the kernel workers' priority, the shell board at the
	// scenario's (see runConsole). The feeder's pace is checked in every run.
	if shell {
		renice(cmd.Process.Pid, FeederNice)
	} else {
		renice(cmd.Process.Pid, FarmNice)
	}
	f := &farm{cmd: cmd, in: in, rd: bufio.NewReader(out), pid: cmd.Process.Pid}
	for {
		line, err := f.rd.ReadString('\n')
		if err != nil {
			f.close()
			return nil, fmt.Errorf("farm: %w", err)
		}
		line = strings.TrimSpace(line)
		if line == "READY" {
			return f, nil
		}
		if p, ok := strings.CutPrefix(line, "PTY "); ok {
			f.paths = append(f.paths, p)
		}
		if s, ok := strings.CutPrefix(line, "SCALED "); ok {
			f.note = s
		}
	}
}

// do sends a command to the farm and returns its one-line answer.
func (f *farm) do(cmd string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := io.WriteString(f.in, cmd+"\n"); err != nil {
		return "", fmt.Errorf("farm %s: %w", cmd, err)
	}
	l, err := f.rd.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("farm %s: %w", cmd, err)
	}
	return strings.TrimSpace(l), nil
}

func (f *farm) power(on bool) error {
	cmd, want := "off", "OFF"
	if on {
		cmd, want = "on", "ON"
	}
	l, err := f.do(cmd)
	if err == nil && l != want {
		err = fmt.Errorf("farm %s: answered %q", cmd, l)
	}
	if err == nil && f.shell != nil {
		err = f.shell.power(on)
	}
	return err
}

// flush drops what the previous run left unread in the streaming boards' ptys (a pty
// holds about 12 KiB: a reader that fell behind leaves up to that much, which the next
// run's reader would otherwise get first, as bytes extra and out of place). Call it with
// the farm off and no reader running.
func (f *farm) flush() error {
	l, err := f.do("flush")
	if err == nil && l != "FLUSHED" {
		err = fmt.Errorf("farm flush: answered %q", l)
	}
	return err
}

// stat returns the bytes the streaming boards have written so far and how many of their
// times a pty was full (its reader behind).
func (f *farm) stat() (sent, stalls int64, err error) {
	l, err := f.do("stat")
	if err != nil {
		return 0, 0, err
	}
	if _, err := fmt.Sscanf(l, "SENT %d STALLS %d", &sent, &stalls); err != nil {
		return 0, 0, fmt.Errorf("farm stat: answered %q", l)
	}
	return sent, stalls, nil
}

func (f *farm) close() {
	if f.shell != nil {
		f.shell.close()
	}
	f.in.Close()
	done := make(chan struct{})
	go func() { _ = f.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = f.cmd.Process.Kill()
		<-done
	}
}

// runFarm is the console scenario's other process: -n consoles streaming -bytes random
// bytes each at 115200 baud when powered on (seeded by their index + 1; see feeder), or
// with -shell simulated boards (drivers/virtual) with a login prompt and a shell: the
// shell board, and with -n 2 the floor board too. It prints "PTY <path>"
// per board and READY, then answers on/off (powers every board on or off; ON, OFF) and
// stat (SENT <bytes> STALLS <n> of its streaming boards), and closes the boards at the
// end of its input.
func runFarm(e *env) error {
	raiseNoFile()
	n, bytes := e.intFlag("n"), e.int64Flag("bytes")
	shell := e.flags.Lookup("shell").Value.String() == "true"
	out := bufio.NewWriter(os.Stdout)
	var sbs []*virtual.Board
	var fd *feeder
	if shell {
		for _, name := range []string{shellName, floorName}[:min(max(n, 1), 2)] {
			b, err := virtual.New(name, virtual.Options{Baud: ConsoleBaud})
			if err != nil {
				return err
			}
			defer b.Close()
			sbs = append(sbs, b)
			fmt.Fprintf(out, "PTY %s\n", b.Path())
		}
	} else {
		// Scaled down if the host cannot open n ptys.
		var err error
		for fd, err = newFeeder(n, bytes); err != nil && n > 1; fd, err = newFeeder(n, bytes) {
			fmt.Fprintf(out, "SCALED %v\n", err)
			n = n * 9 / 10
		}
		if err != nil {
			return err
		}
		defer fd.close()
		for _, b := range fd.boards {
			fmt.Fprintf(out, "PTY %s\n", b.path)
		}
	}
	fmt.Fprintln(out, "READY")
	out.Flush()
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil
		}
		switch strings.TrimSpace(line) {
		case "on", "off":
			on := strings.TrimSpace(line) == "on"
			switch {
			case shell:
				for _, sb := range sbs {
					if on {
						_ = sb.On(context.Background())
					} else {
						_ = sb.Off(context.Background())
					}
				}
			default:
				fd.power(on)
			}
			fmt.Println(map[bool]string{true: "ON", false: "OFF"}[on])
		case "flush":
			if fd != nil {
				fd.flush()
			}
			fmt.Println("FLUSHED")
		case "stat":
			var sent, stalls int64
			if fd != nil {
				sent, stalls = fd.sent()
			}
			fmt.Printf("SENT %d STALLS %d\n", sent, stalls)
		default:
			fmt.Println("?")
		}
	}
}

// window measures one run: CPU of the given processes and the feeder's pace, from two
// seconds after power-on to a second before the stream's end.
type window struct {
	wall time.Duration
	cpu  map[string]float64 // share of one core, by process name
	// sysr, sysw are the read and write system calls per second, by process name
	// (/proc/PID/io: every thread's): what the cost follows, and not the machine's load.
	sysr, sysw   map[string]float64
	sent, stalls int64 // bytes the feeder wrote in the window; its stalled writes
	// steal is the host's steal sampled from power-on to the window's end; from is
	// when the window began (it ends wall later: end).
	steal *stealTrack
	from  time.Time
	// speed is the cost of a fixed piece of work, timed through the stream.
	speed *speedTrack
}

// end is when the window ended.
func (w window) end() time.Time { return w.from.Add(w.wall) }

// measure powers the farm on and measures the window; during it, during() runs (if not
// nil). The farm stays on.
func measure(f *farm, size consoleSize, pids map[string]int, during func(stop <-chan struct{})) (window, time.Time, error) {
	speed := newSpeedTrack()
	if err := f.power(true); err != nil {
		return window{}, time.Time{}, err
	}
	on := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	steal := &stealTrack{}
	wg.Go(func() { steal.sample(stop) })
	wg.Go(func() { speed.sample(stop) })
	if during != nil {
		wg.Add(1)
		go func() { defer wg.Done(); during(stop) }()
	}
	// The first seconds hold one-time costs (a recording's first file is created when
	// its first bytes come) and the feeder's start.
	time.Sleep(2 * time.Second)
	cpu0 := map[string]time.Duration{}
	io0 := map[string][2]int64{}
	for name, pid := range pids {
		cpu0[name] = cpuTime(pid)
		io0[name] = sysCalls(pid)
	}
	sent0, stalls0, err := f.stat()
	if err != nil {
		close(stop)
		wg.Wait()
		return window{}, on, err
	}
	w0 := time.Now()
	time.Sleep(time.Duration(size.seconds-3) * time.Second)
	w := window{wall: time.Since(w0), cpu: map[string]float64{}, sysr: map[string]float64{}, sysw: map[string]float64{},
		steal: steal, from: w0, speed: speed}
	for name, pid := range pids {
		w.cpu[name] = float64(cpuTime(pid)-cpu0[name]) / float64(w.wall)
		io1 := sysCalls(pid)
		w.sysr[name] = float64(io1[0]-io0[name][0]) / w.wall.Seconds()
		w.sysw[name] = float64(io1[1]-io0[name][1]) / w.wall.Seconds()
	}
	sent1, stalls1, err := f.stat()
	close(stop)
	wg.Wait()
	if err != nil {
		return w, on, err
	}
	w.sent, w.stalls = sent1-sent0, stalls1-stalls0
	return w, on, nil
}

// sysCalls returns a process's read and write system calls so far (syscr and syscw of
// /proc/PID/io, all its threads; zero if unreadable).
func sysCalls(pid int) [2]int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return [2]int64{}
	}
	var out [2]int64
	for _, l := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			out[0] = n
		case "syscw":
			out[1] = n
		}
	}
	return out
}

// sysNote says a process's read and write system calls per second in the window, and
// per board.
func (w window) sysNote(name string, boards int) string {
	return fmt.Sprintf("%.0f reads/s and %.0f writes/s (system calls; %.2f and %.2f a board)",
		w.sysr[name], w.sysw[name], w.sysr[name]/float64(max(boards, 1)), w.sysw[name]/float64(max(boards, 1)))
}

// pace is the share of the line rate the feeder reached in the window.
func (w window) pace(size consoleSize) float64 {
	return float64(w.sent) / w.wall.Seconds() / size.nominal()
}

// paceNote says how the feeder kept to the line rate.
func (w window) paceNote(size consoleSize) string {
	p := w.pace(size)
	if p >= paceOK {
		return fmt.Sprintf("feeder at %.0f%% of the %.2f MB/s line rate", p*100, size.nominal()/1e6)
	}
	why := "the feeder itself fell behind (CPU)"
	if w.stalls > 0 {
		why = fmt.Sprintf("the reader held it back: %d times a pty was full", w.stalls)
	}
	return fmt.Sprintf("NOT at the line rate: the feeder reached %.0f%% of %.2f MB/s (%s)", p*100, size.nominal()/1e6, why)
}
