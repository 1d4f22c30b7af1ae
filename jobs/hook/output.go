package hook

import (
	"bytes"
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

// The hook's terminal: a fixed window size, so that what a hook draws (a progress bar
// sized to the terminal) does not depend on where the daemon was started.
const (
	TerminalColumns = 200
	TerminalRows    = 50
)

// Back-off of the retries of a spool write that failed (a full disk): from the first
// to the longest wait between two attempts.
const (
	retryFirst = 50 * time.Millisecond
	retryMax   = 2 * time.Second
)

// DefaultDrainTimeout bounds how long the shim, once every process of the hook is gone,
// goes on retrying to write output it holds to a spool that cannot be written (a disk
// that stays full). Past it that output is dropped, counted and said so.
const DefaultDrainTimeout = time.Minute

// spool is the shim's side of a hook's output: the hook writes to a pseudo-terminal (or
// a pipe), and the shim copies what it reads to DIR/output, at most max bytes of it.
//
// Past the bound the shim reads on and discards, so the hook never blocks and never
// fills the disk; once the output has ended it writes one marker line saying how many
// lines and bytes were dropped. A write that fails (a full disk) loses nothing: the shim
// stops reading until the bytes it holds are written, retrying with back-off (so a hook
// that goes on printing blocks on its own output, and its timeout still applies), then
// goes on. Lines from the shim itself (note) are written on a line of their own, after
// whatever the hook wrote before them, and do not count against the bound.
type spool struct {
	f            *os.File // DIR/output
	max          int64
	drainTimeout time.Duration
	logf         func(format string, args ...any)

	r    *os.File        // the terminal's master or the pipe's read end (non-blocking, in Go's poller)
	tty  bool            // r is a terminal's master
	rc   syscall.RawConn // of r
	done chan struct{}   // closed when copy has ended
	quit chan struct{}   // closed by abandon: copy stops retrying and ends

	mu        sync.Mutex
	buf       []byte
	held      []chunk // accepted, not yet written: a write failed; nothing is read while any is held
	werr      error   // the error of the last failed write while output is held
	failedAt  time.Time
	full      bool  // the spool cannot grow at all (its file size limit)
	kept      int64 // hook bytes accepted (written, or in backlog)
	discarded int64 // hook bytes read and thrown away
	dropNL    int64 // newlines among them
	dropLast  byte  // the last byte thrown away
	atLineEnd bool  // the last byte accepted is a newline, or nothing was accepted
	stopped   bool  // no more hook output is kept: bound reached or the file cannot grow
	truncated bool  // the bound was reached
	why       string
	marked    bool // the truncation marker has been written
	eof       bool // every writer has closed the terminal or pipe
}

// chunk is output held for writing: the hook's, or the shim's own lines.
type chunk struct {
	b    []byte
	hook bool
}

func newSpool(f *os.File, max int64, drainTimeout time.Duration, logf func(string, ...any)) *spool {
	if max <= 0 {
		max = DefaultMaxOutput
	}
	if drainTimeout <= 0 {
		drainTimeout = DefaultDrainTimeout
	}
	return &spool{f: f, max: max, drainTimeout: drainTimeout, logf: logf, atLineEnd: true,
		done: make(chan struct{}), quit: make(chan struct{})}
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
	if err := s.setReader(p[0], "hook-output"); err != nil {
		unix.Close(p[1])
		return nil, err
	}
	return os.NewFile(uintptr(p[1]), "hook-output-w"), nil
}

// terminal opens the pseudo-terminal the hook writes to and returns its slave side (to
// be given to the hook and then closed by the caller: once no process holds the slave
// any more, reading the master fails with EIO, which is the end of the output). copy
// must be started afterwards.
//
// The terminal keeps the bytes as the hook wrote them: no echo, no output processing
// (OPOST off, so no "\n" → "\r\n"), and a fixed TerminalColumns × TerminalRows window.
func (s *spool) terminal() (*os.File, error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, os.NewSyscallError("open /dev/ptmx", err)
	}
	slave, err := openSlave(m)
	if err != nil {
		unix.Close(m)
		return nil, err
	}
	if err := setupTerminal(int(slave.Fd())); err != nil {
		unix.Close(m)
		slave.Close()
		return nil, err
	}
	if err := s.setReader(m, "/dev/ptmx"); err != nil {
		slave.Close()
		return nil, err
	}
	s.tty = true
	return slave, nil
}

// openSlave unlocks the terminal whose master is m and opens its slave side.
func openSlave(m int) (*os.File, error) {
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		return nil, os.NewSyscallError("unlockpt", err)
	}
	// TIOCGPTPEER opens the slave from the master, without a lookup of its path.
	fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, uintptr(unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC))
	if errno == 0 {
		return os.NewFile(fd, "hook-terminal"), nil
	}
	if errno != unix.EINVAL && errno != unix.ENOTTY {
		return nil, os.NewSyscallError("open the terminal's slave", errno)
	}
	n, err := unix.IoctlGetUint32(m, unix.TIOCGPTN) // a kernel before 4.13
	if err != nil {
		return nil, os.NewSyscallError("ptsname", err)
	}
	path := fmt.Sprintf("/dev/pts/%d", n)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// setupTerminal sets the hook's terminal settings on the slave fd.
