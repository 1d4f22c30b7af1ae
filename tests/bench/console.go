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

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
)

// Console scenario: ConsoleBoards simulated boards, each writing ConsoleSeconds of
// random bytes at 115200 baud through a pseudo-terminal, read by the serial console
// driver of a board actor of an in-process supervisor. The boards run in another
// process (the farm), so that only the supervisor's side is measured.
const (
	ConsoleBoards  = 1000
	ConsoleSeconds = 12
	ConsoleBaud    = 115200
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type consoleCount struct {
	n   int64
	crc uint32
}

func runConsole(e *env) error {
	raiseNoFile()
	n := ConsoleBoards
	perBoard := int64(ConsoleBaud / 10 * ConsoleSeconds)

	farm := exec.Command(e.self, "child", "farm", "-n", strconv.Itoa(n), "-bytes", strconv.FormatInt(perBoard, 10))
	farm.Stderr = os.Stderr
	stdin, err := farm.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := farm.StdoutPipe()
	if err != nil {
		return err
	}
	if err := farm.Start(); err != nil {
		return err
	}
	// The simulated boards pace themselves with a timer each: give them the CPU first, so
	// that they keep to the line rate (the priority does not change what the supervisor's
	// work costs, only when it runs).
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, farm.Process.Pid, -10)
	defer func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { _ = farm.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = farm.Process.Kill()
			<-done
		}
	}()
	rd := bufio.NewReader(stdout)
	paths := make([]string, 0, n)
	note := ""
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			return fmt.Errorf("farm: %w", err)
		}
		line = strings.TrimSpace(line)
		if line == "READY" {
			break
		}
		if p, ok := strings.CutPrefix(line, "PTY "); ok {
			paths = append(paths, p)
		}
		if s, ok := strings.CutPrefix(line, "SCALED "); ok {
			note = s
		}
	}
	if len(paths) < n {
		logf("SCALED DOWN: only %d of %d simulated boards could be made (%s)", len(paths), n, note)
		n = len(paths)
	}

	var mu sync.Mutex
	var chunks int64 // console events: one per read of the driver
	counts := map[string]*consoleCount{}
	seeds := map[string]uint64{}
	var boards []board.Config
	for i := 0; i < n; i++ {
		d, err := serial.New(serial.Config{Name: "console", Device: paths[i], Baud: ConsoleBaud})
		if err != nil {
			return err
		}
		name := boardName(i)
		counts[name] = &consoleCount{}
		seeds[name] = uint64(i + 1)
		boards = append(boards, board.Config{Name: name, LeaseDuration: time.Hour, Drivers: []driver.Driver{d}})
	}
	c := newConn(func(ev connector.Event) {
		if ev.Console == nil {
			return
		}
		mu.Lock()
		chunks++
		if cc := counts[ev.Board]; cc != nil {
			cc.n += int64(len(ev.Console.Data))
			cc.crc = crc32.Update(cc.crc, castagnoli, ev.Console.Data)
		}
		mu.Unlock()
	})
	p, err := startInproc(e, inprocOpts{boards: boards, conn: c})
	if err != nil {
		return err
	}
	defer p.stop()
	time.Sleep(2 * time.Second) // every driver has opened its port
	self := os.Getpid()
	idleCPU0, idle0 := cpuTime(self), time.Now()
	time.Sleep(2 * time.Second)
	idleCPU := float64(cpuTime(self)-idleCPU0) / float64(time.Since(idle0))

	if _, err := io.WriteString(stdin, "on\n"); err != nil {
		return err
	}
	if l, err := rd.ReadString('\n'); err != nil || strings.TrimSpace(l) != "ON" {
		return fmt.Errorf("farm did not power on: %q %v", l, err)
	}
	on := time.Now()
	// The CPU window: the middle of the stream, when every board is writing.
	received := func() int64 {
		mu.Lock()
		defer mu.Unlock()
		var t int64
		for _, cc := range counts {
			t += cc.n
		}
		return t
	}
	time.Sleep(time.Second)
	mu.Lock()
	chunks0 := chunks
	mu.Unlock()
	cpu0, farm0, w0, b0 := cpuTime(self), cpuTime(farm.Process.Pid), time.Now(), received()
	time.Sleep(time.Duration(ConsoleSeconds-3) * time.Second)
	wall := time.Since(w0)
	cpu := float64(cpuTime(self)-cpu0) / float64(wall)
	farmCPU := float64(cpuTime(farm.Process.Pid)-farm0) / float64(wall)
	inWindow := received() - b0
	mu.Lock()
	reads := float64(chunks-chunks0) / wall.Seconds()
	mu.Unlock()
	// The simulated boards pace themselves with a timer each; with a thousand of them in
	// one process they fall behind the line rate. The CPU figure is scaled to the full
	// rate (the work is per byte and per read).
	rate := float64(inWindow) / wall.Seconds()
	nominal := float64(n) * ConsoleBaud / 10
	scaledCPU := cpu * nominal / max(rate, 1)

	// Wait for the rest of the stream.
	deadline := on.Add(time.Duration(ConsoleSeconds+15) * time.Second)
	var got int64
	for {
		mu.Lock()
		got = 0
		for _, cc := range counts {
			got += cc.n
		}
		mu.Unlock()
		if got >= perBoard*int64(n) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	streamed := time.Since(on)
	time.Sleep(500 * time.Millisecond) // anything extra would show as a surplus
	mu.Lock()
	var lost, surplus int64
	bad := 0
	for name, cc := range counts {
		if cc.n < perBoard {
			lost += perBoard - cc.n
		} else if cc.n > perBoard {
			surplus += cc.n - perBoard
		}
		if cc.n == perBoard && cc.crc != crc32.Checksum(virtual.RandomData(seeds[name], int(perBoard)), castagnoli) {
			bad++
		}
	}
	mu.Unlock()
	logf("console: %d boards x %d bytes at %d baud: %d bytes lost, %d extra, %d boards with wrong bytes; supervisor CPU %.1f%% of a core at %.2f MB/s (%.0f%% of the line rate; %.1f%% scaled to it; idle %.1f%%), %.0f reads/s; farm %.1f%%; %d bytes in %s",
		n, perBoard, ConsoleBaud, lost, surplus, bad, cpu*100, rate/1e6, rate/nominal*100, scaledCPU*100, idleCPU*100, reads, farmCPU*100, got, streamed.Round(time.Millisecond))
	scaled := ""
	if n < ConsoleBoards {
		scaled = fmt.Sprintf("SCALED DOWN to %d boards (%s); ", n, note)
	}
	e.add(Row{Figure: fmt.Sprintf("console: bytes lost, %d boards at %d baud through ptys", n, ConsoleBaud), Value: fmt.Sprint(lost + surplus), Num: float64(lost + surplus),
		Target: "0", Met: met(lost == 0 && surplus == 0 && bad == 0),
		Note: fmt.Sprintf("%s%d bytes each (%.1f MB total) compared by count and CRC-32C; %d boards with wrong bytes; board-actor level (serial driver -> board -> outbox -> connector)",
			scaled, perBoard, float64(perBoard*int64(n))/1e6, bad)})
	e.add(Row{Figure: fmt.Sprintf("console: CPU of the supervisor, %d boards at 115200 baud", n), Value: fmt.Sprintf("%.1f%% of a core", scaledCPU*100), Num: scaledCPU * 100, Unit: "%",
		Target: "< 25% of one core", Ratio: ratio(scaledCPU, 0.25), Met: met(scaledCPU < 0.25),
		Note: fmt.Sprintf("%smeasured %.1f%% at %.2f MB/s (the simulated boards, in another process at %.1f%% of a core, reached %.0f%% of the %.2f MB/s line rate), scaled to the line rate; %.0f reads/s of %.0f bytes; %.1fs window; idle before the stream %.1f%%",
			scaled, cpu*100, rate/1e6, farmCPU*100, rate/nominal*100, nominal/1e6, reads, float64(inWindow)/max(reads*wall.Seconds(), 1), wall.Seconds(), idleCPU*100)})
	return nil
}

