package board

import (
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/connector"
)

// Console batching: a farm's consoles are unattended most of the time, and each event
// costs the same whatever its size (an outbox append, a disk write, a message on the
// link, a row at the coordinator), so the console output of unattended boards is
// gathered — per board, contiguous chunks of one lease merged into one event — and handed
// to the outbox as one EmitBatch per tick for all boards. Per tick the outbox does one
// delivery (one group commit) whatever the number of boards, and each board at most one
// event per lease, whatever its rate (up to MaxConsoleEvent bytes an event). An
// attended console (someone follows it or types into it) skips the wait: its chunk goes
// at once, after what its board had pending.
const (
	// ConsoleTick is how long unattended console output may wait before it is handed
	// to the outbox.
	ConsoleTick = time.Second
	// MaxConsoleEvent bounds the bytes of one merged console event.
	MaxConsoleEvent = 64 << 10
	// MaxConsoleBatch bounds the bytes held between ticks: past it the batch goes at
	// once.
	MaxConsoleBatch = 16 << 20
	// closeTimeout bounds how long Close waits for the outbox to take the last batch.
	closeTimeout = 5 * time.Second
)

// ConsoleBatch gathers the console events of a supervisor's boards between ticks. It is
// shared by the board actors (Config.Console) and safe for concurrent use; a goroutine
// it owns hands the batch to the outbox every tick until Close.
//
// Order: a board's console events reach the outbox in the order the board made them,
// and before anything the board sends after a Flush (so a lease's console is numbered
// before the lease's end: the board flushes when the lease releases it).
//
// A tick's batch is taken under the lock but joined and sent outside it (sendBatch):
// joining a second of a thousand boards' chunks (11 MB) took 5-9 ms, and the console
// readers, which add every chunk under the lock, waited that long, an attended
// console's next echo with them. Batches are sent one at a time, in the order they were
// taken (sendMu, acquired under the lock); a board's own send (Now, Flush, or Add
// after Close) waits for the batches that hold its earlier events, and for no other.
type ConsoleBatch struct {
	root   *actor.RootContext
	outbox *actor.PID
	tick   time.Duration

	mu      sync.Mutex
	pending []connector.Event
	// parts are the chunks merged into each pending event after its first (joined, in
	// one allocation of the exact size, when the event is sent); size is its bytes.
	parts  [][][]byte
	size   []int
	last   map[string]int // board -> index in pending of its latest event
	count  map[string]int // board -> how many of its events are pending
	bytes  int
	closed bool
	// inBatch holds the boards that had events in a batch taken since their last own
	// send (the batch may have been sent since: then waiting for it costs nothing).
	inBatch map[string]struct{}

	// sendMu is held from a batch's taking (under mu) until it is sent: batches go one at
	// a time, in the order they were taken.
	sendMu sync.Mutex
	// joining, if not nil, is called while a batch is being joined (tests).
	joining func()

	stop chan struct{}
	done chan struct{}
}

// NewConsoleBatch returns a batch handing console events to outbox every tick (zero:
// ConsoleTick).
func NewConsoleBatch(root *actor.RootContext, outbox *actor.PID, tick time.Duration) *ConsoleBatch {
	if tick <= 0 {
		tick = ConsoleTick
	}
	c := &ConsoleBatch{root: root, outbox: outbox, tick: tick, last: map[string]int{}, count: map[string]int{},
		inBatch: map[string]struct{}{}, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *ConsoleBatch) run() {
	defer close(c.done)
	t := time.NewTicker(c.tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			c.tickOnce()
		case <-c.stop:
			return
		}
	}
}

// tickOnce hands everything pending to the outbox, as one batch.
func (c *ConsoleBatch) tickOnce() {
	c.mu.Lock()
	b := c.takeAllLocked(nil)
	c.mu.Unlock()
	c.sendBatch(b)
}

// Add holds a console event (Board, JobID and Console set) until the next tick, merged
// into the board's previous one when that is of the same lease and ends where this one
// starts.
func (c *ConsoleBatch) Add(ev connector.Event) {
	c.mu.Lock()
	b := c.addLocked(ev)
	c.mu.Unlock()
	c.sendBatch(b) // past MaxConsoleBatch
}

// addLocked holds ev, and returns the batch to send when the bytes held reached
// MaxConsoleBatch.
func (c *ConsoleBatch) addLocked(ev connector.Event) *consoleBatch {
	if c.closed {
		if c.afterBatchLocked(ev.Board) {
			defer c.sendMu.Unlock()
		}
		c.root.Send(c.outbox, &actors.Emit{Event: ev})
		return nil
	}
	if i, ok := c.last[ev.Board]; ok {
		p := &c.pending[i]
		if p.JobID == ev.JobID && p.Console.Source == ev.Console.Source &&
			p.Console.Offset+uint64(c.size[i]) == ev.Console.Offset &&
			c.size[i]+len(ev.Console.Data) <= MaxConsoleEvent {
			c.parts[i] = append(c.parts[i], ev.Console.Data)
			c.size[i] += len(ev.Console.Data)
			return c.grownLocked(len(ev.Console.Data))
		}
	}
	c.pending = append(c.pending, ev)
	c.parts = append(c.parts, nil)
	c.size = append(c.size, len(ev.Console.Data))
	c.last[ev.Board] = len(c.pending) - 1
	c.count[ev.Board]++
	return c.grownLocked(len(ev.Console.Data))
}

