package hook

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultMaxOutput bounds the hook output a shim keeps in its spool when Spec.MaxOutput
// is zero.
const DefaultMaxOutput = 64 << 20

// pipeSize is the capacity asked for the hook's output pipe (the kernel may give less).
const pipeSize = 1 << 20

// spool is the shim's side of a hook's output: the hook writes to a pipe, and the shim
// copies what it reads to DIR/output, at most max bytes of it. Past the bound, and after
// a write error other than a full disk, the shim writes one marker line and goes on
// reading and discarding, so the hook never blocks on a full pipe and never fills the
// disk beyond the bound. A full disk (ENOSPC, EDQUOT) is waited out: what could not be
// written is held (a read's worth, and the lines of the shim's notes) and retried with
// back-off, and the pipe is not read meanwhile, so the hook's output waits in the pipe
// (the hook blocks on it) until there is space; the hook's timeout still applies. Once
// the shim gives up on the output (closeRead, see shim.endOutput), what is held is
// discarded, counted, with the marker line. Lines from the shim itself (note) are
// written on a line of their own, after whatever the hook wrote before them, and do not
// count against the bound.
type spool struct {
	f    *os.File // DIR/output
	max  int64
	logf func(format string, args ...any)

	r    *os.File        // the pipe's read end (non-blocking, in Go's poller); nil without a pipe
	rc   syscall.RawConn // of r
	done chan struct{}   // closed when copy has ended

	mu        sync.Mutex
	buf       []byte
	kept      int64  // hook bytes written to f
	discarded int64  // hook bytes read and thrown away
	atLineEnd bool   // the last byte written to f is a newline, or nothing was written
	stopped   bool   // no more hook output is written: bound reached or write error
	truncated bool   // the bound was reached
	werr      error  // the first write error
	held      []byte // read, not yet written: the disk is full
	heldHook  int64  // of held, bytes of the hook's (not of notes)

	abort     chan struct{} // closed by closeRead: held output is given up
	abortOnce sync.Once
}

func newSpool(f *os.File, max int64, logf func(string, ...any)) *spool {
	if max <= 0 {
		max = DefaultMaxOutput
	}
	return &spool{f: f, max: max, logf: logf, atLineEnd: true, done: make(chan struct{}), abort: make(chan struct{})}
}

// pipe creates the pipe the hook writes to and returns its write end (blocking, to be
// given to the hook and then closed by the caller). copy must be started afterwards.
func (s *spool) pipe() (*os.File, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A bigger pipe absorbs bursts while the shim writes; not fatal if refused.
	unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, pipeSize)
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, os.NewSyscallError("setnonblock", err)
	}
	s.r = os.NewFile(uintptr(p[0]), "hook-output")
	rc, err := s.r.SyscallConn()
	if err != nil {
		s.r.Close()
		s.r = nil
		unix.Close(p[1])
		return nil, err
	}
	s.rc = rc
	s.buf = make([]byte, 64<<10)
	return os.NewFile(uintptr(p[1]), "hook-output-w"), nil
}

// copy reads the pipe until every writer has closed it, or until the read end is closed
// (closeRead), and keeps what it reads.
func (s *spool) copy() {
	defer close(s.done)
	for {
		// While output is held (the disk is full), the pipe is not read.
		s.flushHeld()
		var end bool
		err := s.rc.Read(func(fd uintptr) bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			n, err := s.readOnce(int(fd))
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false // wait until readable
			case err != nil:
				s.logf("read hook output: %v", err)
				end = true
			case n == 0:
				end = true // EOF: no writer is left
			}
			return true
		})
		if err != nil || end {
			s.flushHeld()
			return
		}
	}
}

// Retry of writes to a full disk.
const (
	fullRetryMin = 20 * time.Millisecond
	fullRetryMax = time.Second
)

func diskFull(err error) bool { return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) }

// write writes p (hook bytes if hook) to the file, or holds it if the disk is full (or
// output is held already: order is kept). It returns the other write errors.
func (s *spool) write(p []byte, hook bool) error {
	if len(s.held) > 0 {
		s.hold(p, hook)
		return nil
	}
	n, err := s.f.Write(p)
	if hook {
		s.kept += int64(n)
	}
	if n > 0 {
		s.atLineEnd = p[n-1] == '\n'
	}
	if err != nil && diskFull(err) {
		s.logf("write hook output: %v; the output waits in the pipe until there is space", err)
		s.hold(p[n:], hook)
		return nil
	}
	return err
}

func (s *spool) hold(p []byte, hook bool) {
	s.held = append(s.held, p...)
	if hook {
		s.heldHook += int64(len(p))
	}
}