func setupTerminal(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return os.NewSyscallError("tcgetattr", err)
	}
	t.Oflag &^= unix.OPOST | unix.ONLCR | unix.OCRNL
	t.Lflag &^= unix.ECHO | unix.ECHOE | unix.ECHOK | unix.ECHONL | unix.ECHOCTL | unix.ECHOKE | unix.ECHOPRT | unix.TOSTOP
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return os.NewSyscallError("tcsetattr", err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: TerminalColumns, Row: TerminalRows}); err != nil {
		return os.NewSyscallError("set the window size", err)
	}
	return nil
}

// setReader makes fd, non-blocking, the descriptor copy reads; it is closed on error.
func (s *spool) setReader(fd int, name string) error {
	s.r = os.NewFile(uintptr(fd), name)
	rc, err := s.r.SyscallConn()
	if err != nil {
		s.r.Close()
		s.r = nil
		return err
	}
	s.rc = rc
	s.buf = make([]byte, 64<<10)
	return nil
}

// copy reads the terminal or pipe until every writer has closed it and what it read is
// written, or until abandon. While a write has failed it reads nothing and retries.
func (s *spool) copy() {
	defer close(s.done)
	wait := retryFirst
	for {
		s.mu.Lock()
		held, eof := len(s.held) > 0, s.eof
		s.mu.Unlock()
		if held {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.quit:
				t.Stop()
				return
			}
			wait = min(2*wait, retryMax)
			s.mu.Lock()
			s.flush()
			s.mu.Unlock()
			continue
		}
		wait = retryFirst
		if eof {
			return
		}
		err := s.rc.Read(func(fd uintptr) bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			n, err := s.readOnce(int(fd))
			end := false
			switch {
			case errors.Is(err, unix.EAGAIN):
				return false // wait until readable
			case errors.Is(err, unix.EIO):
				end = true // a terminal whose slave no process holds any more
			case err != nil:
				s.logf("read hook output: %v", err)
				end = true
			case n == 0:
				end = true // EOF: no writer is left
			}
			if end {
				s.eof = true
			}
			return true
		})
		if err != nil {
			return // closed by abandon
		}
	}
}

// readOnce reads from the terminal or pipe once and keeps what it read. s.mu is held.
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
	if !s.stopped {
		if room := s.max - s.kept; int64(len(p)) > room {
			s.kept += room
			s.put(p[:room], true)
			p = p[room:]
			if !s.stopped {
				s.stopped, s.truncated = true, true
				s.why = "the hook's output limit"
			}
		} else {
			s.kept += int64(len(p))
			s.put(p, true)
			return
		}
	}
	s.drop(p)
}

// drop counts hook output thrown away. s.mu is held.
func (s *spool) drop(p []byte) {
	if len(p) == 0 {
		return
	}
	s.discarded += int64(len(p))
	s.dropNL += int64(bytes.Count(p, []byte{'\n'}))
	s.dropLast = p[len(p)-1]
}

// put writes p to the spool, after whatever is held; what cannot be written now is
// held and retried by copy. hook says whether p is the hook's output (counted against
// the bound) or a line of the shim's own. s.mu is held.
func (s *spool) put(p []byte, hook bool) {
	if len(p) == 0 {
		return
	}
	s.atLineEnd = p[len(p)-1] == '\n'
	if s.full {
		if !hook {
			s.logf("cannot add to the spool: %q", p)
		}
		return
	}
	if len(s.held) == 0 {
		n, err := s.f.Write(p)
		if err == nil {
			return
		}
		p = p[n:]
		defer s.failed(err)
	}
	if last := len(s.held) - 1; last >= 0 && s.held[last].hook == hook {
		s.held[last].b = append(s.held[last].b, p...)
	} else {
		s.held = append(s.held, chunk{b: bytes.Clone(p), hook: hook})
	}
}

// flush tries once to write what is held. s.mu is held.
func (s *spool) flush() {
	for len(s.held) > 0 {
		c := &s.held[0]
		n, err := s.f.Write(c.b)
		c.b = c.b[n:]
		if err != nil {
			s.failed(err)
			return
		}
		s.held = s.held[1:]
	}
	s.held = nil
	if s.werr != nil {
		s.logf("the spool is written again after %s; nothing was lost", time.Since(s.failedAt).Round(time.Millisecond))
		s.werr = nil
	}
}

