// Package virtual is a simulated board on a pseudo-terminal. It stands in for a real
// board in the demo, the tests and the benchmarks: powered on, it prints a boot log
// (U-Boot, a Linux kernel, a login prompt) and then answers a login and a few shell
// commands, at the pace of a real serial line.
//
// The board holds the master side of a pty; Path names the slave, which the serial
// console driver opens like any device. The board implements drivers.Power (On, Off,
// Cycle). All of its work is done by goroutines it owns, which Close stops.
//
// A pty has no baud-rate throttling (it moves ~100 MiB/s), so the board paces what it
// writes to Options.Baud itself: 10 bits per byte (8N1), 11520 bytes/s at 115200.
package virtual

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/internal/ptypair"
)

// DefaultBaud is the rate a board paces its output to when Options.Baud is zero.
const DefaultBaud = 115200

// Options configure a board. The zero value is a 115200-baud board with a boot log and a
// login shell.
type Options struct {
	// Baud is the line rate the board's output is paced to (default 115200).
	Baud int
	// Unpaced makes the board write as fast as the pty takes it (for throughput tests).
	Unpaced bool
	// BootDelay is an extra pause in the boot log, between the firmware and the kernel
	// (the time a real board spends loading its kernel).
	BootDelay time.Duration
	// RandomBytes, when positive, turns the board into a data source: each power-on
	// emits exactly RandomBytes bytes of RandomData(Seed, ...) and nothing else (no boot
	// log, no shell; input is ignored).
	RandomBytes int64
	// Seed is the seed of the RandomBytes stream.
	Seed uint64
}

// Board is a simulated board. Its methods are safe for concurrent use.
type Board struct {
	name string
	opts Options
	pair *ptypair.Pair

	power   chan powerReq
	input   chan []byte
	quit    chan struct{}
	closing sync.Once
	loopWG  sync.WaitGroup // the loop goroutine
	readWG  sync.WaitGroup // the input reader goroutine
	on      atomic.Bool
	sent    atomic.Int64 // bytes written to the console
	stalls  atomic.Int64 // writes the pty did not take in time (nobody read it)

	// Owned by the loop goroutine.
	state    state
	queue    []chunk
	line     []byte
	user     string
	lastCR   bool
	booted   time.Time
	tokens   float64
	lastFill time.Time
	randBuf  []byte
	random   *Random
}

type state int

const (
	stateNone     state = iota // in a chunk: no change
	stateOff                   // no output, input ignored
	stateBooting               // printing the boot log, input ignored
	stateLogin                 // waiting for a user name
	statePassword              // waiting for a password (not echoed)
	stateShell                 // at the shell prompt
	stateData                  // RandomBytes mode: emitting data, input ignored
)

// chunk is one piece of pending output: bytes, or a pause, or random bytes to make; when
// it has been written the board goes to its state (if set).
type chunk struct {
	data   []byte
	pause  time.Duration
	until  time.Time
	random int64
	state  state
}

type powerOp int

const (
	opOn powerOp = iota
	opOff
	opCycle
)

type powerReq struct {
	op    powerOp
	reply chan error
}

// ErrClosed is returned by the power methods of a closed board.
var ErrClosed = errors.New("board closed")

// New creates a board named name on a new pseudo-terminal, powered off.
func New(name string, opts Options) (*Board, error) {
	if opts.Baud == 0 {
		opts.Baud = DefaultBaud
	}
	if opts.Baud < 0 {
		return nil, fmt.Errorf("virtual board %s: baud %d is negative", name, opts.Baud)
	}
	pair, err := ptypair.Open()
	if err != nil {
		return nil, fmt.Errorf("virtual board %s: %w", name, err)
	}
	b := &Board{
		name:  name,
		opts:  opts,
		pair:  pair,
		power: make(chan powerReq),
		input: make(chan []byte),
		quit:  make(chan struct{}),
		state: stateOff,
	}
	b.loopWG.Add(1)
	go b.loop()
	b.readWG.Add(1)
	go b.readInput()
	return b, nil
}

// Name returns the board's name.
func (b *Board) Name() string { return b.name }

// Path returns the path of the board's console (the pty slave, /dev/pts/N).
func (b *Board) Path() string { return b.pair.Path }

