// Package qemu is a real emulated board: QEMU (qemu-system-x86_64 by default, or any
// qemu-system-* with its machine arguments) whose first serial port is the board's
// console. Powering the board on starts QEMU; off stops it.
//
// The console is a pseudo-terminal owned by the Board for its whole life: Path names it
// and the serial console driver reads it like a USB-serial adapter that stays plugged in
// while the board is off. QEMU's serial port is connected to it through a unix socket:
// the Board listens, QEMU is started with -serial unix:<socket> and connects during its
// start-up, before the guest runs, and the Board relays the bytes both ways. So the
// firmware's first line is never lost (with -serial pty, whatever the guest prints
// before someone opens the pty is dropped), the console's path does not change at every
// power-on, and a power cycle does not look like an unplugged console.
//
// QEMU runs in a process group of its own, which Off, Close and an On whose context ends
// before QEMU is up stop (SIGTERM, grace, SIGKILL); it also gets SIGKILL if the daemon
// dies (Pdeathsig). With no disk, x86 QEMU's SeaBIOS prints its banner
// ("SeaBIOS (version ...)") and "No bootable device." on the console: -nographic makes
// SeaBIOS write to the serial port.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/internal/procgroup"
	"github.com/boardvisor/boardvisor/drivers/internal/ptypair"
	"github.com/boardvisor/boardvisor/drivers/internal/tail"
)

// Defaults of a Config's zero fields.
const (
	DefaultBinary       = "qemu-system-x86_64"
	DefaultMachine      = "pc"
	DefaultMemoryMiB    = 64
	DefaultStartTimeout = 15 * time.Second
	DefaultStopGrace    = 2 * time.Second
)

// Config configures an emulated board.
type Config struct {
	// Name is the board's name, for errors.
	Name string
	// Binary is the QEMU to run (default qemu-system-x86_64, looked up in $PATH).
	Binary string
	// Machine is the -machine value (default "pc").
	Machine string
	// MemoryMiB is the -m value (default 64).
	MemoryMiB int
	// Args are more arguments (a -kernel, a -drive, -cpu, -accel kvm, ...).
	Args []string
	// StartTimeout bounds how long On waits for QEMU to connect its serial port
	// (default 15s).
	StartTimeout time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL when stopping QEMU (default 2s).
	StopGrace time.Duration
	// RunDir is the board's run directory (its serial port's socket), created with mode
	// 0700 and removed by Close; the supervisor puts it under its state directory. Empty
	// means a new directory under os.TempDir(). Its path must leave room for a Unix
	// socket name (at most 107 bytes in all).
	RunDir string
}

// socketName is the name of the serial port's socket in the run directory.
const socketName = "serial.sock"

// maxSocketPath is the longest path a Unix socket can be bound to on Linux.
const maxSocketPath = 107

// Board is an emulated board. It satisfies drivers.Power; its methods are safe for
// concurrent use.
type Board struct {
	cfg    Config
	pair   *ptypair.Pair
	runDir string

	mu     sync.Mutex // serializes power operations; guards run and closed
	run    *run
	closed bool

	connMu sync.Mutex // guards conn, for the console-to-QEMU relay
	conn   net.Conn

	boot *Boot // what the board boots instead of its own config (a leased image); guarded by mu

	inputDone chan struct{}
}

// run is one QEMU process.
type run struct {
	cmd     *exec.Cmd
	pgid    int
	exited  chan struct{} // closed when cmd.Wait returns
	err     error         // cmd.Wait's error, once exited is closed
	conn    net.Conn
	outDone chan struct{} // closed when the QEMU-to-console relay ends
	stop    chan struct{} // closed by stopLocked: the relay gives up a blocked write
	stderr  *tail.Buffer
}

var _ drivers.Power = (*Board)(nil)

