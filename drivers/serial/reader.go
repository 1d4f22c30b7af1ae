package serial

import (
	"container/heap"
	"errors"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"golang.org/x/sys/unix"
)

// The console readers: a few goroutines (one per CPU, up to 4) read every console of the
// process.
//
// Why not Go's poller: it registers each descriptor for input and output, edge
// triggered, and a tty reports itself writable on every wake-up of its wait queue, which
// its line discipline does for every chunk that comes in. A console fed every few
// milliseconds (a UART interrupt, a simulated board's write) woke the runtime's poller
// that often, paused or not: with a thousand consoles, more CPU went to those wake-ups
// than to the reads (make bench's console sweep measures it). And a goroutine and a
// timer per console cost a wake-up each per read. Only the reader's own epoll set is
// in Go's poller: it is readable while a console it arms has input, so the reader
// waits parked, not in a blocking system call (see reader.wait).
//
// Here each console is in one of three states, changed by the reader goroutine only:
//
//   - paused (unattended, bytes flowing): in the due heap, not armed in the epoll set, so
//     incoming bytes wake nobody; at its time it is read, whatever came meanwhile;
//   - armed (quiet, or attended): waiting for EPOLLIN once (EPOLLONESHOT), read as soon as
//     a byte comes;
//   - failed: read no more; its Run returns the error.
//
// After a read that drained the kernel's buffer, an attended console is armed again, an
// unattended one paused for nextPause (its rate fitted into PendingBudget, so that the
// line discipline's 4 KiB never fill: no byte is lost or held back by coalescing); a read
// that finds nothing arms it. SetAttended cuts a pause short (readNow). The reader holds a
// console's lock while it reads it, and removal takes that lock, so no read and no out
// call happen after remove returns.
type reader struct {
	epollSet

	mu    sync.Mutex
	conns map[int32]*conn
	due   dueHeap
	stop  bool
	done  chan struct{}
	buf   []byte // used by the reader goroutine only
	users int    // Runs using it (under sharedMu)
	// nextChecks is when the reader next looks for consoles whose path is due a check.
	nextChecks time.Time
}

// conn is one console's registration.
type conn struct {
	r    *reader
	fd   int
	d    *Driver
	out  func([]byte)
	fail chan error // capacity 1: the error that ends Run

	mu   sync.Mutex // held while the reader reads it
	gone bool       // removed: never read again

	// Reader goroutine's (at and index under reader.mu).
	at         time.Time // when it is read next, while in the due heap
	index      int       // in the due heap; -1 if not there
	cycleStart time.Time
	cycleBytes int
	failed     bool
	// fast is set while the attended reader holds the console (attended.go): then its
	// reader leaves it unarmed, so that only the attended reader wakes for its bytes.
	fast      atomic.Bool
	id        deviceID  // the device opened, to notice its path naming another
	nextCheck time.Time // when the path is checked next (see checkPaths)
}

var (
	sharedMu sync.Mutex
	// shared are the process's readers (readerShards of them at most, each its own
	// goroutine and epoll set): a console goes to the one with the fewest, so that on a
	// host with more cores the reads spread, and on a busy one a reader starved of CPU
	// for a while holds back only its share.
	shared []*reader
)

// readerShards is how many readers the process has at most: one per CPU the Go
// runtime uses (the supervisor runs more Ps than CPUs: not one per P), up to 4.
func readerShards() int { return min(max(min(runtime.GOMAXPROCS(0), runtime.NumCPU()), 1), 4) }

// acquireReader returns the reader with the fewest consoles, starting another while
// there are fewer than readerShards and none is idle.
func acquireReader() (*reader, error) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	var best *reader
	for _, r := range shared {
		if best == nil || r.users < best.users {
			best = r
		}
	}
	if best == nil || (best.users > 0 && len(shared) < readerShards()) {
		r, err := newReader()
		switch {
		case err == nil:
			shared = append(shared, r)
			best = r
		case best == nil:
			return nil, err
		}
	}
	best.users++
	return best, nil
}

// releaseReader stops a reader when its last user leaves.
func releaseReader(r *reader) {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if r.users--; r.users > 0 {
		return
	}
	shared = slices.DeleteFunc(shared, func(x *reader) bool { return x == r })
	r.mu.Lock()
	r.stop = true
	r.mu.Unlock()
	r.kick()
	<-r.done
	r.close()
}

func newReader() (*reader, error) {
	set, err := newEpollSet()
	if err != nil {
		return nil, err
	}
	r := &reader{epollSet: set, conns: map[int32]*conn{}, done: make(chan struct{}), buf: make([]byte, ReadBufferSize)}
	go r.run()
	return r, nil
}

