package main

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/drivers/virtual"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// feeder is the console scenario's streaming boards, lean: every console is a pty whose
// master a few goroutines write, each its share, every feedTick: what the line rate
// allows since the last tick (about 180 bytes at 115200 baud), as a USB-serial adapter
// hands a host its bytes (an FTDI chip's latency timer is 16 ms by default), without a
// goroutine, a timer and Go's poller per board, which kept a thousand simulated boards
// (drivers/virtual) from the line rate on two cores.
// Each board's stream is virtual.RandomData(its seed), from its start at each power-on.
type feeder struct {
	boards []*feedBoard
	on     atomic.Bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

type feedBoard struct {
	master int // non-blocking
	// slave is held open, so that the terminal lives without a reader. It is a plain
	// descriptor, off Go's poller like master: an *os.File of a tty is registered there,
	// and every chunk written to the master then woke the farm's poller for its slave
	// (62,500 writes a second), load on the host that the hardware it stands for does
	// not make.
	slave int
	path  string
	seed  uint64
	// Owned by its writer goroutine.
	rnd          *virtual.Random
	pending      []byte // made, not yet taken by the pty
	left         int64  // bytes still to make
	tokens       float64
	lastFill     time.Time
	sent, stalls atomic.Int64
	running      bool
}

// feedTick is how often the feeder writes each console.
const feedTick = 16 * time.Millisecond

// feedWriters is how many goroutines write the ptys.
const feedWriters = 2

func newFeeder(n int, perBoard int64) (*feeder, error) {
	f := &feeder{stop: make(chan struct{})}
	for i := 0; i < n; i++ {
		m, s, err := pty.Open()
		if err != nil {
			f.close()
			return nil, err
		}
		fd, err := plainFD(m)
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err == nil {
			err = makeRawTTY(s)
		}
		path := s.Name()
		sfd, serr := plainFD(s)
		if err == nil {
			err = serr
		}
		if err != nil {
			if sfd >= 0 {
				unix.Close(sfd)
			}
			if fd >= 0 {
				unix.Close(fd)
			}
			f.close()
			return nil, fmt.Errorf("feeder pty: %w", err)
		}
		f.boards = append(f.boards, &feedBoard{master: fd, slave: sfd, path: path, seed: uint64(i + 1), left: perBoard})
	}
	per := (len(f.boards) + feedWriters - 1) / feedWriters
	for w := 0; w < feedWriters && w*per < len(f.boards); w++ {
		share := f.boards[w*per : min((w+1)*per, len(f.boards))]
		f.wg.Add(1)
		go f.write(share, perBoard)
	}
	return f, nil
}

// plainFD returns a descriptor of f's file that is off Go's poller, and closes f
// (whose descriptor Go's poller holds).
func plainFD(f *os.File) (int, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	f.Close()
	return fd, err
}

// power switches streaming on (every board starts its stream afresh) or off.
func (f *feeder) power(on bool) { f.on.Store(on) }

func (f *feeder) write(boards []*feedBoard, perBoard int64) {
	defer f.wg.Done()
	t := time.NewTicker(feedTick)
	defer t.Stop()
	rate := float64(ConsoleBaud) / 10
	buf := make([]byte, 4096)
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		on := f.on.Load()
		for _, b := range boards {
			if !on {
				b.running = false
				continue
			}
			if !b.running { // powered on: the stream starts again
				b.running, b.rnd, b.pending, b.left, b.tokens, b.lastFill = true, virtual.NewRandom(b.seed), nil, perBoard, 0, now
				continue
			}
			b.tokens = min(b.tokens+now.Sub(b.lastFill).Seconds()*rate, 2*rate*feedTick.Seconds())
			b.lastFill = now
			for b.tokens >= 1 && (len(b.pending) > 0 || b.left > 0) {
				if len(b.pending) == 0 {
					n := int(min(b.left, int64(len(buf)), int64(b.tokens)))
					_, _ = b.rnd.Read(buf[:n])
					b.pending, b.left = buf[:n], b.left-int64(n)
				}
				n := min(len(b.pending), int(b.tokens))
				w, err := unix.Write(b.master, b.pending[:n])
				if w > 0 {
					b.pending = b.pending[w:]
					b.tokens -= float64(w)
					b.sent.Add(int64(w))
				}
				if err != nil {
					b.stalls.Add(1) // the pty is full: nobody reads it fast enough
					break
				}
			}
			if len(b.pending) > 0 { // keep what the pty did not take for the next tick
				b.pending = append([]byte(nil), b.pending...)
			}
		}
	}
}

// flush drops the bytes waiting in every pty for a reader (TCIFLUSH on its slave side).
// Call it while off, so that no writer refills them meanwhile.
func (f *feeder) flush() {
	for _, b := range f.boards {
		_ = unix.IoctlSetInt(b.slave, unix.TCFLSH, unix.TCIFLUSH)
	}
}

func (f *feeder) sent() (sent, stalls int64) {
	for _, b := range f.boards {
		sent += b.sent.Load()
		stalls += b.stalls.Load()
	}
	return sent, stalls
}

func (f *feeder) close() {
	select {
	case <-f.stop:
	default:
		close(f.stop)
	}
	f.wg.Wait()
	for _, b := range f.boards {
		unix.Close(b.master)
		unix.Close(b.slave)
	}
}