// raiseNoFile raises the descriptor limit to its hard maximum.
func raiseNoFile() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// runFarm is the console scenario's other process: -n simulated boards emitting -bytes
// random bytes each when powered on. It prints "PTY <path>" per board and READY, powers
// every board on when it reads "on" (and prints ON), and closes them at end of input.
func runFarm(e *env) error {
	raiseNoFile()
	n, bytes := e.intFlag("n"), e.int64Flag("bytes")
	var boards []*virtual.Board
	defer func() {
		for _, b := range boards {
			b.Close()
		}
	}()
	out := bufio.NewWriter(os.Stdout)
	for i := 0; i < n; i++ {
		b, err := virtual.New(boardName(i), virtual.Options{Baud: ConsoleBaud, RandomBytes: bytes, Seed: uint64(i + 1)})
		if err != nil {
			fmt.Fprintf(out, "SCALED %v\n", err)
			break
		}
		boards = append(boards, b)
		fmt.Fprintf(out, "PTY %s\n", b.Path())
	}
	fmt.Fprintln(out, "READY")
	out.Flush()
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil
		}
		if strings.TrimSpace(line) == "on" {
			var wg sync.WaitGroup
			for _, b := range boards {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = b.On(context.Background())
				}()
			}
			wg.Wait()
			fmt.Println("ON")
		}
	}
}