// New checks that the QEMU binary exists and creates the board's console, powered off.
func New(cfg Config) (*Board, error) {
	if cfg.Binary == "" {
		cfg.Binary = DefaultBinary
	}
	if cfg.Machine == "" {
		cfg.Machine = DefaultMachine
	}
	if cfg.MemoryMiB <= 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("qemu board %s: %w", cfg.Name, err)
	}
	cfg.Binary = bin
	runDir := cfg.RunDir
	if runDir == "" {
		// A short directory: a unix socket path is limited to 107 bytes.
		if runDir, err = os.MkdirTemp("", "bv-qemu-"); err != nil {
			return nil, fmt.Errorf("qemu board %s: %w", cfg.Name, err)
		}
	} else if err := os.MkdirAll(runDir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu board %s: run directory: %w", cfg.Name, err)
	}
	if n := len(filepath.Join(runDir, socketName)); n > maxSocketPath {
		os.RemoveAll(runDir)
		return nil, fmt.Errorf("qemu board %s: run directory %s is too long for a socket in it (%d bytes, at most %d): use a shorter state directory", cfg.Name, runDir, n, maxSocketPath)
	}
	pair, err := ptypair.Open()
	if err != nil {
		os.RemoveAll(runDir)
		return nil, fmt.Errorf("qemu board %s: %w", cfg.Name, err)
	}
	b := &Board{cfg: cfg, pair: pair, runDir: runDir, inputDone: make(chan struct{})}
	go b.relayInput()
	return b, nil
}

// Path returns the path of the board's console (a pty slave, /dev/pts/N), for the
// serial console driver. It does not change while the board exists.
func (b *Board) Path() string { return b.pair.Path }

// Running reports whether QEMU is running.
func (b *Board) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.run != nil && !isClosed(b.run.exited)
}

// Pgid returns the process group of the running QEMU, 0 if none.
func (b *Board) Pgid() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.run == nil || isClosed(b.run.exited) {
		return 0
	}
	return b.run.pgid
}

// ErrClosed is returned by the power methods of a closed board.
var ErrClosed = errors.New("board closed")

// On starts QEMU, unless it is running. It returns once QEMU has connected its serial
// port (the guest starts then). If ctx ends first, QEMU is stopped.
func (b *Board) On(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.errorf("%w", ErrClosed)
	}
	if b.run != nil {
		if !isClosed(b.run.exited) {
			return nil
		}
		b.stopLocked() // it exited by itself (the guest powered off): clean up
	}
	return b.startLocked(ctx)
}

// Off stops QEMU (SIGTERM to its process group, then SIGKILL after StopGrace). It is a
// no-op if QEMU is not running.
func (b *Board) Off(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.errorf("%w", ErrClosed)
	}
	b.stopLocked()
	return nil
}

// Cycle stops QEMU if it runs, and starts it again.
func (b *Board) Cycle(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.errorf("%w", ErrClosed)
	}
	b.stopLocked()
	return b.startLocked(ctx)
}

// Close stops QEMU, closes the console (a reader sees a hangup) and removes the
// board's run directory. It is idempotent.
func (b *Board) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	b.stopLocked()
	b.dropBootLocked()
	err := b.pair.Close() // ends relayInput
	<-b.inputDone
	os.RemoveAll(b.runDir)
	return err
}

