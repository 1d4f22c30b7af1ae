package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// consoleOutput is what a `boardvisor console` process printed, as it prints it.
type consoleOutput struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{} // closed and replaced at each write
}

func newConsoleOutput() *consoleOutput { return &consoleOutput{more: make(chan struct{})} }

func (o *consoleOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.more)
	o.more = make(chan struct{})
	return len(p), nil
}

// mark is where what comes next starts.
func (o *consoleOutput) mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Len()
}

// seen waits until the output after from holds want, at most timeout.
func (o *consoleOutput) seen(from int, want string, timeout time.Duration) bool {
	return o.find(from, want, timeout, nil) >= 0
}

// seenUnless is seen that gives up early once gone is closed (the process exited).
func (o *consoleOutput) seenUnless(from int, want string, timeout time.Duration, gone <-chan struct{}) bool {
	return o.find(from, want, timeout, gone) >= 0
}

// find waits until the output after from holds want, at most timeout, or until gone is
// closed (then what had come is looked at once more); it returns where the first match
// ends, or -1.
func (o *consoleOutput) find(from int, want string, timeout time.Duration, gone <-chan struct{}) int {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	match := func() int {
		if i := strings.Index(o.buf.String()[from:], want); i >= 0 {
			return from + i + len(want)
		}
		return -1
	}
	for {
		o.mu.Lock()
		end := match()
		more := o.more
		o.mu.Unlock()
		if end >= 0 {
			return end
		}
		select {
		case <-more:
		case <-deadline.C:
			return -1
		case <-gone:
			o.mu.Lock()
			defer o.mu.Unlock()
			return match() // its last words
		}
	}
}

func (o *consoleOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// virtualLease starts a coordinator and a supervisor with one virtual board, virt-01,
// and leases it for client until READY: the lease, and the environment a lease's
// `boardvisor` commands run with.
func virtualLease(t *testing.T, client string) (leases pb.LeaseServiceClient, l, ready *pb.Lease, env []string) {
	t.Helper()
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, virtual: true, boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	leases = leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)
	l, ready = readyLease(t, leases, "device=virt", client)
	env = []string{"BOARDVISOR_EXPORTER=" + ready.GetExporterEndpoint(), "BOARDVISOR_BOARD=virt-01", "BOARDVISOR_TOKEN=" + l.GetToken()}
	return leases, l, ready, env
}

// `boardvisor console` fed by a pipe, as a script runs it: each line goes to the board
// with a carriage return and the board's answer comes back; the end of the input leaves
// the console showing the board (a power cycle's boot shows after it); the lease's end
// ends the command, with exit 0 and nothing on stderr but the banner.
func TestConsoleFromAPipeGoesOnAfterItsInputUntilTheLeaseEnds(t *testing.T) {
	leases, l, _, env := virtualLease(t, "console-pipe")

	cmd := exec.Command(binary, "console")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, errOut := newConsoleOutput(), newConsoleOutput()
	cmd.Stdout, cmd.Stderr = out, errOut
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1) // holds Wait's error once the console is gone
	done := make(chan struct{})
	go func() { exited <- cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	if !errOut.seen(0, "Console of board virt-01: lines you type are sent to it.", wait) {
		t.Fatalf("no line-mode banner on stderr: %q", errOut.String())
	}
	// Enter until the board prompts for a login (what is typed while it boots is lost).
	for deadline := time.Now().Add(wait); !out.seen(0, "virt-01 login: ", 500*time.Millisecond); {
		if time.Now().After(deadline) {
			t.Fatalf("the board never showed its login prompt:\n%s", out.String())
		}
		in.Write([]byte("\n"))
	}
	from := out.mark()
	in.Write([]byte("root\npw\necho done    marker\n")) // the board answers "done marker"
	if !out.seen(from, "done marker", wait) {
		t.Fatalf("no answer to the lines typed:\n%s", out.String()[from:])
	}
	// Bytes that are not UTF-8 go to the board and come back as they are.
	from = out.mark()
	in.Write([]byte("echo \xff\xfe\x80 raw\n"))
	if !out.seen(from, "\xff\xfe\x80 raw\r\n", wait) {
		t.Fatalf("the bytes typed did not come back as they were: %q", out.String()[from:])
	}

	// The end of the input: the console goes on showing the board.
	in.Close()
	from = out.mark()
	if o, err := runCLI(env, "power", "cycle"); err != nil {
		t.Fatalf("power cycle: %v\n%s", err, o)
	}
	if !out.seen(from, "virt-01 login: ", wait) {
		t.Fatalf("after its input ended the console did not show the board's new boot:\n%s", out.String()[from:])
	}
	select {
	case err := <-exited:
		t.Fatalf("the console ended (%v) before its lease", err)
	default:
	}

	// The lease's end ends the command.
	if _, err := leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("console exited with %v at the lease's end, want 0; stderr:\n%s", err, errOut.String())
		}
	case <-time.After(wait):
		t.Fatalf("the console went on after its lease ended; stderr:\n%s", errOut.String())
	}
	if e := strings.TrimSpace(errOut.String()); strings.Contains(e, "\n") {
		t.Errorf("stderr has more than the banner:\n%s", e)
	}
}

