package tests

import (
	"fmt"
	"os"
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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Hooks write to a pseudo-terminal: lines of programs that block-buffer into a pipe,
// and progress redrawn with carriage returns, reach a LogStream reader while the hook
// runs. The real binaries, one board, one lease.

// ptyNeed returns path, skipping the test when it is missing (failing under CI=true).
func ptyNeed(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing: .ci/run should install it", path)
		}
		t.Skipf("%s is not installed", path)
	}
	return path
}

// ptyFifo makes a FIFO in a directory any hook user can reach.
func ptyFifo(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "boardvisor-gate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(p, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o666); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

// ptyRelease unblocks a hook waiting to read the FIFO.
func ptyRelease(t *testing.T, fifo string) {
	t.Helper()
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
}

// ptyReader is a LogStream reader of one lease.
type ptyReader struct {
	mu   sync.Mutex
	msgs []ptyMsg
	more chan struct{} // signalled on each message
	err  error
}

type ptyMsg struct {
	at time.Time
	m  *jpb.LogStreamResponse
}

// ptyLease starts a coordinator and a supervisor whose one board runs before as its
// beforeLease hook, creates a lease and opens its LogStream as the client would.
func ptyLease(t *testing.T, before string) (*ptyReader, *proc) {
	t.Helper()
	r, sup, _ := ptyLeaseIn(t, t.TempDir(), before, nil)
	return r, sup
}

// ptyLeaseIn is ptyLease in directory dir, with the supervisor's config passed through
// edit (if not nil) before it starts; it also returns the supervisor's state directory.
func ptyLeaseIn(t *testing.T, dir, before string, edit func(config string) string) (*ptyReader, *proc, string) {
	t.Helper()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-pty", coordAddr, before, "", boardSpec{"board-1", "device: pty"})
	if edit != nil {
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfg, []byte(edit(string(b))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sup := startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 1)
	ctx := ctxT(t)
	lease, err := ceCreateLease(ctx, c, "device=pty", "", 10*time.Minute, "pty-test")
	if err != nil {
		t.Fatal(err)
	}
	w, err := ceWatchLease(ctx, c, lease.GetId())
	if err != nil {
		t.Fatal(err)
	}
	// Started on the supervisor (as the client waits for it): its client service knows the token.
	l, err := w.until("started", func(l *pb.Lease) bool {
		return l.GetExporterEndpoint() != "" && l.GetBoard() != "" && l.GetPhase() >= pb.LeasePhase_LEASE_PHASE_STARTING
	})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(l.GetExporterEndpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sctx := metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, l.GetBoard(), "authorization", "Bearer "+lease.GetToken())
	stream, err := jpb.NewExporterServiceClient(conn).LogStream(sctx, &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	r := &ptyReader{more: make(chan struct{}, 1)}
	go func() {
		for {
			m, err := stream.Recv()
			r.mu.Lock()
			if err != nil {
				r.err = err
			} else {
				r.msgs = append(r.msgs, ptyMsg{time.Now(), m})
			}
			r.mu.Unlock()
			select {
			case r.more <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return r, sup, filepath.Join(dir, "state")
}

// hookMsgs returns the beforeLease hook's messages so far.
func (r *ptyReader) hookMsgs() []ptyMsg {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ptyMsg
	for _, m := range r.msgs {
		if m.m.GetSource() == jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK {
			out = append(out, m)
		}
	}
	return out
}

// await waits until a hook message satisfies ok and returns it.
func (r *ptyReader) await(t *testing.T, what string, ok func(*jpb.LogStreamResponse) bool) ptyMsg {
	t.Helper()
	return r.awaitIn(t, what, r.hookMsgs, ok)
}

// awaitAny waits until any message (a phase marker too) satisfies ok.
func (r *ptyReader) awaitAny(t *testing.T, what string, ok func(*jpb.LogStreamResponse) bool) ptyMsg {
	t.Helper()
	return r.awaitIn(t, what, func() []ptyMsg {
		r.mu.Lock()
		defer r.mu.Unlock()
		return append([]ptyMsg(nil), r.msgs...)
	}, ok)
}

func (r *ptyReader) awaitIn(t *testing.T, what string, msgs func() []ptyMsg, ok func(*jpb.LogStreamResponse) bool) ptyMsg {
	t.Helper()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		for _, m := range msgs() {
			if ok(m.m) {
				return m
			}
		}
		r.mu.Lock()
		err := r.err
		r.mu.Unlock()
		if err != nil {
			t.Fatalf("log stream ended before %s: %v; hook lines: %q", what, err, r.texts())
		}
		select {
		case <-r.more:
		case <-deadline.C:
			t.Fatalf("no %s on the log stream; hook lines: %q", what, r.texts())
		}
	}
}

func (r *ptyReader) texts() []string {
	var out []string
	for _, m := range r.hookMsgs() {
		p := ""
		if m.m.GetProgress() {
			p = " (progress)"
		}
		out = append(out, m.m.GetMessage()+p)
	}
	return out
}

// A hook that does not flush (Python's print, awk) and waits on a FIFO after each line:
// the hook cannot go on unless each line reached the reader while it ran.
func TestHookBlockBufferedLinesReachTheReaderLive(t *testing.T) {
	python := ptyNeed(t, "/usr/bin/python3")
	awk := ptyNeed(t, "/usr/bin/awk")
	for _, tc := range []struct{ name, hook string }{
		{"python", python + ` -c 'import os
for i in range(3):
    print("JMP_INFO: step", i)
    open(os.environ["GATE"]).read()
'`},
		{"awk", awk + ` 'BEGIN { for (i = 0; i < 3; i++) { print "JMP_INFO: step", i; getline x < ENVIRON["GATE"]; close(ENVIRON["GATE"]) } }'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fifo := ptyFifo(t)
			r, _ := ptyLease(t, "GATE="+fifo+" exec "+tc.hook)
			for i := 0; i < 3; i++ {
				want := fmt.Sprintf("step %d", i)
				r.await(t, fmt.Sprintf("%q", want), func(m *jpb.LogStreamResponse) bool { return m.GetMessage() == want })
				ptyRelease(t, fifo)
			}
		})
	}
}

// A hook redrawing a progress line 1000 times in about 2 s: the reader sees
// intermediate states while the hook runs (it waits on a FIFO half-way until the
// reader has one), at most two a second, in order, then the final state as an ordinary
// line.
func TestHookProgressReachesTheReader(t *testing.T) {
	python := ptyNeed(t, "/usr/bin/python3")
	fifo := ptyFifo(t)
	begin := time.Now()
	r, _ := ptyLease(t, "GATE="+fifo+" exec "+python+` -c 'import os, sys, time
for i in range(1, 1001):
    sys.stdout.write("\rJMP_INFO: flashing %d/1000" % i)
    sys.stdout.flush()
    time.sleep(0.002)
    if i == 500:
        open(os.environ["GATE"]).read()
sys.stdout.write("\n")
'`)
	first := r.await(t, "a progress line", func(m *jpb.LogStreamResponse) bool { return m.GetProgress() })
	ptyRelease(t, fifo)
	final := r.await(t, "the final line", func(m *jpb.LogStreamResponse) bool {
		return !m.GetProgress() && strings.HasPrefix(m.GetMessage(), "flashing")
	})
	span := final.at.Sub(begin)
	if final.m.GetMessage() != "flashing 1000/1000" || final.m.GetSeverity() != "INFO" {
		t.Errorf("final line = %q %s, want the last state", final.m.GetMessage(), final.m.GetSeverity())
	}
	var progress []ptyMsg
	for _, m := range r.hookMsgs() {
		if m.m.GetProgress() {
			progress = append(progress, m)
		}
	}
	prev := 0
	for _, m := range progress {
		var n int
		if _, err := fmt.Sscanf(m.m.GetMessage(), "flashing %d/1000", &n); err != nil || n <= prev || n > 1000 {
			t.Fatalf("progress lines out of order or malformed: %q", r.texts())
		}
		prev = n
	}
	if !strings.HasPrefix(first.m.GetMessage(), "flashing ") {
		t.Errorf("first progress line %q", first.m.GetMessage())
	}
	if limit := int(span/(500*time.Millisecond)) + 1; len(progress) > limit {
		t.Errorf("%d progress lines within %v: more than two a second", len(progress), span)
	}
	t.Logf("%d progress lines, the last %q, within %v", len(progress), progress[len(progress)-1].m.GetMessage(), span)
}
