package tests

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/recording"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// Console bytes at lease boundaries belong to one lease by one authority: a lease's
// recording on the lab host and the console events the coordinator stored for it are
// the same bytes, for every lease of a run in which the consoles never stop streaming
// and leases follow each other on every board (issue 13: 3 leases of 200 differed by
// 90–190 bytes when the recording was cut on transitions and the events were tagged by
// the board).
func TestConsoleAtLeaseBoundariesMatchesTheRecording(t *testing.T) {
	const boards, perBoard = 4, 50
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	coordState := filepath.Join(dir, "coord")
	startCoordinator(t, coordAddr, coordState)
	var specs []boardSpec
	for i := 0; i < boards; i++ {
		specs = append(specs, boardSpec{fmt.Sprintf("s-%d", i), "device: stream"})
	}
	// The hooks take a moment, so that most leases hold a console read (unattended
	// consoles are read every 250 ms): with the shim binary a lease with `echo` hooks
	// was over in a few milliseconds, and most had no console bytes to compare.
	cfg := ceLabConfig(t, dir, "lab", coordAddr, "sleep 0.2; echo before", "sleep 0.1; echo after", specs...)
	streamingBoards(t, cfg)
	startSupervisor(t, "supervisor lab", cfg)
	c := leaseClient(t, coordAddr)
	waitBoards(t, c, boards)

	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	errs := make(chan error, boards)
	for i := 0; i < boards; i++ {
		wg.Add(1)
		go func(board string) {
			defer wg.Done()
			for n := 0; n < perBoard; n++ {
				ctx := ctxT(t)
				l, err := ceCreateLease(ctx, c, "", board, time.Minute, "boundary-test")
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				ids = append(ids, l.GetId())
				mu.Unlock()
				w, err := ceWatchLease(ctx, c, l.GetId())
				if err != nil {
					errs <- err
					return
				}
				if _, err := w.ready(); err != nil {
					errs <- fmt.Errorf("lease %d on %s: %w", n, board, err)
					return
				}
				if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "next"}); err != nil {
					errs <- err
					return
				}
				if _, err := w.done(); err != nil {
					errs <- fmt.Errorf("lease %d on %s: %w", n, board, err)
					return
				}
			}
		}(specs[i].name)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// Every event of the last lease is at the coordinator once its DONE is.
	db := ceOpenCoordinatorDB(t, coordState)
	events := ceStoredEvents(t, db)["lab"]
	ceCheckContiguous(t, "lab", events)
	boardOf := map[string]string{}
	for _, e := range events {
		if e.job != "" {
			boardOf[e.job] = e.board
		}
	}
	state := filepath.Join(dir, "lab", "state")
	withBytes, total := 0, 0
	for _, id := range ids {
		data := ceConsoleBytes(t, events, id)
		rc, err := recording.ReadLease(state, boardOf[id], id)
		var rec []byte
		if err == nil {
			rec, err = io.ReadAll(rc)
			rc.Close()
		}
		if err != nil && len(data) > 0 {
			t.Errorf("lease %s: %d console bytes at the coordinator, recording unreadable: %v", id, len(data), err)
			continue
		}
		if !bytes.Equal(data, rec) {
			t.Errorf("lease %s on %s: %d console bytes at the coordinator, %d in the recording", id, boardOf[id], len(data), len(rec))
		}
		if len(data) > 0 {
			withBytes++
		}
		total += len(data)
	}
	if withBytes < len(ids)/2 {
		t.Fatalf("only %d of %d leases had console bytes: the consoles did not stream, the test proves nothing", withBytes, len(ids))
	}
	t.Logf("%d leases, %d with console bytes, %d bytes compared", len(ids), withBytes, total)
}

// streamingBoards makes every board of a config written by supervisorConfig a simulated
// board that streams pseudo-random bytes at 115200 baud from its power-on for as long
// as the test runs.
func streamingBoards(t *testing.T, config string) {
	t.Helper()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, l := range strings.Split(string(b), "\n") {
		out = append(out, l)
		if strings.HasPrefix(l, "    labels: {") {
			out = append(out, fmt.Sprintf("    drivers: {virtual: {randomBytes: 1000000000, seed: %d}}", i))
		}
	}
	if err := os.WriteFile(config, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}
