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
// before the lease's end: the board flushes when the lease releases it). Every send to
// the outbox is made with the lock held, so that a tick and a board's flush cannot
// overtake each other.
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
		stop: make(chan struct{}), done: make(chan struct{})}
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
			c.mu.Lock()
			c.sendAllLocked(nil)
			c.mu.Unlock()
		case <-c.stop:
			return
		}
	}
}

// Add holds a console event (Board, JobID and Console set) until the next tick, merged
// into the board's previous one when that is of the same lease and ends where this one
// starts.
func (c *ConsoleBatch) Add(ev connector.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.root.Send(c.outbox, &actors.Emit{Event: ev})
		return
	}
	if i, ok := c.last[ev.Board]; ok {
		p := &c.pending[i]
		if p.JobID == ev.JobID && p.Console.Source == ev.Console.Source &&
			p.Console.Offset+uint64(c.size[i]) == ev.Console.Offset &&
			c.size[i]+len(ev.Console.Data) <= MaxConsoleEvent {
			c.parts[i] = append(c.parts[i], ev.Console.Data)
			c.size[i] += len(ev.Console.Data)
			c.grownLocked(len(ev.Console.Data))
			return
		}
	}
	c.pending = append(c.pending, ev)
	c.parts = append(c.parts, nil)
	c.size = append(c.size, len(ev.Console.Data))
	c.last[ev.Board] = len(c.pending) - 1
	c.count[ev.Board]++
	c.grownLocked(len(ev.Console.Data))
}

func (c *ConsoleBatch) grownLocked(n int) {
	c.bytes += n
	if c.bytes >= MaxConsoleBatch {
		c.sendAllLocked(nil)
	}
}

// Now hands ev to the outbox at once, after whatever its board had pending: the chunk
// of an attended console.
func (c *ConsoleBatch) Now(ev connector.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
			out = append(out, c.joined(i))
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

// joined returns pending event i with its merged chunks joined to its data.
func (c *ConsoleBatch) joined(i int) connector.Event {
	ev := c.pending[i]
	if len(c.parts[i]) == 0 {
		return ev
	}
	data := make([]byte, 0, c.size[i])
	data = append(data, ev.Console.Data...)
	for _, p := range c.parts[i] {
		data = append(data, p...)
	}
	con := *ev.Console
	con.Data = data
	ev.Console = &con
	return ev
}

// sendAllLocked hands every pending event to the outbox in one EmitBatch (with durable,
// if not nil, as its Durable channel; closed at once when nothing is pending).
func (c *ConsoleBatch) sendAllLocked(durable chan struct{}) {
	if len(c.pending) == 0 {
		if durable != nil {
			close(durable)
		}
		return
	}
	for i := range c.pending {
		c.pending[i] = c.joined(i)
	}
	c.root.Send(c.outbox, &actors.EmitBatch{Events: c.pending, Durable: durable})
	c.pending, c.parts, c.size = nil, nil, nil
	clear(c.last)
	clear(c.count)
	c.bytes = 0
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
	c.sendAllLocked(durable)
	c.mu.Unlock()
	close(c.stop)
	<-c.done
	t := time.NewTimer(closeTimeout)
	defer t.Stop()
	select {
	case <-durable:
	case <-t.C:
	}
}