// epollSet is an epoll set with an eventfd in it (wake) that interrupts its wait. epf
// holds the set for Go's poller: its owner waits for the set to have events there
// (wait), parked like any goroutine waiting for a socket, rather than in a blocking
// epoll_wait that holds a thread and makes the runtime hand its processor over at every
// wait. The console readers and the attended reader each own one.
type epollSet struct {
	ep, wake int
	epf      *os.File
	epc      syscall.RawConn
}

func newEpollSet() (epollSet, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return epollSet{}, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(ep)
		return epollSet{}, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return epollSet{}, err
	}
	// Non-blocking, so that os.NewFile hands it to Go's poller (an epoll set is itself
	// pollable: readable while it has events).
	if err := unix.SetNonblock(ep, true); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return epollSet{}, err
	}
	epf := os.NewFile(uintptr(ep), "console-epoll")
	epc, err := epf.SyscallConn()
	if err != nil {
		epf.Close()
		unix.Close(wake)
		return epollSet{}, err
	}
	return epollSet{ep: ep, wake: wake, epf: epf, epc: epc}, nil
}

// wait puts the set's events in evs and returns how many, waiting up to timeout
// (milliseconds) for one: parked in Go's poller until the set is readable or the
// deadline passes. A kick is consumed here, not returned.
func (s *epollSet) wait(evs []unix.EpollEvent, timeout int) (int, error) {
	n, err := s.poll(evs, timeout)
	k := 0
	for _, ev := range evs[:n] {
		if int(ev.Fd) == s.wake {
			var b [8]byte
			_, _ = unix.Read(s.wake, b[:])
			continue
		}
		evs[k] = ev
		k++
	}
	return k, err
}

func (s *epollSet) poll(evs []unix.EpollEvent, timeout int) (int, error) {
	if timeout == 0 {
		n, err := unix.EpollWait(s.ep, evs, 0)
		return max(n, 0), err
	}
	if err := s.epf.SetReadDeadline(time.Now().Add(time.Duration(timeout) * time.Millisecond)); err != nil {
		return 0, err
	}
	// Read looks first, and parks only if nothing is ready.
	var n int
	var err error
	rerr := s.epc.Read(func(fd uintptr) bool {
		n, err = unix.EpollWait(int(fd), evs, 0)
		if errors.Is(err, unix.EINTR) {
			n, err = 0, nil
			return true // the caller loops
		}
		return n != 0 || err != nil
	})
	switch {
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		return 0, nil
	case rerr != nil:
		return 0, rerr
	}
	return max(n, 0), err
}

// kick interrupts the set's wait (to see a change of the due heap, or stop).
func (s *epollSet) kick() {
	_, _ = unix.Write(s.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
}

// close closes the set and its eventfd.
func (s *epollSet) close() {
	s.epf.Close() // closes ep
	unix.Close(s.wake)
}

// newConn returns d's registration of fd with r, not yet added. It is whole before Run
// hands it to anyone (the reader, then SetAttended through Driver.attConn): a
// registration completed in add, after SetAttended could see it, was a data race
// (TestSetAttendedWhileRunStarts).
func newConn(r *reader, fd int, d *Driver, out func([]byte), id deviceID) *conn {
	return &conn{r: r, fd: fd, d: d, out: out, fail: make(chan error, 1), id: id, index: -1, cycleStart: time.Now()}
}

// add registers a console made by newConn; it is read at once (bytes may be waiting).
func (r *reader) add(c *conn) error {
	// Registered without EPOLLIN: only a hangup or an error is reported until it is armed.
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: unix.EPOLLONESHOT, Fd: int32(c.fd)}); err != nil {
		return err
	}
	r.mu.Lock()
	r.conns[int32(c.fd)] = c
	c.at = time.Now()
	c.nextCheck = c.at.Add(c.d.cfg.CheckInterval)
	heap.Push(&r.due, c)
	r.mu.Unlock()
	r.kick()
	return nil
}

// remove unregisters a console; when it returns, the reader no longer reads it nor calls
// its out.
func (r *reader) remove(c *conn) {
	r.mu.Lock()
	delete(r.conns, int32(c.fd))
	if c.index >= 0 {
		heap.Remove(&r.due, c.index)
	}
	r.mu.Unlock()
	_ = unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	c.mu.Lock()
	c.gone = true
	c.mu.Unlock()
}

