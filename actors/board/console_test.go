package board_test

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// slowOutbox stands in for the outbox: it records each message's console events in the
// order it handles them, and holds the first batch (a tick's output, or its first
// piece) until release is closed, as an outbox busy encoding a large tick does.
type slowOutbox struct {
	mu      sync.Mutex
	got     []connector.Event
	batches []int // bytes of each EmitBatch handled
	holding chan struct{}
	release chan struct{}
	held    bool
	more    chan struct{}
}

func (o *slowOutbox) Receive(ctx actor.Context) {
	var evs []connector.Event
	switch m := ctx.Message().(type) {
	case *actors.Emit:
		evs = []connector.Event{m.Event}
	case *actors.EmitBatch:
		if !o.held {
			o.held = true
			close(o.holding)
			<-o.release
		}
		evs = m.Events
		n := 0
		for _, ev := range evs {
			n += len(ev.Console.Data)
		}
		o.mu.Lock()
		o.batches = append(o.batches, n)
		o.mu.Unlock()
		defer func() {
			if m.Delivered != nil {
				close(m.Delivered)
			}
		}()
	default:
		return
	}
	o.mu.Lock()
	o.got = append(o.got, evs...)
	o.mu.Unlock()
	select {
	case o.more <- struct{}{}:
	default:
	}
}

func consoleEvent(b string, off uint64, data []byte) connector.Event {
	return connector.Event{Board: b, Console: &connector.Console{Source: jobs.SourceDriver, Data: data, Offset: off}}
}

// While a console is attended, a tick of unattended output is handed to the outbox in
// pieces, each once the one before was delivered: the attended board's chunk, sent while
// the outbox is busy with the first piece, is handled right after it, not after the
// whole tick. A board whose events wait in a later piece keeps its order when it sends
// at once.
func TestAttendedChunkOvertakesTheRestOfATick(t *testing.T) {
	sys := actor.NewActorSystem()
	o := &slowOutbox{holding: make(chan struct{}), release: make(chan struct{}), more: make(chan struct{}, 1)}
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return o }))
	defer sys.Root.Stop(pid)
	cb := board.NewConsoleBatch(sys.Root, pid, 20*time.Millisecond)
	defer cb.Close()

	cb.Now(consoleEvent("typed", 0, []byte("a"))) // someone types: the console is attended
	const boards, chunk = 100, 8 << 10
	for i := range boards {
		cb.Add(consoleEvent(fmt.Sprintf("b%03d", i), 0, bytes.Repeat([]byte{byte(i)}, chunk)))
	}
	select {
	case <-o.holding:
	case <-time.After(30 * time.Second):
		t.Fatal("no tick reached the outbox within 30s")
	}
	cb.Now(consoleEvent("typed", 1, []byte("b")))       // the echo of the next key
	cb.Now(consoleEvent("b099", chunk, []byte("late"))) // b099's first chunk waits in a later piece
	close(o.release)

	deadline := time.Now().Add(30 * time.Second)
	for {
		o.mu.Lock()
		n := len(o.got)
		o.mu.Unlock()
		if n >= boards+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the outbox got %d of %d events within 30s", n, boards+3)
		}
		select {
		case <-o.more:
		case <-time.After(100 * time.Millisecond):
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	pos := map[string][]int{}
	for i, ev := range o.got {
		pos[ev.Board] = append(pos[ev.Board], i)
	}
	for i := range boards {
		b := fmt.Sprintf("b%03d", i)
		want := 1
		if b == "b099" {
			want = 2
		}
		if len(pos[b]) != want {
			t.Errorf("board %s: %d events reached the outbox, want %d", b, len(pos[b]), want)
		}
	}
	if p := pos["b099"]; len(p) == 2 && (o.got[p[0]].Console.Offset != 0 || o.got[p[1]].Console.Offset != chunk) {
		t.Errorf("board b099's events out of order: offsets %d then %d", o.got[p[0]].Console.Offset, o.got[p[1]].Console.Offset)
	}
	typed := pos["typed"]
	if len(typed) != 2 {
		t.Fatalf("the attended board's chunks: %d reached the outbox, want 2", len(typed))
	}
	lastTick := 0
	for i := range boards - 1 {
		lastTick = max(lastTick, pos[fmt.Sprintf("b%03d", i)][0])
	}
	if typed[1] > lastTick {
		t.Errorf("the attended chunk was handled after the whole tick (at %d of %d events): it waited behind every board's output", typed[1], len(o.got))
	}
	for i, n := range o.batches {
		if n > board.MaxConsolePiece {
			t.Errorf("batch %d holds %d bytes, more than a piece (%d)", i, n, board.MaxConsolePiece)
		}
	}
}
