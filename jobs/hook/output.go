package hook

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultMaxOutput bounds the hook output a shim keeps in its spool when Spec.MaxOutput
// is zero.
const DefaultMaxOutput = 64 << 20

// pipeSize is the capacity asked for the hook's output pipe (the kernel may give less).
const pipeSize = 1 << 20

// spool is the shim's side of a hook's output: the hook writes to a pipe, and the shim
// copies what it reads to DIR/output, at most max bytes of it. Past the bound, and after
// a write error (a full disk), the shim writes one marker line and goes on reading and
// discarding, so the hook never blocks on a full pipe and never fills the disk. Lines
// from the shim itself (note) are written on a line of their own, after whatever the
// hook wrote before them, and do not count against the bound.
type spool struct {
	f    *os.File // DIR/output
	max  int64
	logf func(format string, args ...any)

	r    *os.File        // the pipe's read end (non-blocking, in Go's poller); nil without a pipe
	rc   syscall.RawConn // of r
	done chan struct{}   // closed when copy has ended

	mu        sync.Mutex
	buf       []byte
	kept      int64 // hook bytes written to f
	discarded int64 // hook bytes read and thrown away
	atLineEnd bool  // the last byte written to f is a newline, or nothing was written
	stopped   bool  // no more hook output is written: bound reached or write error
	truncated bool  // the bound was reached
	werr      error // the first write error
}

func newSpool(f *os.File, max int64, logf func(string, ...any)) *spool {
	if max <= 0 {
		max = DefaultMaxOutput
	}
	return &spool{f: f, max: max, logf: logf, atLineEnd: true, done: make(chan struct{})}
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
			return
		}
	}
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
	if room := s.max - s.kept; int64(len(p)) > room {
		s.discarded += int64(len(p)) - room
		p, over = p[:room], true
	}
	if len(p) > 0 {
		n, err := s.f.Write(p)
		s.kept += int64(n)
		if n > 0 {
			s.atLineEnd = p[n-1] == '\n'
		}
		if err != nil {
			s.discarded += int64(len(p) - n)
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
	n, err := s.f.WriteString(line + "\n")
	if n > 0 {
		s.atLineEnd = (line + "\n")[n-1] == '\n'
	}
	if err != nil {
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
	if s.r == nil {
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
