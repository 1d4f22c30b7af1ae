package main

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/connector"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// IdleBoards is the fleet of the idle, lease and restart scenarios.
const IdleBoards = 1000

// PythonExporters is how many minimal Python gRPC servers the baseline starts.
const PythonExporters = 20

//go:embed pyexporter.py
var pyExporter string

// daemon is a boardvisor process started by a scenario.
type daemon struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	// lines counts output lines containing each watched substring.
	watch map[string]int
}

func startDaemon(bin string, watch []string, args ...string) (*daemon, error) {
	d := &daemon{cmd: exec.Command(bin, args...), done: make(chan struct{}), watch: map[string]int{}}
	for _, w := range watch {
		d.watch[w] = 0
	}
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w := io.Pipe()
	d.cmd.Stdout, d.cmd.Stderr = w, w
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			for k := range d.watch {
				if strings.Contains(line, k) {
					d.watch[k]++
				}
			}
			if d.out.Len() < 1<<20 {
				d.out.WriteString(line + "\n")
			}
			d.mu.Unlock()
		}
	}()
	go func() {
		_ = d.cmd.Wait()
		w.Close()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) count(s string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.watch[s]
}

func (d *daemon) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.out.String()
}

// waitFor waits until the daemon printed s n times.
func (d *daemon) waitFor(s string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for d.count(s) < n {
		select {
		case <-d.done:
			return fmt.Errorf("exited before printing %q:\n%s", s, tail(d.output(), 2000))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("printed %q %d times, not %d, within %s:\n%s", s, d.count(s), n, timeout, tail(d.output(), 2000))
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// kill sends SIGKILL to the daemon's process group and waits for it.
func (d *daemon) kill() {
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
	<-d.done
}

// writeConfig writes a supervisor config with n boards.
func writeConfig(path, stateDir, listen, extra string, n int) error {
	var b strings.Builder
	fmt.Fprintf(&b, "stateDir: %s\nlisten: %s\nlog: {level: info, format: text}\n%s", stateDir, listen, extra)
	b.WriteString("boards:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - name: %s\n    labels: {device: sim}\n", boardName(i))
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

func runIdle(e *env) error {
	// 1. The real binary with 1,000 boards, no drivers, no coordinator.
	cfg := filepath.Join(e.dir, "idle.yaml")
	if err := writeConfig(cfg, filepath.Join(e.dir, "state"), "127.0.0.1:0", "", IdleBoards); err != nil {
		return err
	}
	d, err := startDaemon(e.bin, []string{"supervising"}, "supervise", "--config", cfg)
	if err != nil {
		return err
	}
	defer d.kill()
	began := time.Now()
	if err := d.waitFor("supervising", 1, 30*time.Second); err != nil {
		return err
	}
	startup := time.Since(began)
	// Let start-up garbage be collected (the Go runtime returns memory lazily).
	time.Sleep(3 * time.Second)
	var st map[string]int64
	var maxRSS int64
	for i := 0; i < 5; i++ {
		s, err := procStatus(d.cmd.Process.Pid)
		if err != nil {
			return err
		}
		st, maxRSS = s, max(maxRSS, s["VmRSS"])
		time.Sleep(200 * time.Millisecond)
	}
	rssMB := float64(st["VmRSS"]) / 1024
	logf("boardvisor supervise, %d boards: VmRSS %.1f MB (peak %.1f MB), VmHWM %.1f MB, %d threads, up in %s",
		IdleBoards, rssMB, float64(maxRSS)/1024, float64(st["VmHWM"])/1024, st["Threads"], startup.Round(time.Millisecond))

	// 2. The baseline: minimal Python gRPC servers, one per board, extrapolated.
	py, pyPss, nPy, pyNote := pythonBaseline(e)
	r := Row{Figure: fmt.Sprintf("idle: RSS, %d boards, one process (real binary)", IdleBoards), Value: fmt.Sprintf("%.1f MB", rssMB), Num: rssMB, Unit: "MB",
		Target: "< 100 MB", Met: met(rssMB < 100),
		Note: fmt.Sprintf("%d OS threads; peak RSS %.1f MB; start-up %s", st["Threads"], float64(st["VmHWM"])/1024, startup.Round(time.Millisecond))}
	if py > 0 {
		r.Baseline = fmt.Sprintf("%.0f MB", py*IdleBoards)
		r.Ratio = ratio(py*IdleBoards, rssMB)
		r.Note += fmt.Sprintf("; baseline: %d python3-grpcio servers, %.1f MB RSS each (PSS %.1f MB) x %d", nPy, py, pyPss, IdleBoards)
	} else {
		r.Note += "; baseline not measured: " + pyNote
	}
	e.add(r)

	// 3. Goroutines: the binary has no endpoint yet, so the same tree is assembled in this
	// process (the supervisor and its client service, as `supervise` does).
	g0 := runtime.NumGoroutine()
	var boards []board.Config
	labels := map[string]map[string]string{}
	for i := 0; i < IdleBoards; i++ {
		boards = append(boards, board.Config{Name: boardName(i), LeaseDuration: time.Hour})
		labels[boardName(i)] = map[string]string{"device": "sim"}
	}
	svc := exporter.New(labels, nil, nil)
	p, err := startInproc(e, inprocOpts{boards: boards, conn: newConn(func(connector.Event) {}), exporter: svc})
	if err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	total := runtime.NumGoroutine()
	g := total - g0
	if err := p.stop(); err != nil {
		return err
	}
	logf("in-process tree of %d boards: %d goroutines", IdleBoards, g)
	e.add(Row{Figure: fmt.Sprintf("idle: goroutines, %d boards (in-process tree)", IdleBoards), Value: fmt.Sprint(g), Num: float64(g),
		Target: "no goroutine per idle board", Met: met(g < IdleBoards/10),
		Note: fmt.Sprintf("goroutines added by the tree (%d in the process), from runtime.NumGoroutine() of the same tree built in the bench process: the binary has no metrics endpoint yet", total)})
	return nil
}

// pythonBaseline starts PythonExporters minimal Python gRPC servers, calls each once, and
// returns their mean RSS and PSS in MB.
func pythonBaseline(e *env) (rssMB, pssMB float64, n int, note string) {
	// Debian's python3-grpcio is for the system's Python, which another python3 earlier
	// in PATH (pyenv, a venv) may hide.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			return 0, 0, 0, "python3 not installed"
		}
	}
	if out, err := exec.Command(py, "-c", "import grpc").CombinedOutput(); err != nil {
		return 0, 0, 0, "python3-grpcio not installed: " + oneLine(string(out))
	}
	script := filepath.Join(e.dir, "pyexporter.py")
	if err := os.WriteFile(script, []byte(pyExporter), 0o644); err != nil {
		return 0, 0, 0, err.Error()
	}
	type server struct {
		cmd  *exec.Cmd
		port string
	}
	var servers []*server
	defer func() {
		for _, s := range servers {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
		}
	}()
	for i := 0; i < PythonExporters; i++ {
		cmd := exec.Command(py, script)
		out, err := cmd.StdoutPipe()
		if err != nil {
			return 0, 0, 0, err.Error()
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return 0, 0, 0, err.Error()
		}
		s := &server{cmd: cmd}
		servers = append(servers, s)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			return 0, 0, 0, "python server did not start: " + err.Error()
		}
		s.port = strings.TrimSpace(line)
	}
	// One call each, as a client checking the exporter's status would make: the server's
	// thread pool and channel state are then really there.
	for _, s := range servers {
		cc, err := grpc.NewClient("127.0.0.1:"+s.port, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return 0, 0, 0, err.Error()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = jpb.NewExporterServiceClient(cc).GetStatus(ctx, &jpb.GetStatusRequest{})
		cancel()
		cc.Close()
		if err != nil {
			return 0, 0, 0, "call python server: " + err.Error()
		}
	}
	time.Sleep(time.Second)
	var rss, pss int64
	for _, s := range servers {
		st, err := procStatus(s.cmd.Process.Pid)
		if err != nil {
			return 0, 0, 0, err.Error()
		}
		rss += st["VmRSS"]
		pss += pssKB(s.cmd.Process.Pid)
	}
	n = len(servers)
	rssMB, pssMB = float64(rss)/1024/float64(n), float64(pss)/1024/float64(n)
	logf("baseline: %d python3-grpcio servers: mean RSS %.1f MB, mean PSS %.1f MB", n, rssMB, pssMB)
	return rssMB, pssMB, n, ""
}