// Sent returns how many bytes the board has written to its console since it was made
// (a benchmark checks its pace with it).
func (b *Board) Sent() int64 { return b.sent.Load() }

// Stalls returns how many of the board's writes its console did not take within
// 50 ms (its reader fell behind, or nobody reads it).
func (b *Board) Stalls() int64 { return b.stalls.Load() }

// Powered reports whether the board is on.
func (b *Board) Powered() bool { return b.on.Load() }

// On powers the board on: it starts printing its boot log. It is a no-op if the board is
// on.
func (b *Board) On(ctx context.Context) error { return b.do(ctx, opOn) }

// Off powers the board off: its output stops at once (what it had not written yet is
// dropped) and its input is ignored.
func (b *Board) Off(ctx context.Context) error { return b.do(ctx, opOff) }

// Cycle powers the board off and on again: it boots afresh.
func (b *Board) Cycle(ctx context.Context) error { return b.do(ctx, opCycle) }

// Close stops the board's goroutines and closes its pty; a console reading it sees a
// hangup. It is idempotent.
func (b *Board) Close() error {
	var err error
	b.closing.Do(func() {
		close(b.quit)
		b.loopWG.Wait() // the loop may be writing to the master: let it finish first
		err = b.pair.Close()
		b.readWG.Wait() // the reader may have been blocked in Read: Close woke it
	})
	return err
}

