// Package devices builds each board's devices from its config — a serial console, a
// simulated (virtual) board, an emulated (QEMU) board, power commands — and serves them:
// driver calls for clients and hooks (power.on, power.off, power.cycle, console.write,
// console.stream), and the always-on console recording, cut per lease and per day.
//
// The console is read by a driver actor of the board (actors/driver) through the serial
// path, whatever the board is; what it reads comes back here as ConsoleLog events
// through Sink.
package devices

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/power"
	"github.com/boardvisor/boardvisor/drivers/qemu"
	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
	"github.com/boardvisor/boardvisor/images"
	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Driver names, as clients name them in DriverCall's uuid.
const (
	Console = "console"
	Power   = "power"
)

// Board is one board's devices.
type Board struct {
	Name string
	// Drivers run as the board's driver actors (the console reader).
	Drivers []driver.Driver
	console drivers.Console
	power   drivers.Power
	rec     *recording.Recorder
	// recJob is the lease the recording is cut for now, as the console events say
	// (touched only by Sink, which the outbox calls from one goroutine).
	recJob  string
	closers []io.Closer
	// labels and arch say which images the board runs (its arch label, or the
	// emulator's); qemu boots them (nil for other boards).
	labels map[string]string
	arch   string
	qemu   *qemu.Board

	mu sync.Mutex
	// subs are the console's watchers. A watcher is fed by tap, as each chunk is read,
	// so it gets only the chunks read since it attached (a watcher that attached after
	// a power cycle must not see the boot before it).
	subs map[chan []byte]struct{}
	// attend is how the console learns whether someone interacts with it (nil: no
	// console, or one that does not care).
	attend attendable
	// lastWrite is when a client or hook last typed into the console; attendTimer
	// re-decides once AttendAfterWrite has passed since then (guarded by mu).
	lastWrite   time.Time
	attendTimer *time.Timer
	closed      bool
}

// attendable is a console that reads differently when someone interacts with it
// (*serial.Driver).
type attendable interface{ SetAttended(bool) }

// AttendAfterWrite is how long a console stays attended after a client or hook typed
// into it: long enough to see the answer to what was typed at once, the next prompt,
// the next keystroke.
const AttendAfterWrite = 5 * time.Second

// decideAttended tells the console whether it is attended now: while a client follows
// it (console.stream), and for AttendAfterWrite after each write. Call with b.mu held.
func (b *Board) decideAttended(now time.Time) {
	if b.attend == nil {
		return
	}
	recent := !b.lastWrite.IsZero() && now.Sub(b.lastWrite) < AttendAfterWrite
	b.attend.SetAttended(!b.closed && (len(b.subs) > 0 || recent))
	if recent && !b.closed {
		left := AttendAfterWrite - now.Sub(b.lastWrite)
		if b.attendTimer == nil {
			b.attendTimer = time.AfterFunc(left, func() {
				b.mu.Lock()
				defer b.mu.Unlock()
				b.decideAttended(time.Now())
			})
		} else {
			b.attendTimer.Reset(left)
		}
	}
}

// typed notes a write into the console: it is attended for AttendAfterWrite from now.
func (b *Board) typed() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastWrite = time.Now()
	b.decideAttended(b.lastWrite)
}

// Attended reports whether someone interacts with the board's console now (a client
// follows it, or typed into it within AttendAfterWrite).
func (b *Board) Attended() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.closed && (len(b.subs) > 0 || (!b.lastWrite.IsZero() && time.Since(b.lastWrite) < AttendAfterWrite))
}

// QEMURunDir is the directory under the state directory that holds the run directories
// of emulated boards.
const QEMURunDir = "qemu"

// runDirName is a board's run directory name: its name if short, else a digest of it (a
// socket path is limited to 107 bytes).
func runDirName(board string) string {
	if len(board) <= 16 {
		return board
	}
	sum := sha256.Sum256([]byte(board))
	return hex.EncodeToString(sum[:8])
}