// failed handles a failed write: it is said once per episode, and a file that cannot
// grow at all (its size limit) stops the output as the bound does. s.mu is held.
func (s *spool) failed(err error) {
	if errors.Is(err, unix.EFBIG) {
		s.logf("write hook output: %v; discarding the rest of it", err)
		s.full = true
		s.stopOutput("the spool's file size limit: " + cause(err).Error())
		return
	}
	if s.werr == nil {
		s.failedAt = time.Now()
		s.logf("write hook output: %v; holding the hook's output and retrying", err)
	}
	s.werr = err
}

// stopOutput drops what is held and keeps no more hook output. s.mu is held.
func (s *spool) stopOutput(why string) {
	for _, c := range s.held {
		if c.hook {
			s.kept -= int64(len(c.b))
			s.drop(c.b)
		} else {
			s.logf("dropped a line of the shim's own: %q", c.b)
		}
	}
	s.held = nil
	s.werr = nil
	if !s.stopped {
		s.stopped, s.why = true, why
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
	s.put([]byte(line+"\n"), false)
}

// note appends a line of the shim's own. Everything the hook wrote before the call is
// kept first, so a note about an event (the hook exited, timed out) comes after the
// hook's output from before it.
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

// drain keeps what the terminal or pipe holds now (not what is written meanwhile, so a
// hook that writes without pause cannot hold the shim here). s.mu is held.
//
// A terminal passes what the hook wrote on to its master asynchronously (the kernel's
// flip buffers, pushed by a worker): poll(2) on the master first pushes whatever is
// pending, so bytes written before the call are counted; they are read in rounds of
// what the terminal holds, at most maxDrain in all.
func (s *spool) drain(fd int) {
	total := 0
	for total < maxDrain {
		if s.tty {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			unix.Poll(fds, 0)
		}
		avail, err := unix.IoctlGetInt(fd, unix.TIOCINQ) // FIONREAD: bytes readable
		if err != nil || avail <= 0 {
			return
		}
		for avail > 0 {
			n, err := s.readOnce(fd)
			if err != nil || n == 0 {
				return
			}
			avail -= n
			total += n
		}
		if !s.tty {
			return // a pipe holds all that was written to it
		}
	}
}

// maxDrain bounds what one note reads ahead of itself from a terminal.
const maxDrain = 1 << 20

// holding reports whether output is held because the spool cannot be written.
func (s *spool) holding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) > 0
}

// end waits, once every process of the hook is gone, for the end of the output: for
// the last writer to close the terminal or pipe (for at most pipeCloseWait: only a
// process outside the hook's tree can still hold it) and for what is held to be written
// (for at most the drain timeout). Then it stops copying and writes the truncation
// marker, if output was dropped.
func (s *spool) end() {
	if s.r == nil {
		return
	}
	begin := time.Now()
	t := time.NewTimer(pipeCloseWait)
	defer t.Stop()
wait:
	for {
		select {
		case <-s.done:
			break wait
		case <-t.C:
			if s.holding() && time.Since(begin) < s.drainTimeout {
				t.Reset(min(pipeCloseWait, s.drainTimeout-time.Since(begin)))
				continue
			}
			if s.holding() {
				s.logf("the spool could not be written for %s after the hook ended; dropping the output held", s.drainTimeout)
			} else {
				s.logf("the hook's output is still open although none of its processes is left; closing it")
			}
			break wait
		}
	}
	s.abandon()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.held) > 0 {
		s.stopOutput("a spool that could not be written: " + cause(s.werr).Error())
	}
	s.mark()
}

// mark writes the truncation marker, once, if hook output was dropped. s.mu is held.
func (s *spool) mark() {
	if s.marked || s.discarded == 0 {
		return
	}
	lines := s.dropNL
	if s.dropLast != '\n' {
		lines++
	}
	line := fmt.Sprintf("JMP_WARN: boardvisor: output truncated after %d bytes (%s): %d more bytes in %d lines dropped",
		s.kept, s.why, s.discarded, lines)
	if !s.atLineEnd {
		line = "\n" + line
	}
	s.marked = true
	if s.full {
		s.logf("cannot add the truncation marker to the spool: %s", line)
		return
	}
	if _, err := s.f.WriteString(line + "\n"); err != nil {
		s.logf("write the truncation marker: %v (%s)", err, line)
	}
}

// abandon ends copy: it stops retrying, the read end is closed, and whatever is still
// written to the terminal or pipe is lost (a writer of a pipe gets EPIPE). It returns
// once copy has ended.
func (s *spool) abandon() {
	if s.r == nil {
		return
	}
	select {
	case <-s.quit:
	default:
		close(s.quit)
	}
	s.r.Close() // a second Close only returns an error
	<-s.done
}

// counts returns the bytes kept and discarded, and whether output was dropped.
func (s *spool) counts() (kept, discarded int64, truncated bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kept, s.discarded, s.discarded > 0 || s.truncated
}
