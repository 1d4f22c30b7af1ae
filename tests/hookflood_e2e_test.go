package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// A beforeLease hook that prints a million lines as fast as it can and exits 0 (issue
// 13: a hook printing 20,000–40,000 lines was failed by its backstop, and 30–55 % of
// its lines were lost): the hook counts as succeeded, the lease reaches READY, and
// every line reaches the coordinator once and in order (as `boardvisor logs --lease`
// reads it back).
func TestMillionLineHookReachesTheCoordinator(t *testing.T) {
	if testing.Short() {
		t.Skip("a million hook lines through the coordinator (about a minute)")
	}
	const n = 1_000_000
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	coordState := filepath.Join(dir, "coord")
	startCoordinator(t, coordAddr, coordState)
	hook := fmt.Sprintf(`awk 'BEGIN { for (i = 1; i <= %d; i++) print "flashing block " i " of the root file system" }'`, n)
	cfg := supervisorConfig(t, dir, "lab", coordAddr, hook, "", boardSpec{"flood", "device: rpi4"})
	// Its timeout is generous for the hook's own work (a loaded host runs awk slowly on
	// a terminal) and short for the lines' way to the coordinator: the hook is judged by
	// its shim's status, not by how long its lines take to be durable.
	editConfig(t, cfg, "beforeLease: {timeout: 20s", "beforeLease: {timeout: 60s")
	startSupervisor(t, "supervisor lab", cfg)
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, 1)

	l, err := createLease(ctxT(t), c, "", "flood", time.Hour, "flood-test")
	if err != nil {
		t.Fatal(err)
	}
	// The wait is bounded by progress, not by a deadline fit for one machine: it fails
	// once the coordinator has stored no new event for a minute and a half (and after
	// 15 minutes in all).
	ctx := ctxLong(t, 15*time.Minute)
	ctx = whileStoring(ctx, t, coordState, 90*time.Second)
	w, err := watchLease(ctx, c, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	t.Logf("READY %s after the lease was granted", time.Since(began).Round(time.Millisecond))
	if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "done"}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.done(); err != nil {
		t.Fatal(err)
	}
	// What a user reads back: `boardvisor logs --lease` streams the lease's log from the
	// coordinator's store, in stored order. Its hook lines are the hook's, each once and in
	// order. (The check runs in the binary, which is built without the race detector:
	// queries over a million rows in the test under -race took minutes.)
	out, err := runBinaryWithin(10*time.Minute, coordEnv(coordAddr, ""), false, []string{"logs", "--lease", l.GetId()})
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("boardvisor logs --lease: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("boardvisor logs --lease: %v", err)
	}
	k := 0
	for line := range bytes.Lines(out) {
		at := bytes.Index(line, []byte("flashing block "))
		if at < 0 {
			continue
		}
		k++
		got := string(bytes.TrimRight(line[at:], "\n"))
		if want := fmt.Sprintf("flashing block %d of the root file system", k); got != want {
			t.Fatalf("line %d of the lease's log is %q, want %q: lost, doubled or out of order", k, got, want)
		}
	}
	if k != n {
		t.Fatalf("the lease's log has %d hook lines, want %d", k, n)
	}
	t.Logf("%d lines stored once and in order, %s in all", n, time.Since(began).Round(time.Millisecond))
}

// ctxLong is a context bounded by d and by the test, for the few waits longer than wait.
func ctxLong(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// whileStoring returns a context cancelled once the coordinator in stateDir has stored
// no new event for stall (checked every 2s), or when parent ends.
func whileStoring(parent context.Context, t *testing.T, stateDir string, stall time.Duration) context.Context {
	ctx, cancel := context.WithCancel(parent)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		db, err := openDB(stateDir, false)
		if err != nil {
			return
		}
		defer db.Close()
		var last int64 = -1
		moved := time.Now()
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var n int64
			if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(rowid), 0) FROM events`).Scan(&n); err == nil && n != last {
				last, moved = n, time.Now()
			}
			if time.Since(moved) > stall {
				t.Logf("the coordinator stored no event for %s (%d stored): giving up", stall, last)
				cancel()
				return
			}
		}
	}()
	return ctx
}