// Manager holds the devices of every board of a supervisor.
type Manager struct {
	log    hclog.Logger
	disk   *diskspace.Monitor
	boards map[string]*Board
	recW   *recWriter     // writes every board's recording
	wg     sync.WaitGroup // the recording writer
	// images is the image store of image jobs (images.go).
	images   *images.Store
	leaseDir string
	imgWG    sync.WaitGroup
}

// Build creates the devices of every board in cfg. Simulated and emulated boards are
// created (their pseudo-terminals opened) but not powered on. disk (may be nil) watches
// the state directory's space: the console recordings stop while it is low.
//
// Emulated boards keep their run directories under StateDir/qemu; what is there when
// Build starts is left from an earlier process (its QEMUs died with it) and removed.
// The caller must hold the state directory (the journal's lock) first.
func Build(cfg *config.Config, logger hclog.Logger, disk *diskspace.Monitor) (*Manager, error) {
	m := &Manager{log: logger, boards: map[string]*Board{}, disk: disk}
	if err := os.RemoveAll(filepath.Join(cfg.StateDir, QEMURunDir)); err != nil {
		logger.Warn("remove stale qemu run directories", "error", err)
	}
	if err := m.openImages(cfg); err != nil {
		return nil, err
	}
	m.startWriter()
	for _, rb := range cfg.Resolve() {
		b, err := m.build(cfg.StateDir, rb)
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("board %s: %w", rb.Name, err)
		}
		m.boards[rb.Name] = b
	}
	return m, nil
}

func (m *Manager) build(stateDir string, rb config.ResolvedBoard) (*Board, error) {
	b := &Board{Name: rb.Name, subs: map[chan []byte]struct{}{}, labels: rb.Labels, arch: rb.Labels["arch"]}
	var consolePath string
	sc := serial.Config{Name: Console}
	switch {
	case rb.Virtual != nil:
		v := rb.Virtual
		seed := v.Seed
		if seed == 0 {
			seed = seedOf(rb.Name)
		}
		vb, err := virtual.New(rb.Name, virtual.Options{BootDelay: v.BootDelay.Std(), Baud: v.Baud, RandomBytes: v.RandomBytes, Seed: seed})
		if err != nil {
			return nil, err
		}
		b.closers = append(b.closers, vb)
		consolePath, b.power = vb.Path(), vb
	case rb.QEMU != nil:
		q, err := qemu.New(qemu.Config{Name: rb.Name, Binary: rb.QEMU.Binary, Machine: rb.QEMU.Machine, MemoryMiB: rb.QEMU.MemoryMiB, Args: rb.QEMU.Args,
			RunDir: filepath.Join(stateDir, QEMURunDir, runDirName(rb.Name))})
		if err != nil {
			return nil, err
		}
		b.closers = append(b.closers, q)
		consolePath, b.power, b.qemu = q.Path(), q, q
		// (config.Resolve gave it the emulator's arch label unless it had one.)
	case rb.Serial != nil:
		consolePath = rb.Serial.Device
		sc.Baud, sc.Parity, sc.DataBits, sc.StopBits = rb.Serial.Baud, rb.Serial.Parity, rb.Serial.DataBits, rb.Serial.StopBits
		sc.Coalesce = rb.Serial.Coalesce.Std()
	}
	if rb.Power != nil {
		pc, err := power.New(power.Config{Board: rb.Name, On: rb.Power.On, Off: rb.Power.Off, Cycle: rb.Power.Cycle, Timeout: rb.Power.Timeout.Std()})
		if err != nil {
			return nil, err
		}
		b.power = pc
	}
	if consolePath != "" {
		sc.Device = consolePath
		d, err := serial.New(sc)
		if err != nil {
			return nil, err
		}
		b.console, b.attend = d, d
		b.Drivers = append(b.Drivers, &tappedConsole{Driver: d, b: b})
		rec, err := recording.New(recording.Options{StateDir: stateDir, Board: rb.Name, Disk: m.disk})
		if err != nil {
			return nil, err
		}
		b.rec = rec
	}
	return b, nil
}

