package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// wait bounds every wait of these tests.
const wait = 30 * time.Second

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardvisor-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "boardvisor")
	build := exec.Command("go", "build", "-o", binary, "../cmd/boardvisor")
	if out, err := build.CombinedOutput(); err != nil {
		panic("build boardvisor: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address nobody listens on (for daemons that must be
// restarted on the same address).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a boardvisor process started by a test; its output goes to the test log and
// is searchable.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	err  error
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		w.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", p.name, p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until the process has printed s.
func (p *proc) waitOutput(s string) {
	p.t.Helper()
	deadline := time.Now().Add(wait)
	for !strings.Contains(p.output(), s) {
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, p.err, s, p.output())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not print %q:\n%s", p.name, s, p.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill sends SIGKILL to the process (and its group) and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func startCoordinator(t *testing.T, addr, stateDir string, extra ...string) *proc {
	t.Helper()
	p := start(t, "coordinator", append([]string{"coordinator", "--listen", addr, "--state-dir", stateDir, "--log-format", "text", "--grace", "2s"}, extra...)...)
	p.waitOutput("coordinator listening")
	return p
}

type boardSpec struct {
	name   string
	labels string // YAML flow map body, e.g. "device: rpi4"
}

// supervisorConfig writes a supervisor config with the given boards and hook scripts.
func supervisorConfig(t *testing.T, dir, id, coordAddr, before, after string, boards ...boardSpec) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "stateDir: %s\nlisten: 127.0.0.1:0\nlog: {level: debug, format: text}\n", filepath.Join(dir, "state"))
	fmt.Fprintf(&b, "coordinator: {address: %q, supervisorId: %s}\n", coordAddr, id)
	// The tests' hooks use files of the test (as root: in directories only root may
	// enter); a test of unprivileged hooks sets runAs itself.
	b.WriteString("runAsRoot: true\n")
	b.WriteString("defaults:\n  hooks:\n")
	if before != "" {
		fmt.Fprintf(&b, "    beforeLease: {timeout: 20s, onFailure: endLease, script: %q}\n", before)
	}
	if after != "" {
		fmt.Fprintf(&b, "    afterLease: {timeout: 20s, onFailure: endLease, script: %q}\n", after)
	}
	b.WriteString("boards:\n")
	for _, bs := range boards {
		fmt.Fprintf(&b, "  - name: %s\n    labels: {%s}\n", bs.name, bs.labels)
	}
	path := filepath.Join(dir, id+".yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startSupervisor(t *testing.T, name, config string) *proc {
	t.Helper()
	p := start(t, name, "supervise", "--config", config)
	p.waitOutput("supervising")
	return p
}

func leaseClient(t *testing.T, addr string) pb.LeaseServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewLeaseServiceClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// waitBoards waits until the coordinator lists n AVAILABLE boards.
func waitBoards(t *testing.T, c pb.LeaseServiceClient, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		r, err := c.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
		ready := 0
		if err == nil {
			for _, b := range r.GetBoards() {
				if b.GetStatus().String() == "EXPORTER_STATUS_AVAILABLE" {
					ready++
				}
			}
		}
		if ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d boards available: %v %v", ready, n, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
