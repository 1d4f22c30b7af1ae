package serial

import (
	"errors"
	"sync"

	"github.com/boardvisor/boardvisor/drivers"
	"golang.org/x/sys/unix"
)

// The attended reader: one more goroutine, with an epoll set of its own, that reads the
// attended consoles as soon as bytes come, apart from the readers' rounds.
//
// Why: a reader's round reads every console due or ready, one after the other (on the
// console bench, 1,000 consoles streaming: rounds of up to 450 consoles, p99 10-24 ms
// and up to 34 ms on a busy 2-core host). An echo that came during a round waited for
// its end, whatever the console's place in the next one: the keystroke echo's p99 was
// that of the rounds. Here an attended console is also registered in this reader's set
// (level-triggered EPOLLIN), which holds only the attended consoles: a few, and quiet
// but for what someone types and its answer.
//
// A console stays registered with its own reader meanwhile, which leaves it unarmed
// (conn.fast) but may still read it once (a visit under way, a pause that ends): both
// read it under the console's lock, and out is called under it too, so its bytes go out
// once each and in order, whichever reads them. A failure found here (a hangup, EIO)
// fails the console as its reader would. When the console is no longer attended it goes
// back to its reader (conn.handBack).
type attendedReader struct {
	epollSet // closed by the goroutine itself, when it stops

	mu    sync.Mutex
	conns map[int32]*conn
	stop  bool
	buf   []byte // used by the goroutine only
}

var (
	attendedMu sync.Mutex
	// attended is the process's attended reader while it has consoles (nil otherwise).
	attended *attendedReader
)

// attend registers c with the attended reader, starting it if need be. Registering a
// console twice is a no-op. Call with c.d.attMu held.
func attend(c *conn) error {
	attendedMu.Lock()
	defer attendedMu.Unlock()
	if attended == nil {
		a, err := newAttendedReader()
		if err != nil {
			return err
		}
		attended = a
	}
	a := attended
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conns[int32(c.fd)] == c {
		return nil
	}
	// Level-triggered: bytes waiting now are reported at once, and a console that this
	// reader could not drain in one visit is reported again.
	if err := unix.EpollCtl(a.ep, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd)}); err != nil {
		return err
	}
	a.conns[int32(c.fd)] = c
	c.fast.Store(true)
	return nil
}

// unattend unregisters c from the attended reader (if it is there; a console that
// stays open then goes back to its own reader, see conn.handBack), and stops the
// reader when it has no console left. It waits for nothing (SetAttended is called
// under locks that the reader's out calls may take): the reader may still be reading c
// when it returns (Run's close then waits for that read, see reader.remove), and a
// stopped reader closes its own descriptors. Call with c.d.attMu held.
func unattend(c *conn) {
	attendedMu.Lock()
	defer attendedMu.Unlock()
	a := attended
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.conns[int32(c.fd)] == c {
		delete(a.conns, int32(c.fd))
		_ = unix.EpollCtl(a.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	}
	if len(a.conns) == 0 {
		// Under a.mu, so that the reader, which looks at stop under it, closes wake
		// only after this kick.
		a.stop = true
		a.kick()
		attended = nil
	}
}

func newAttendedReader() (*attendedReader, error) {
	set, err := newEpollSet()
	if err != nil {
		return nil, err
	}
	a := &attendedReader{epollSet: set, conns: map[int32]*conn{}, buf: make([]byte, ReadBufferSize)}
	go a.run()
	return a, nil
}

// attendedWait bounds one wait of the attended reader (it waits for events, not for
// time: the bound only keeps the wait finite).
const attendedWait = 10_000 // ms

func (a *attendedReader) run() {
	defer a.close()
	evs := make([]unix.EpollEvent, 16)
	type readyConn struct {
		c   *conn
		hup bool
	}
	var ready []readyConn
	for {
		n, err := a.wait(evs, attendedWait)
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Cannot happen with a valid epoll set. The consoles are still read by
			// their own readers, in rounds: no byte is lost. The next attend starts
			// another reader.
			attendedMu.Lock()
			if attended == a {
				attended = nil
			}
			attendedMu.Unlock()
			a.mu.Lock()
			a.stop = true
			conns := a.conns
			a.conns = map[int32]*conn{}
			a.mu.Unlock()
			for _, c := range conns {
				c.handBack()
			}
			return
		}
		ready = ready[:0]
		a.mu.Lock()
		if a.stop {
			a.mu.Unlock()
			return
		}
		for _, ev := range evs[:n] {
			if c := a.conns[ev.Fd]; c != nil {
				ready = append(ready, readyConn{c, ev.Events&(unix.EPOLLHUP|unix.EPOLLERR) != 0})
			}
		}
		a.mu.Unlock()
		for _, rc := range ready {
			if c := rc.c; !a.read(c, rc.hup) {
				// Failed (or gone): no more events for it here, not even a hangup's.
				a.mu.Lock()
				if a.conns[int32(c.fd)] == c {
					delete(a.conns, int32(c.fd))
					_ = unix.EpollCtl(a.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
				}
				a.mu.Unlock()
			}
		}
	}
}

// read reads c until the kernel's buffer is drained (or maxReadsPerVisit reads: the
// level-triggered set reports it again), handing each chunk to out. It reports false
// once c is failed or gone. A hangup reported with nothing to read fails c (the set is
// level-triggered: it would be reported again at once, for ever).
func (a *attendedReader) read(c *conn, hup bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.failed {
		return false
	}
	for i := range maxReadsPerVisit {
		_, next := c.readChunk(a.buf)
		switch next {
		case readMore:
			continue
		case readDrained:
			if hup && i == 0 {
				c.failWith(drivers.Absent(c.d.errorf("device gone: hangup")))
				return false
			}
		case readFailed:
			return false
		}
		return true
	}
	return true
}