// seedOf gives each simulated board its own random stream.
func seedOf(name string) uint64 {
	var h uint64 = 14695981039346656037
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 1099511628211
	}
	return h
}

// Board returns a board's devices (nil if it has none).
func (m *Manager) Board(name string) *Board { return m.boards[name] }

// PowerOn switches on every board that has power control (simulated and emulated boards
// start off). Failures are logged.
func (m *Manager) PowerOn(ctx context.Context) {
	for _, b := range m.boards {
		if b.power != nil {
			if err := b.power.On(ctx); err != nil {
				m.log.Warn("power on at start-up", "board", b.Name, "error", err)
			}
		}
	}
}

// tappedConsole is the board's console driver, with every chunk it reads given to the
// board's watchers at once (tap), in the console reader's goroutine, before the chunk
// goes on to be tagged (the board actor's console tagger), the outbox and Sink. The
// live view waits for none of them: on the way to Sink an attended chunk waited behind
// the tick's batch of every board (up to 11 MB a second at 1,000 boards), which made
// the keystroke echo's p99 a quarter of a second. Watchers get the same slice as the
// tagger: neither writes to it.
type tappedConsole struct {
	*serial.Driver
	b *Board
}

// Run reads the console as the serial driver does, tapping each chunk.
func (t *tappedConsole) Run(ctx context.Context, out func([]byte)) error {
	return t.Driver.Run(ctx, func(p []byte) {
		t.b.tap(p)
		out(p)
	})
}

// tap gives a chunk just read to the board's watchers. It never waits: a watcher more
// than ConsoleBuffer chunks behind misses bytes.
func (b *Board) tap(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- p:
		default: // a watcher that does not keep up misses bytes
		}
	}
}

// Sink feeds console bytes to the recording, and cuts the recording per lease. The lease a console chunk belongs to is the one its event names
// (the board actor decides it): the recording follows the events and nothing else, so
// that a lease's recording and its console events are the same bytes. A lease's file is
// also started at its BEFORE_LEASE transition (so that a lease that printed nothing has
// one) and closed when it leaves AFTER_LEASE. Sink never blocks: the recording loses
// bytes only while the writer has RecordQueueBytes queued (that is logged). Watchers
// are not fed here but by tap, as the console is read.
func (m *Manager) Sink(ev connector.Event) {
	b := m.boards[ev.Board]
	if b == nil || b.rec == nil {
		return
	}
	switch {
	case ev.Console != nil:
		m.recordFor(b, ev.JobID)
		m.recW.add(recItem{b: b, data: ev.Console.Data})
	case ev.Transition != nil && ev.Transition.To == jobs.PhaseBeforeLease:
		m.recordFor(b, ev.JobID)
	case ev.Transition != nil && ev.Transition.From == jobs.PhaseAfterLease && b.recJob == ev.JobID:
		m.recordFor(b, "")
	}
}

// recordFor cuts b's recording so that what follows goes to job's files ("": the
// board's).
func (m *Manager) recordFor(b *Board, job string) {
	if b.recJob == job {
		return
	}
	if b.recJob != "" {
		m.recW.add(recItem{b: b, end: b.recJob})
	}
	if job != "" {
		m.recW.add(recItem{b: b, start: job})
	}
	b.recJob = job
}