func (c *ConsoleBatch) grownLocked(n int) *consoleBatch {
	c.bytes += n
	if c.bytes >= MaxConsoleBatch {
		return c.takeAllLocked(nil)
	}
	return nil
}

// afterBatchLocked waits until the batches holding the board's earlier events are sent,
// so that what the board sends now comes after them. It reports whether it holds sendMu
// for that (the caller sends, then releases it).
func (c *ConsoleBatch) afterBatchLocked(board string) bool {
	if _, ok := c.inBatch[board]; !ok {
		return false
	}
	delete(c.inBatch, board)
	// Batches take sendMu under mu, which is held: once it is free, every batch taken
	// before is sent.
	c.sendMu.Lock()
	return true
}

// Now hands ev to the outbox at once, after whatever its board had pending: the chunk
// of an attended console.
func (c *ConsoleBatch) Now(ev connector.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.afterBatchLocked(ev.Board) {
		defer c.sendMu.Unlock()
	}
	evs := c.takeLocked(ev.Board)
	if len(evs) == 0 {
		c.root.Send(c.outbox, &actors.Emit{Event: ev})
		return
	}
	c.root.Send(c.outbox, &actors.EmitBatch{Events: append(evs, ev)})
}

// Flush hands the board's pending events to the outbox now.
func (c *ConsoleBatch) Flush(board string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.afterBatchLocked(board) {
		defer c.sendMu.Unlock()
	}
	if evs := c.takeLocked(board); len(evs) > 0 {
		c.root.Send(c.outbox, &actors.EmitBatch{Events: evs})
	}
}

// takeLocked removes the board's pending events and returns them, in order.
func (c *ConsoleBatch) takeLocked(board string) []connector.Event {
	n := c.count[board]
	if n == 0 {
		return nil
	}
	out := make([]connector.Event, 0, n)
	kept, keptParts, keptSize := c.pending[:0], c.parts[:0], c.size[:0]
	for i, ev := range c.pending {
		if ev.Board == board {
			out = append(out, joinedEvent(ev, c.parts[i], c.size[i]))
			c.bytes -= c.size[i]
			continue
		}
		kept, keptParts, keptSize = append(kept, ev), append(keptParts, c.parts[i]), append(keptSize, c.size[i])
	}
	clear(c.pending[len(kept):])
	clear(c.parts[len(kept):])
	c.pending, c.parts, c.size = kept, keptParts, keptSize
	delete(c.count, board)
	delete(c.last, board)
	// The indexes of the events after the ones taken moved.
	for i, ev := range c.pending {
		c.last[ev.Board] = i
	}
	return out
}

// joinedEvent returns ev with the chunks merged into it (parts, size bytes in all)
// joined to its data, in one allocation of the exact size.
func joinedEvent(ev connector.Event, parts [][]byte, size int) connector.Event {
	if len(parts) == 0 {
		return ev
	}
	data := make([]byte, 0, size)
	data = append(data, ev.Console.Data...)
	for _, p := range parts {
		data = append(data, p...)
	}
	con := *ev.Console
	con.Data = data
	ev.Console = &con
	return ev
}

// consoleBatch is every event pending at a tick (or at Close, or past
// MaxConsoleBatch), taken to be joined and sent outside the lock.
type consoleBatch struct {
	pending []connector.Event
	parts   [][][]byte
	size    []int
	durable chan struct{}
}

// takeAllLocked takes every pending event as the next batch and acquires sendMu for it;
// sendBatch sends it and releases sendMu. With nothing pending it returns nil (and
// closes durable, if not nil: nothing to wait for).
func (c *ConsoleBatch) takeAllLocked(durable chan struct{}) *consoleBatch {
	if len(c.pending) == 0 {
		if durable != nil {
			close(durable)
		}
		return nil
	}
	b := &consoleBatch{pending: c.pending, parts: c.parts, size: c.size, durable: durable}
	for board := range c.count {
		c.inBatch[board] = struct{}{}
	}
	c.pending, c.parts, c.size = nil, nil, nil
	clear(c.last)
	clear(c.count)
	c.bytes = 0
	c.sendMu.Lock()
	return b
}

// sendBatch joins b's events and hands them to the outbox in one EmitBatch (with
// b.durable as its Durable channel), then lets the next batch go. Call it without mu.
func (c *ConsoleBatch) sendBatch(b *consoleBatch) {
	if b == nil {
		return
	}
	if c.joining != nil {
		c.joining()
	}
	for i := range b.pending {
		b.pending[i] = joinedEvent(b.pending[i], b.parts[i], b.size[i])
	}
	c.root.Send(c.outbox, &actors.EmitBatch{Events: b.pending, Durable: b.durable})
	c.sendMu.Unlock()
}

// Close stops the ticks and hands what is pending to the outbox, waiting (bounded) until
// the outbox has delivered it; later events go to the outbox one by one, at once. Call
// it while the outbox still runs (the host does, when it stops, before its children).
func (c *ConsoleBatch) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	durable := make(chan struct{})
	b := c.takeAllLocked(durable)
	c.mu.Unlock()
	c.sendBatch(b)
	close(c.stop)
	<-c.done
	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	select {
	case <-durable:
	case <-t.C:
	}
}