func (b *Board) do(ctx context.Context, op powerOp) error {
	r := powerReq{op: op, reply: make(chan error, 1)}
	select {
	case b.power <- r:
		return <-r.reply // the loop answers at once
	case <-b.quit:
		return fmt.Errorf("virtual board %s: %w", b.name, ErrClosed)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readInput forwards what the console writes (read from the master) to the loop.
func (b *Board) readInput() {
	defer b.readWG.Done()
	buf := make([]byte, 4096)
	for {
		n, err := b.pair.Master.Read(buf)
		if n > 0 {
			select {
			case b.input <- append([]byte(nil), buf[:n]...):
			case <-b.quit:
				return
			}
		}
		if err != nil {
			return // the master was closed (Close)
		}
	}
}

// loop is the board: it takes power requests and input and writes pending output, paced.
func (b *Board) loop() {
	defer b.loopWG.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var wake <-chan time.Time
		if d, ok := b.nextWrite(); ok {
			timer.Reset(d)
			wake = timer.C
		}
		select {
		case <-b.quit:
			return
		case r := <-b.power:
			b.handlePower(r.op)
			r.reply <- nil
		case p := <-b.input:
			// An idle line sends at once, as a UART does: the echo of a keystroke does not
			// wait for the next pump (the pace still holds: pump spends tokens).
			idle := len(b.queue) == 0
			b.handleInput(p)
			if idle {
				b.pump()
			}
		case <-wake:
			b.pump()
		}
		timer.Stop()
	}
}

// pumpInterval is how often a paced board writes.
const pumpInterval = 10 * time.Millisecond

// writeTimeout bounds one write to the master: if nobody reads the console, the pty
// fills up and the board keeps its output for later instead of blocking.
const writeTimeout = 50 * time.Millisecond

// nextWrite says when the next pump is due, if there is output pending.
func (b *Board) nextWrite() (time.Duration, bool) {
	if len(b.queue) == 0 {
		return 0, false
	}
	if c := b.queue[0]; c.pause > 0 && !c.until.IsZero() {
		return max(time.Until(c.until), 0), true
	}
	if b.opts.Unpaced {
		return 0, true
	}
	return max(pumpInterval-time.Since(b.lastFill), 0), true
}

// pump writes what pending output the pace allows.
func (b *Board) pump() {
	now := time.Now()
	if !b.opts.Unpaced {
		rate := float64(b.opts.Baud) / 10 // bytes per second, 8N1
		b.tokens += now.Sub(b.lastFill).Seconds() * rate
		b.tokens = min(b.tokens, max(rate*2*pumpInterval.Seconds(), 1))
		b.lastFill = now
	}
	for len(b.queue) > 0 {
		c := &b.queue[0]
		if c.pause > 0 {
			if c.until.IsZero() {
				c.until = now.Add(c.pause)
			}
			if now.Before(c.until) {
				return
			}
			c.pause = 0
		}
		if len(c.data) == 0 && c.random > 0 {
			if b.randBuf == nil {
				b.randBuf = make([]byte, 32*1024)
			}
			n := int(min(c.random, int64(len(b.randBuf))))
			_, _ = b.random.Read(b.randBuf[:n])
			c.data, c.random = b.randBuf[:n], c.random-int64(n)
		}
		if len(c.data) == 0 {
			if c.state != stateNone {
				b.setState(c.state)
			}
			b.queue = b.queue[1:]
			continue
		}
		n := len(c.data)
		if !b.opts.Unpaced {
			n = min(n, int(b.tokens))
			if n == 0 {
				return
			}
		}
		_ = b.pair.Master.SetWriteDeadline(now.Add(writeTimeout))
		w, err := b.pair.Master.Write(c.data[:n])
		b.sent.Add(int64(w))
		c.data = c.data[w:]
		b.tokens -= float64(w)
		if err != nil {
			b.stalls.Add(1)
			return // nobody reads (deadline): try again at the next pump
		}
	}
}

func (b *Board) setState(s state) {
	b.state = s
	b.on.Store(s != stateOff)
}

func (b *Board) handlePower(op powerOp) {
	if op == opOff || op == opCycle {
		b.setState(stateOff)
		b.queue, b.line = nil, nil
	}
	if (op == opOn || op == opCycle) && b.state == stateOff {
		b.booted, b.lastFill, b.tokens = time.Now(), time.Now(), 0
		if b.opts.RandomBytes > 0 {
			b.setState(stateData)
			b.random = NewRandom(b.opts.Seed)
			b.queue = []chunk{{random: b.opts.RandomBytes}}
			return
		}
		b.boot()
	}
}

// boot queues the boot log, ending at the login prompt.
func (b *Board) boot() {
	b.setState(stateBooting)
	b.queue = append(b.queue,
		chunk{data: crlf(ubootLog)},
		chunk{pause: b.opts.BootDelay},
		chunk{data: crlf(fmt.Sprintf(kernelLog, b.name))},
		chunk{data: []byte(b.loginPrompt()), state: stateLogin},
	)
}

func (b *Board) loginPrompt() string { return "\r\n" + b.name + " login: " }

func (b *Board) prompt() string { return "root@" + b.name + ":~# " }

func (b *Board) say(s string) { b.queue = append(b.queue, chunk{data: []byte(s)}) }

// handleInput is the board's line discipline: echo, backspace, Ctrl-C, Ctrl-D, Enter.
func (b *Board) handleInput(p []byte) {
	for _, c := range p {
		if b.state != stateLogin && b.state != statePassword && b.state != stateShell {
			return // booting, off, data: what is typed is lost, as on a real board
		}
		cr := b.lastCR
		b.lastCR = c == '\r'
		switch {
		case c == '\n' && cr:
			// the \n of a \r\n
		case c == '\r' || c == '\n':
			b.say("\r\n")
			line := string(b.line)
			b.line = b.line[:0]
			b.handleLine(line)
		case c == 0x7f || c == 0x08:
			if len(b.line) > 0 {
				b.line = b.line[:len(b.line)-1]
				if b.state != statePassword {
					b.say("\b \b")
				}
			}
		case c == 0x03: // Ctrl-C
			b.line = b.line[:0]
			switch b.state {
			case stateShell:
				b.say("^C\r\n" + b.prompt())
			default:
				b.say("\r\n" + b.loginPrompt())
				b.setState(stateLogin)
			}
		case c == 0x04 && len(b.line) == 0 && b.state == stateShell: // Ctrl-D
			b.handleLine("exit")
		case c < 0x20 && c != '\t':
			// other control characters are ignored
		default:
			if len(b.line) < 4096 {
				b.line = append(b.line, c)
				if b.state != statePassword {
					b.say(string([]byte{c})) // the byte typed, not the UTF-8 of the rune it numbers
				}
			}
		}
	}
}

func (b *Board) handleLine(line string) {
	switch b.state {
	case stateLogin:
		if strings.TrimSpace(line) == "" {
			b.say(b.name + " login: ")
			return
		}
		b.user = strings.TrimSpace(line)
		b.say("Password: ")
		b.setState(statePassword)
	case statePassword:
		b.say(fmt.Sprintf(motd, b.name) + b.prompt())
		b.setState(stateShell)
	case stateShell:
		b.runCommand(strings.TrimSpace(line))
	}
}

// runCommand answers a shell command line.
func (b *Board) runCommand(line string) {
	args := strings.Fields(line)
	if len(args) == 0 {
		b.say(b.prompt())
		return
	}
	out := ""
	switch args[0] {
	case "uname":
		out = "Linux"
		if len(args) > 1 && args[1] == "-a" {
			out = fmt.Sprintf("Linux %s 6.6.22-boardvisor #1 SMP PREEMPT Tue Jan  9 12:00:00 UTC 2024 aarch64 GNU/Linux", b.name)
		}
	case "hostname":
		out = b.name
	case "whoami":
		out = "root"
	case "echo":
		out = strings.Join(args[1:], " ")
	case "uptime":
		up := time.Since(b.booted)
		out = fmt.Sprintf(" up %d min,  1 user,  load average: 0.00, 0.00, 0.00", int(up.Minutes()))
	case "cat":
		if len(args) == 2 && args[1] == "/etc/hostname" {
			out = b.name
		} else {
			out = "cat: " + strings.Join(args[1:], " ") + ": No such file or directory"
		}
	case "help":
		out = "commands: uname [-a], hostname, whoami, echo, uptime, cat /etc/hostname, reboot, poweroff, exit"
	case "exit", "logout":
		b.say("logout\r\n" + b.loginPrompt())
		b.setState(stateLogin)
		return
	case "reboot":
		b.say("reboot: Restarting system\r\n")
		b.boot()
		return
	case "poweroff":
		b.queue = append(b.queue, chunk{data: []byte("reboot: Power down\r\n"), state: stateOff})
		b.setState(stateBooting) // ignore input until it is off
		return
	default:
		out = "-sh: " + args[0] + ": not found"
	}
	b.say(out + "\r\n" + b.prompt())
}

func crlf(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }

// kernelTime formats a duration as a kernel log timestamp, e.g. "[    1.234567]".
func kernelTime(d time.Duration) string {
	s := strconv.FormatFloat(d.Seconds(), 'f', 6, 64)
	return "[" + strings.Repeat(" ", max(0, 12-len(s))) + s + "]"
}

var ubootLog = `
U-Boot 2024.01 (Jan 08 2024 - 12:00:00 +0000)

CPU:   ARMv8 Cortex-A72 (4 cores)
DRAM:  1 GiB
Core:  210 devices, 16 uclasses, devicetree: board
MMC:   mmc@7e340000: 0
Loading Environment from FAT... OK
In:    serial
Out:   serial
Err:   serial
Net:   eth0: ethernet@7d580000
Hit any key to stop autoboot:  0
switch to partitions #0, OK
mmc0 is current device
Scanning mmc 0:1...
Found U-Boot script /boot.scr
8745472 bytes read in 372 ms (22.4 MiB/s)
## Booting kernel from Legacy Image at 00080000 ...
Starting kernel ...

`

var kernelLog = kernelTime(0) + ` Booting Linux on physical CPU 0x0000000000 [0x410fd083]
` + kernelTime(0) + ` Linux version 6.6.22-boardvisor (builder@boardvisor) (gcc 12.2.0) #1 SMP PREEMPT
` + kernelTime(0) + ` Machine model: %s (boardvisor virtual board)
` + kernelTime(0) + ` Memory: 1009872K/1048576K available
` + kernelTime(12*time.Millisecond) + ` Console: colour dummy device 80x25
` + kernelTime(731*time.Millisecond) + ` mmc0: new high speed SDHC card at address aaaa
` + kernelTime(1204*time.Millisecond) + ` EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode
` + kernelTime(1876*time.Millisecond) + ` Run /sbin/init as init process
Welcome to Boardvisor Linux!
Starting network: OK
`

const motd = "\r\nWelcome to %s (boardvisor virtual board).\r\n\r\n"

var _ drivers.Power = (*Board)(nil)