// readNow has the reader read a console at once: it goes into the due heap, due now
// (moved there if it waits in it). For a console that became attended (its pause ends)
// and for one the attended reader let go (its reader had left it unarmed). A console
// already removed is left alone.
func (r *reader) readNow(c *conn) {
	r.mu.Lock()
	if r.conns[int32(c.fd)] != c {
		r.mu.Unlock()
		return
	}
	r.dueLocked(c, time.Now())
	r.mu.Unlock()
	r.kick()
}

// handBack gives c back to its own reader when the attended reader lets it go: the
// reader arms it again after its visits, and reads it now (it had left it unarmed, so
// bytes that came meanwhile woke nobody).
func (c *conn) handBack() {
	c.fast.Store(false)
	c.r.readNow(c)
}

// dueLocked has c read at at: pushed into the due heap, or moved there if it is in it
// already. Call with r.mu held.
func (r *reader) dueLocked(c *conn, at time.Time) {
	c.at = at
	if c.index < 0 {
		heap.Push(&r.due, c)
	} else {
		heap.Fix(&r.due, c.index)
	}
}

func (r *reader) run() {
	defer close(r.done)
	evs := make([]unix.EpollEvent, 256)
	var ready []*conn
	for {
		r.mu.Lock()
		if r.stop {
			r.mu.Unlock()
			return
		}
		// A round of path checks is due at least every checkRound.
		timeout := max(int((time.Until(r.nextChecks)+time.Millisecond-1)/time.Millisecond), 0)
		if len(r.due) > 0 {
			// Paused consoles are read in rounds, dueSlot apart: one wake-up reads all
			// those due in the slot (a pause ends up to a slot late).
			at := r.due[0].at
			if rem := at.UnixNano() % int64(dueSlot); rem != 0 {
				at = at.Add(dueSlot - time.Duration(rem))
			}
			timeout = min(timeout, max(int((time.Until(at)+time.Millisecond-1)/time.Millisecond), 0))
		}
		r.mu.Unlock()
		n, err := r.wait(evs, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Cannot happen with a valid epoll set: should it, every console's Run fails
			// (its driver is restarted, with a reader of its own) rather than hang.
			r.broken(err)
			return
		}
		now := time.Now()
		ready = ready[:0]
		r.mu.Lock()
		for _, ev := range evs[:n] {
			if c := r.conns[ev.Fd]; c != nil {
				if c.index >= 0 { // a hangup reported while paused
					heap.Remove(&r.due, c.index)
				}
				ready = append(ready, c)
			}
		}
		for len(r.due) > 0 && !r.due[0].at.After(now) {
			ready = append(ready, heap.Pop(&r.due).(*conn))
		}
		var checks []*conn
		if !now.Before(r.nextChecks) {
			r.nextChecks = now.Add(checkRound)
			for _, c := range r.conns {
				if !now.Before(c.nextCheck) {
					c.nextCheck = now.Add(c.d.cfg.CheckInterval)
					checks = append(checks, c)
				}
			}
		}
		r.mu.Unlock()
		r.readRound(ready)
		for _, c := range checks {
			r.check(c)
		}
	}
}

// yieldEvery is how many consoles a reader's round reads between two yields of its
// thread's CPU (sched_yield). A round is one long burst on one CPU: up to several
// hundred consoles, p90 1.4-6.1 ms when a thousand stream (docs/console.md). The kernel
// lets a thread it wakes on that CPU (the echo path's, in this process or in another)
// preempt it only once the burst's slice is over, which on a host with a 250 Hz tick
// is up to 4 ms later; a scheduler trace of the console bench showed the echo path's
// threads waiting over 2 ms for a CPU mostly behind this process's own threads. A
// yield ends the slice early when another thread waits, and costs one system call
// when none does. Measured on the console bench (2026-12-02, 1,330 keys against 1,139
// without): keystroke echo p90 4.50 against 5.55 ms, p99 10.5 against 12.5 ms, keys
// over 10 ms 1.3 % against 1.8 %.
const yieldEvery = 32

// readRound reads the consoles of one wake-up, yielding the CPU every yieldEvery of
// them; it returns how many times it yielded.
func (r *reader) readRound(ready []*conn) (yields int) {
	for i, c := range ready {
		if i > 0 && i%yieldEvery == 0 {
			_, _, _ = unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
			yields++
		}
		r.read(c)
	}
	return yields
}

// checkRound is how often the reader looks for consoles due a path check.
const checkRound = 100 * time.Millisecond

// check fails a console whose path no longer names the device it opened (a path that
// goes away or changes without a hangup: a symlink re-pointed, a udev rename).
func (r *reader) check(c *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.failed {
		return
	}
	if err := c.d.checkPath(c.id); err != nil {
		c.failWith(err)
	}
}