// `boardvisor console` whose output cannot be written (here /dev/full, as a full disk
// under `boardvisor console > file`) does not drop what the board prints without a
// word: it says so in one sentence and exits non-zero, while the lease goes on.
func TestConsoleThatCannotWriteItsOutputSaysSoAndFails(t *testing.T) {
	leases, l, _, env := virtualLease(t, "console-full")
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full here: %v", err)
	}
	defer full.Close()
	cmd := exec.Command(binary, "console")
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	errOut := newConsoleOutput()
	cmd.Stdout, cmd.Stderr = full, errOut
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	// Enter until the board answers (what is typed while it boots is lost): its answer
	// is what cannot be written.
	var werr error
	for deadline := time.Now().Add(wait); ; {
		in.Write([]byte("\n"))
		select {
		case werr = <-exited:
		case <-time.After(500 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatalf("boardvisor console still runs %s after its output failed; stderr:\n%s", wait, errOut.String())
			}
			continue
		}
		break
	}
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("boardvisor console exited with %v, want exit status 1; stderr:\n%s", werr, errOut.String())
	}
	want := "boardvisor: console of board virt-01: cannot write what the board prints to standard output (write /dev/stdout: no space left on device): "
	if e := errOut.String(); !strings.Contains(e, want) {
		t.Errorf("stderr does not say why:\n%s\nwant a line with %q", e, want)
	}
	// The lease is untouched: it is still the client's.
	got, err := leases.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: l.GetId()})
	if err != nil || got.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Errorf("lease after the console failed: %v, %v; want it READY", got.GetLease().GetPhase(), err)
	}
}

// A client that opens console streams without end (upstream's serial "connect", the
// stream `boardvisor console` uses) is held to the lease's cap: past it, `boardvisor
// console` says why in one sentence before any banner and exits non-zero; once one of
// the hostile streams closes, the console opens.
func TestConsoleStreamsOfALeaseAreCapped(t *testing.T) {
	leases, l, ready, env := virtualLease(t, "console-cap")

	conn, err := grpc.NewClient(ready.GetExporterEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	router := jpb.NewRouterServiceClient(conn)
	open := func(ctx context.Context) error {
		md := metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, "virt-01", "authorization", "Bearer "+l.GetToken(),
			exporter.MDStreamRequest, exporter.ConsoleStreamRequest("virt-01"))
		s, err := router.Stream(md)
		if err != nil {
			return err
		}
		h, err := s.Header() // sent once the stream is counted
		if err == nil && h == nil {
			_, err = s.Recv() // ended without headers: the status says why
		}
		return err
	}
	var cancels []context.CancelFunc
	defer func() {
		for _, c := range cancels {
			c()
		}
	}()
	for i := 0; i < exporter.DefaultMaxConsoleStreamsPerLease; i++ {
		ctx, cancel := context.WithCancel(ctxT(t))
		cancels = append(cancels, cancel)
		if err := open(ctx); err != nil {
			t.Fatalf("console stream %d of %d: %v", i+1, exporter.DefaultMaxConsoleStreamsPerLease, err)
		}
	}
	if err := open(ctxT(t)); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("console stream %d: %v, want RESOURCE_EXHAUSTED", exporter.DefaultMaxConsoleStreamsPerLease+1, err)
	}

	// What a user sees past the cap: one sentence, no banner, a non-zero exit.
	out, err := runCLI(env, "console")
	want := fmt.Sprintf("console of board virt-01: the supervisor of board virt-01 at %s refused it: too many console streams open for this lease (%d, the most allowed): close one and try again",
		ready.GetExporterEndpoint(), exporter.DefaultMaxConsoleStreamsPerLease)
	if err == nil || !strings.Contains(out, want) || strings.Contains(out, "Console of board") {
		t.Fatalf("boardvisor console past the cap: %v\n%s\nwant a non-zero exit, no banner, and %q", err, out, want)
	}

	// One hostile stream closes: the console opens (it shows its banner), and the
	// lease's end ends it with exit 0.
	cancels[0]()
	deadline := time.Now().Add(wait)
	for {
		cmd := exec.Command(binary, "console")
		cmd.Env = append(os.Environ(), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		errOut := newConsoleOutput()
		cmd.Stdout, cmd.Stderr = io.Discard, errOut
		cmd.Stdin = strings.NewReader("")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited, gone := make(chan error, 1), make(chan struct{})
		go func() { exited <- cmd.Wait(); close(gone) }()
		// A console refused (the stream not freed yet) exits at once: try again.
		if errOut.seenUnless(0, "Console of board virt-01", wait, gone) {
			if _, err := leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "done"}); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-exited:
				if err != nil {
					t.Fatalf("console exited with %v at the lease's end, want 0; stderr:\n%s", err, errOut.String())
				}
			case <-time.After(wait):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				t.Fatalf("the console went on after its lease ended; stderr:\n%s", errOut.String())
			}
			return
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if time.Now().After(deadline) {
			t.Fatalf("the console did not open after a stream of the lease closed:\n%s", errOut.String())
		}
	}
}