func (b *Board) startLocked(ctx context.Context) error {
	sock := filepath.Join(b.runDir, socketName)
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return b.errorf("listen for the serial port: %w", err)
	}
	defer func() {
		ln.Close()
		os.Remove(sock)
	}()
	args := []string{
		"-nographic", "-nodefaults", "-display", "none", "-no-reboot",
		"-machine", b.cfg.Machine, "-m", strconv.Itoa(b.cfg.MemoryMiB),
		"-serial", "unix:" + sock,
	}
	args = append(args, b.cfg.Args...)
	args = append(args, b.boot.args()...)
	r := &run{
		cmd:     exec.Command(b.cfg.Binary, args...),
		exited:  make(chan struct{}),
		outDone: make(chan struct{}),
		stop:    make(chan struct{}),
		stderr:  tail.New(2048),
	}
	r.cmd.Stdout, r.cmd.Stderr = r.stderr, r.stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	r.cmd.WaitDelay = time.Second
	if err := r.cmd.Start(); err != nil {
		return b.errorf("start %s: %w", b.cfg.Binary, err)
	}
	r.pgid = r.cmd.Process.Pid
	go func() {
		r.err = r.cmd.Wait()
		close(r.exited)
	}()

	// Wait for QEMU to connect, for it to exit, for ctx, or for the start timeout.
	deadline := time.Now().Add(b.cfg.StartTimeout)
	for {
		_ = ln.SetDeadline(time.Now().Add(50 * time.Millisecond))
		conn, err := ln.Accept()
		if err == nil {
			r.conn = conn
			break
		}
		var why error
		switch {
		case isClosed(r.exited):
			why = fmt.Errorf("qemu exited before connecting its serial port: %v", r.err)
		case ctx.Err() != nil:
			why = ctx.Err()
		case time.Now().After(deadline):
			why = fmt.Errorf("qemu did not connect its serial port within %s", b.cfg.StartTimeout)
		case !errors.Is(err, os.ErrDeadlineExceeded):
			why = err
		default:
			continue
		}
		procgroup.Stop(r.pgid, b.cfg.StopGrace, r.exited)
		<-r.exited
		if out := r.stderr.Line(); out != "" {
			return b.errorf("start: %w: %s", why, out)
		}
		return b.errorf("start: %w", why)
	}
	b.connMu.Lock()
	b.conn = r.conn
	b.connMu.Unlock()
	go b.relayOutput(r)
	b.run = r
	return nil
}

// stopLocked stops the running QEMU, if any, and waits for its relay to end.
func (b *Board) stopLocked() {
	r := b.run
	if r == nil {
		return
	}
	b.run = nil
	procgroup.Stop(r.pgid, b.cfg.StopGrace, r.exited)
	<-r.exited
	b.connMu.Lock()
	b.conn = nil
	b.connMu.Unlock()
	r.conn.Close()
	close(r.stop)
	<-r.outDone
}

// relayOutput copies what QEMU's serial port sends to the console, until QEMU's end of
// the socket closes (it exited) or stopLocked closes ours.
func (b *Board) relayOutput(r *run) {
	defer close(r.outDone)
	buf := make([]byte, 32*1024)
	for {
		n, err := r.conn.Read(buf)
		if n > 0 && !b.writeConsole(buf[:n], r.stop) {
			return
		}
		if err != nil {
			return
		}
	}
}

// writeConsole writes p to the console's pty. While nobody reads the console and the pty
// is full it waits, which holds QEMU's serial port back as flow control would, until
// stop is closed; it reports whether all of p was written.
func (b *Board) writeConsole(p []byte, stop <-chan struct{}) bool {
	for len(p) > 0 {
		_ = b.pair.Master.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := b.pair.Master.Write(p)
		p = p[n:]
		switch {
		case err == nil:
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return false
		case isClosed(stop):
			return false
		}
	}
	return true
}

// relayInput copies what is typed on the console to QEMU's serial port while QEMU runs;
// it is dropped while QEMU is off, as a powered-off UART would.
func (b *Board) relayInput() {
	defer close(b.inputDone)
	buf := make([]byte, 4096)
	for {
		n, err := b.pair.Master.Read(buf)
		if n > 0 {
			b.connMu.Lock()
			if c := b.conn; c != nil {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write(buf[:n])
			}
			b.connMu.Unlock()
		}
		if err != nil {
			return // the pty was closed (Close)
		}
	}
}

func (b *Board) errorf(format string, a ...any) error {
	return fmt.Errorf("qemu board %s: "+format, append([]any{b.cfg.Name}, a...)...)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