// Call runs a driver method for a client or a hook.
func (m *Manager) Call(ctx context.Context, board, drv, method string, args []*structpb.Value) (*structpb.Value, error) {
	b := m.boards[board]
	if b == nil {
		return nil, status.Errorf(codes.NotFound, "board %s has no drivers", board)
	}
	switch drv + "." + method {
	case "power.on", "power.off", "power.cycle":
		if b.power == nil {
			return nil, status.Errorf(codes.Unimplemented, "board %s has no power control", board)
		}
		// Switching power is interacting with the board: its console is read at once from
		// now (what it printed before is read first, before a watcher that attaches after
		// the switch, which then sees only the new boot: TestUpstreamClientNormalLease).
		b.typed()
		var err error
		switch method {
		case "on":
			err = b.power.On(ctx)
		case "off":
			err = b.power.Off(ctx)
		default:
			err = b.power.Cycle(ctx)
		}
		if err != nil {
			return nil, status.Error(codes.Aborted, err.Error())
		}
		return structpb.NewStringValue("ok"), nil
	case "console.write":
		if b.console == nil {
			return nil, status.Errorf(codes.Unimplemented, "board %s has no console", board)
		}
		if len(args) != 1 || args[0].GetStringValue() == "" {
			return nil, status.Error(codes.InvalidArgument, "console.write takes one argument: the text to write")
		}
		// Typing makes the console attended first, so that the echo is read at once.
		b.typed()
		n, err := b.console.Write([]byte(args[0].GetStringValue()))
		if err != nil {
			code := codes.Unavailable
			if !errors.Is(err, drivers.ErrNotOpen) {
				code = codes.Internal
			}
			return nil, status.Error(code, err.Error())
		}
		return structpb.NewNumberValue(float64(n)), nil
	}
	return nil, status.Errorf(codes.NotFound, "no method %s.%s (have power.on, power.off, power.cycle, console.write, console.stream)", drv, method)
}

// Stream runs console.stream: it sends the console's output, as base64 strings, until
// ctx ends.
func (m *Manager) Stream(ctx context.Context, board, drv, method string, _ []*structpb.Value, send func(*structpb.Value) error) error {
	b := m.boards[board]
	if drv+"."+method != "console.stream" {
		return status.Errorf(codes.NotFound, "no streaming method %s.%s (have console.stream)", drv, method)
	}
	if b == nil || b.console == nil {
		return status.Errorf(codes.Unimplemented, "board %s has no console", board)
	}
	return m.attach(ctx, b, func(data []byte) error {
		return send(structpb.NewStringValue(base64.StdEncoding.EncodeToString(data)))
	})
}

// attach calls out with the board's console output until ctx is done. A watcher that
// does not keep up (ConsoleBuffer chunks behind) misses bytes: the board never waits.
func (m *Manager) attach(ctx context.Context, b *Board, out func([]byte) error) error {
	ch := make(chan []byte, ConsoleBuffer)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.decideAttended(time.Now())
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.decideAttended(time.Now())
		b.mu.Unlock()
	}()
	for {
		select {
		case data := <-ch:
			if err := out(data); err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// ConsoleBuffer is how many console chunks wait for one watcher.
const ConsoleBuffer = 256

// Inventory says which drivers a board has (exporter.Inventories).
func (m *Manager) Inventory(board string) exporter.Inventory {
	b := m.boards[board]
	if b == nil {
		return exporter.Inventory{}
	}
	return exporter.Inventory{Power: b.power != nil, Console: b.console != nil}
}

// AttachConsole calls out with the board's console output until ctx is done
// (exporter.Consoles).
func (m *Manager) AttachConsole(ctx context.Context, board string, out func([]byte) error) error {
	b := m.boards[board]
	if b == nil || b.console == nil {
		return status.Errorf(codes.NotFound, "board %s has no console", board)
	}
	return m.attach(ctx, b, out)
}

// WriteConsole types p into the board's console (exporter.Consoles).
func (m *Manager) WriteConsole(board string, p []byte) (int, error) {
	b := m.boards[board]
	if b == nil || b.console == nil {
		return 0, status.Errorf(codes.NotFound, "board %s has no console", board)
	}
	// Typing makes the console attended first, so that the echo is read at once.
	b.typed()
	return b.console.Write(p)
}

// Close stops the recordings and closes simulated and emulated boards.
func (m *Manager) Close() error {
	m.imgWG.Wait()
	if m.images != nil {
		m.images.Close()
	}
	m.stopWriter()
	var errs []error
	for _, b := range m.boards {
		if b.rec != nil {
			if err := b.rec.Close(); err != nil {
				m.log.Warn("close console recording", "board", b.Name, "error", err)
			}
		}
		b.mu.Lock()
		b.closed = true
		if b.attendTimer != nil {
			b.attendTimer.Stop()
		}
		b.mu.Unlock()
		for _, c := range b.closers {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}