// flushHeld writes what is held, waiting (without the lock) with back-off while the disk
// is full, until it is written or the output is given up (closeRead): then it is
// discarded and counted, and the marker line written if it can be.
func (s *spool) flushHeld() {
	delay := fullRetryMin
	for {
		s.mu.Lock()
		if len(s.held) == 0 {
			s.mu.Unlock()
			return
		}
		select {
		case <-s.abort:
			s.discarded += s.heldHook
			s.held, s.heldHook = nil, 0
			s.stopped, s.werr = true, unix.ENOSPC
			s.writeLine(fmt.Sprintf("JMP_WARN: boardvisor: output truncated after %d bytes: cannot write the spool: %v", s.kept, unix.ENOSPC))
			s.held = nil // a marker that could not be written goes too
			s.mu.Unlock()
			return
		default:
		}
		n, err := s.f.Write(s.held)
		if n > 0 {
			s.atLineEnd = s.held[n-1] == '\n'
			hook := min(int64(n), s.heldHook)
			s.kept += hook
			s.heldHook -= hook
			s.held = s.held[n:]
		}
		if len(s.held) == 0 {
			s.held, s.heldHook = nil, 0
			s.logf("hook output written again")
		}
		if err != nil && !diskFull(err) {
			s.discarded += s.heldHook
			s.held, s.heldHook = nil, 0
			s.stopped, s.werr = true, err
			s.logf("write hook output: %v; discarding the rest of it", err)
		}
		s.mu.Unlock()
		if err == nil || !diskFull(err) {
			continue
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.abort:
		}
		t.Stop()
		delay = min(delay*2, fullRetryMax)
	}
}

// waitingForSpace tells whether output is held for lack of space.
func (s *spool) waitingForSpace() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) > 0
}

// readOnce reads from the pipe once and keeps what it read. s.mu is held.
func (s *spool) readOnce(fd int) (int, error) {
	for {
		n, err := unix.Read(fd, s.buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n > 0 {
			s.keep(s.buf[:n])
		}
		return max(n, 0), err
	}
}

// keep writes hook output to the spool, within the bound. s.mu is held.
func (s *spool) keep(p []byte) {
	if s.stopped {
		s.discarded += int64(len(p))
		return
	}
	over := false
	if room := s.max - s.kept - s.heldHook; int64(len(p)) > room {
		s.discarded += int64(len(p)) - room
		p, over = p[:room], true
	}
	if len(p) > 0 {
		kept := s.kept
		if err := s.write(p, true); err != nil {
			n := s.kept - kept
			s.discarded += int64(len(p)) - n
			s.stopped, s.werr = true, err
			s.logf("write hook output: %v; discarding the rest of it", err)
			s.writeLine(fmt.Sprintf("JMP_WARN: boardvisor: output truncated after %d bytes: cannot write the spool: %v", s.kept, cause(err)))
			return
		}
	}
	if over {
		s.stopped, s.truncated = true, true
		s.writeLine(fmt.Sprintf("JMP_WARN: boardvisor: output truncated after %d bytes", s.kept))
	}
}

// cause returns the system error inside err ("no space left on device").
func cause(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// writeLine appends a line of the shim's own to the spool, starting a new line if the
// hook left one unfinished. s.mu is held.
func (s *spool) writeLine(line string) {
	if !s.atLineEnd {
		line = "\n" + line
	}
	if err := s.write([]byte(line+"\n"), false); err != nil {
		s.logf("write output: %v (line %q)", err, line)
	}
}

// note appends a line of the shim's own. Everything the hook wrote to the pipe before
// the call is written to the spool first, so a note about an event (the hook exited,
// timed out) comes after the hook's output from before it.
func (s *spool) note(line string) {
	if s.rc != nil {
		err := s.rc.Control(func(fd uintptr) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.drain(int(fd))
			s.writeLine(line)
		})
		if err == nil {
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writeLine(line)
}

// drain keeps what the pipe holds now (not what is written meanwhile, so a hook that
// writes without pause cannot hold the shim here). s.mu is held.
func (s *spool) drain(fd int) {
	avail, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD: bytes in the pipe
	if err != nil {
		return
	}
	for avail > 0 {
		n, err := s.readOnce(fd)
		if err != nil || n == 0 {
			return
		}
		avail -= n
	}
}

// closeRead ends copy: the read end is closed, and whatever is still written to the
// pipe is lost (its writers get EPIPE). It returns once copy has ended.
func (s *spool) closeRead() {
	s.abortOnce.Do(func() { close(s.abort) })
	if s.r == nil {
		s.flushHeld()
		return
	}
	s.r.Close() // a second Close only returns an error
	<-s.done
}

// counts returns the bytes kept and discarded, and whether the output was truncated.
func (s *spool) counts() (kept, discarded int64, truncated bool, werr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kept, s.discarded, s.truncated, s.werr
}