// broken fails every console and makes the next Run start another reader.
func (r *reader) broken(err error) {
	sharedMu.Lock()
	// No new console goes to it; its users still release it, the last one closes it.
	shared = slices.DeleteFunc(shared, func(x *reader) bool { return x == r })
	sharedMu.Unlock()
	r.mu.Lock()
	conns := make([]*conn, 0, len(r.conns))
	for _, c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		c.failWith(c.d.errorf("console reader: wait: %w", err))
		c.mu.Unlock()
	}
}

// lineDisciplineFull is a read size that says the line discipline's buffer (4 KiB, less
// one byte) was full, so that more may be waiting in the tty's flip buffers.
const lineDisciplineFull = 4000

// dueSlot is the granularity of the paused consoles' reads (see run).
const dueSlot = 20 * time.Millisecond

// maxReadsPerVisit bounds the reads of one console in a row, so that a flood does not
// hold the reader from the others: past it the console is armed, and its turn comes again
// with the next events.
const maxReadsPerVisit = 16

// read reads a console until it has drained the kernel's buffer, then arms or pauses it.
func (r *reader) read(c *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone || c.failed {
		return
	}
	got := false
	for i := 0; ; i++ {
		if i == maxReadsPerVisit {
			r.rearm(c) // still more: readable at once, after the others' turn
			return
		}
		n, next := c.readChunk(r.buf)
		got = got || n > 0
		switch next {
		case readMore:
			continue
		case readDrained:
			r.rearm(c) // nothing more: wake on the next byte
			return
		case readFailed:
			return
		}
		break
	}
	if !got {
		r.rearm(c)
		return
	}
	if c.d.attended.Load() || c.d.pause <= 0 {
		r.rearm(c)
		return
	}
	now := time.Now()
	wait := nextPause(c.d.pause, c.cycleBytes, now.Sub(c.cycleStart))
	c.cycleStart, c.cycleBytes = now, 0
	if wait <= 0 {
		r.rearm(c)
		return
	}
	r.mu.Lock()
	r.dueLocked(c, now.Add(wait)) // readNow may have put it there meanwhile
	r.mu.Unlock()
	// An attended switch between the check above and the push would wait for the pause.
	if c.d.attended.Load() {
		r.readNow(c)
	}
}

// rearm arms the console after a visit, unless the attended reader holds it.
func (r *reader) rearm(c *conn) {
	if !c.fast.Load() {
		r.arm(c)
	}
}

// readOutcome is what a console's visit does after one read (readChunk).
type readOutcome int

const (
	readDone    readOutcome = iota // a short read: the kernel's buffer is drained
	readMore                       // read again (EINTR, or the line discipline was full)
	readDrained                    // EAGAIN: nothing was there
	readFailed                     // the console failed (failWith)
)

// readChunk reads c once into buf and hands what it read to out, as a fresh slice.
// Call with c.mu held. It returns the bytes read and what the visit does next.
func (c *conn) readChunk(buf []byte) (int, readOutcome) {
	n, err := unix.Read(c.fd, buf)
	if n > 0 {
		c.cycleBytes += n
		c.out(append([]byte(nil), buf[:n]...))
	}
	n = max(n, 0)
	switch {
	case errors.Is(err, unix.EINTR):
		return n, readMore
	case errors.Is(err, unix.EAGAIN):
		return n, readDrained
	case err != nil:
		c.failWith(c.d.readError(err))
		return n, readFailed
	case n == 0:
		c.failWith(drivers.Absent(c.d.errorf("device gone: hangup (end of file)")))
		return n, readFailed
	case n >= lineDisciplineFull:
		return n, readMore // the line discipline was full: more is waiting behind it
	}
	return n, readDone
}

// arm waits for the console's next byte (once).
func (r *reader) arm(c *conn) {
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(c.fd)}); err != nil {
		c.failWith(c.d.errorf("wait for input: %w", err))
	}
}

func (c *conn) failWith(err error) {
	c.failed = true
	select {
	case c.fail <- err:
	default:
	}
}

// readError names a read failure: a device that went away is absent (its Run is tried
// again later).
func (d *Driver) readError(err error) error {
	switch {
	case errors.Is(err, unix.EIO), errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENODEV):
		return drivers.Absent(d.errorf("device gone: read: %w", err))
	default:
		return d.errorf("read: %w", err)
	}
}

// dueHeap orders paused consoles by when they are read next.
type dueHeap []*conn

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *dueHeap) Push(x any) {
	c := x.(*conn)
	c.index = len(*h)
	*h = append(*h, c)
}
func (h *dueHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.index = -1
	return c
}
