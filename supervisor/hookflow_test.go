package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	hookactor "github.com/boardvisor/boardvisor/actors/hook"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs"
)

// gatedConn is a local connector that claims to keep events durably (a
// connector.Syncer) and reports them durable only while its gate is open: a disk that
// stalls, as a full state directory does. (A fake durability signal: the real one is
// the on-disk outbox's, tested in connector/grpc; here only the actors' use of it is.)
type gatedConn struct {
	*local.Connector
	mu      sync.Mutex
	open    bool
	waiters []chan struct{}
	asked   int // Synced calls while closed
}

func (g *gatedConn) Synced() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	ch := make(chan struct{})
	if g.open {
		close(ch)
		return ch
	}
	g.asked++
	g.waiters = append(g.waiters, ch)
	return ch
}

func (g *gatedConn) setOpen(open bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = open
	if open {
		for _, w := range g.waiters {
			close(w)
		}
		g.waiters = nil
	}
}

func (g *gatedConn) waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.asked
}

// While the outbox cannot make a hook's lines durable, the hook's output waits (the
// tail reads no further than the chunk in flight) and the lease does not move on, even
// though the hook has exited: the shim's exit is reported (HookShimExited), and READY
// comes only after every line is durable, so that readers see every hook line of a phase
// before the next phase. Nothing is lost: once the outbox catches up, every line arrives
// once, in order.
func TestHookLinesAreDurableBeforeTheLeaseMovesOn(t *testing.T) {
	const n = 60000
	g := &gatedConn{Connector: local.New()}
	h := startConn(t, g.Connector, g, nil, board.Config{Name: "rpi",
		Before: hookCfg(fmt.Sprintf("i=1; while [ $i -le %d ]; do echo line-$i; i=$((i+1)); done", n), jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi")
	// The first chunks are in flight and not durable: the hook runs on into its spool
	// (it does not block: the shim drains its output), and exits, but the tail hands
	// over no more than hookactor.ChunksInFlight chunks beyond the oldest not durable.
	poll(t, "the outbox to ask for durability", func() bool { return g.waiting() > 0 })
	status := filepath.Join(h.dir, "hooks", job, "beforeLease", "status")
	poll(t, "the hook's shim to write its status", func() bool {
		_, err := os.Stat(status)
		return err == nil
	})
	// For as long as the outbox stalls (watched here for a while: a negative can only
	// be checked over a window), the lease stays in BEFORE_LEASE and no more than
	// ChunksInFlight+1 chunks have gone out.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		evs := h.conn.Events()
		for _, ev := range evs {
			if ev.Transition != nil && ev.JobID == job && ev.Transition.To == jobs.PhaseReady {
				t.Fatal("READY while the hook's lines were not durable")
			}
		}
		if got := len(hookLines(evs, job, jobs.SourceBeforeLeaseHook)); got >= n {
			t.Fatalf("all %d lines went out while none was durable", got)
		}
		if c := g.waiting(); c > hookactor.ChunksInFlight+1 {
			t.Fatalf("%d chunks handed over while none was durable, want at most %d", c, hookactor.ChunksInFlight+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.setOpen(true)
	evs := h.waitPhase(job, jobs.PhaseReady)
	lines := hookLines(evs, job, jobs.SourceBeforeLeaseHook)
	if len(lines) != n {
		t.Fatalf("%d hook lines, want %d", len(lines), n)
	}
	for i, l := range lines {
		if l != fmt.Sprintf("INFO line-%d", i+1) {
			t.Fatalf("line %d is %q: lost, doubled or out of order", i+1, l)
		}
	}
	// Every hook line comes before READY.
	last := 0
	for i, ev := range evs {
		if ev.Hook != nil && ev.JobID == job && ev.Hook.Source == jobs.SourceBeforeLeaseHook {
			last = i
		}
		if ev.Transition != nil && ev.JobID == job && ev.Transition.To == jobs.PhaseReady && i < last {
			t.Fatal("READY before the last hook line")
		}
	}
	if !strings.HasPrefix(lines[0], "INFO line-1") {
		t.Fatal(lines[0])
	}
}

// poll waits for cond, checking it every 10ms: for what no event announces (and none
// arrives while the outbox stalls).
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for start := time.Now(); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > wait {
			t.Fatalf("waiting for %s: not within %s", what, wait)
		}
	}
}
