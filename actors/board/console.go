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
//
// The outbox handles its messages one after the other, and a tick of a thousand boards
// at 115200 baud is ~11 MB to encode and append (5 to 70 ms on a loaded two-core host):
// an attended chunk sent meanwhile would wait behind all of it. So while a console is
// attended (a chunk went through Now within the last Interactive), a tick is handed
// over in pieces of at most MaxConsolePiece bytes (whole events: still one event per
// board and lease per tick), each once the outbox has delivered the one before: an
// attended chunk waits behind one piece at most. Unattended, a tick is one delivery.
const (
	// ConsoleTick is how long unattended console output may wait before it is handed
	// to the outbox.
	ConsoleTick = time.Second
	// MaxConsoleEvent bounds the bytes of one merged console event.
	MaxConsoleEvent = 64 << 10
	// MaxConsoleBatch bounds the bytes held between ticks (pending, and the pieces of
	// a tick not yet handed over): past it they all go at once.
	MaxConsoleBatch = 16 << 20
	// MaxConsolePiece bounds the bytes of one piece of a tick while a console is
	// attended.
	MaxConsolePiece = 256 << 10
	// Interactive is how long after an attended chunk the ticks go in pieces.
	Interactive = 5 * time.Second
	// pieceTimeout bounds the wait for the outbox to deliver one piece: past it the
	// rest of the tick goes at once.
	pieceTimeout = 5 * time.Second
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
	// sending is what is left of a tick being handed over in pieces (joined events,
	// older than any of pending), sendingBytes its bytes; lastNow is when a chunk last
	// went through Now.
	sending      []connector.Event
	sendingBytes int
	lastNow      time.Time

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
		case <-c.stop:
			return
		}
		c.mu.Lock()
		if time.Since(c.lastNow) >= Interactive {
			c.sendAllLocked(nil)
			c.mu.Unlock()
			continue
		}
		for i := range c.pending {
			c.pending[i] = c.joined(i)
		}
		c.sending = append(c.sending, c.pending...)
		c.sendingBytes += c.bytes
		c.resetPendingLocked()
		c.mu.Unlock()
		if !c.sendPieces() {
			return
		}
	}
}

// sendPieces hands c.sending to the outbox a piece at a time, each once the one before
// was delivered. It returns false if the batch is being closed.
func (c *ConsoleBatch) sendPieces() bool {
	timer := time.NewTimer(pieceTimeout)
	defer timer.Stop()
	for {
		c.mu.Lock()
		n, size := 0, 0
		for n < len(c.sending) && (n == 0 || size+len(c.sending[n].Console.Data) <= MaxConsolePiece) {
			size += len(c.sending[n].Console.Data)
			n++
		}
		if n == 0 {
			c.mu.Unlock()
			return true
		}
		piece := c.sending[:n:n]
		c.sending = c.sending[n:]
		c.sendingBytes -= size
		if len(c.sending) == 0 {
			c.sending = nil
		}
		delivered := make(chan struct{})
		c.root.Send(c.outbox, &actors.EmitBatch{Events: piece, Delivered: delivered})
		c.mu.Unlock()
		timer.Reset(pieceTimeout)
		select {
		case <-delivered:
		case <-timer.C:
			// The outbox is stuck or gone: no more pacing for this tick.
			c.mu.Lock()
			c.sendAllLocked(nil)
			c.mu.Unlock()
			return true
		case <-c.stop:
			return false
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
	if c.bytes+c.sendingBytes >= MaxConsoleBatch {
		c.sendAllLocked(nil)
	}
}

// Now hands ev to the outbox at once, after whatever its board had pending: the chunk
// of an attended console.
func (c *ConsoleBatch) Now(ev connector.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastNow = time.Now()
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

// takeLocked removes the board's pending events (those of a tick being handed over
// first) and returns them, in order.
func (c *ConsoleBatch) takeLocked(board string) []connector.Event {
	var out []connector.Event
	if len(c.sending) > 0 {
		kept := c.sending[:0]
		for _, ev := range c.sending {
			if ev.Board == board {
				out = append(out, ev)
				c.sendingBytes -= len(ev.Console.Data)
				continue
			}
			kept = append(kept, ev)
		}
		clear(c.sending[len(kept):])
		c.sending = kept
	}
	n := c.count[board]
	if n == 0 {
		return out
	}
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

// sendAllLocked hands every held event (what is left of a tick being handed over in
// pieces, then pending) to the outbox in one EmitBatch (with durable, if not nil, as its
// Durable channel; closed at once when nothing is held).
func (c *ConsoleBatch) sendAllLocked(durable chan struct{}) {
	if len(c.pending) == 0 && len(c.sending) == 0 {
		if durable != nil {
			close(durable)
		}
		return
	}
	for i := range c.pending {
		c.pending[i] = c.joined(i)
	}
	evs := c.pending
	if len(c.sending) > 0 {
		evs = append(c.sending, c.pending...)
	}
	c.root.Send(c.outbox, &actors.EmitBatch{Events: evs, Durable: durable})
	c.sending, c.sendingBytes = nil, 0
	c.resetPendingLocked()
}

// resetPendingLocked empties pending (its events were handed on).
func (c *ConsoleBatch) resetPendingLocked() {
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
