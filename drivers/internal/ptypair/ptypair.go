// Package ptypair opens a pseudo-terminal for a simulated or emulated board: the board
// holds the master side and hands the slave's path to the serial console driver, which
// reads it as it would a real device.
package ptypair

import (
	"fmt"
	"os"

	"github.com/boardvisor/boardvisor/drivers/internal/tty"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// Pair is an open pseudo-terminal.
//
// Master is under Go's poller (non-blocking): Close unblocks a Read or Write blocked on
// it, and deadlines work. creack/pty's pty.Open leaves the master in blocking mode (it
// calls Fd for its ioctls), where Close does not unblock a pending Read; Open therefore
// re-wraps a duplicate of it.
//
// Slave is kept open by the pair for its whole life, in raw mode: the terminal exists
// (and keeps its settings) whether or not a console driver has it open, the master never
// reads EIO in between, and nothing the board writes is echoed back to it.
type Pair struct {
	// Master is the board's side: what it writes, the console reads.
	Master *os.File
	// Slave is the console's side, held open by the pair.
	Slave *os.File
	// Path is the slave's path (/dev/pts/N), for the serial console driver.
	Path string
}

// Open opens a pseudo-terminal with its slave in raw mode.
func Open() (*Pair, error) {
	ptm, pts, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("open pty: %w", err)
	}
	fd, err := unix.FcntlInt(ptm.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	ptm.Close()
	if err != nil {
		pts.Close()
		return nil, fmt.Errorf("dup pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		pts.Close()
		return nil, fmt.Errorf("pty master: %w", err)
	}
	master := os.NewFile(uintptr(fd), "/dev/ptmx") // non-blocking: goes to the poller
	if err := tty.SetRaw(pts); err != nil {
		master.Close()
		pts.Close()
		return nil, fmt.Errorf("pty %s: raw mode: %w", pts.Name(), err)
	}
	return &Pair{Master: master, Slave: pts, Path: pts.Name()}, nil
}

// Close closes both sides. A console that has the slave open then reads a hangup.
func (p *Pair) Close() error {
	err := p.Master.Close()
	if serr := p.Slave.Close(); err == nil {
		err = serr
	}
	return err
}
