package supervisor

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/drivers"
	"github.com/boardvisor/boardvisor/drivers/serial"
	"github.com/boardvisor/boardvisor/drivers/virtual"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/boardvisor/boardvisor/supervisor/devices"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/types/known/structpb"
)

// deliveries is a batching connector (connector.Batcher) that counts what the outbox
// hands it: each call is one delivery (one append, one group commit on the durable
// outbox), and keeps every board's console bytes.
type deliveries struct {
	mu      sync.Mutex
	calls   int // deliveries holding console events
	events  map[string]int
	console map[string][]byte
}

func newDeliveries() *deliveries {
	return &deliveries{events: map[string]int{}, console: map[string][]byte{}}
}

func (d *deliveries) Run(ctx context.Context, _ connector.Supervisor) error {
	<-ctx.Done()
	return nil
}

func (d *deliveries) DeliverBatch(evs []connector.Event) {
	d.mu.Lock()
	defer d.mu.Unlock()
	counted := false
	for _, ev := range evs {
		if ev.Console == nil {
			continue
		}
		if !counted {
			d.calls++
			counted = true
		}
		d.events[ev.Board]++
		d.console[ev.Board] = append(d.console[ev.Board], ev.Console.Data...)
	}
}

func (d *deliveries) UpdateJobState(ev connector.Event)    { d.DeliverBatch([]connector.Event{ev}) }
func (d *deliveries) ReportJobError(ev connector.Event)    { d.DeliverBatch([]connector.Event{ev}) }
func (d *deliveries) SendJobConsoleLog(ev connector.Event) { d.DeliverBatch([]connector.Event{ev}) }
func (d *deliveries) UpdateEvent(ev connector.Event)       { d.DeliverBatch([]connector.Event{ev}) }

// waitOpen waits until every driver has its device open.
func waitOpen(t *testing.T, ds []*serial.Driver) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for _, d := range ds {
		for {
			if _, err := d.Write(nil); !errors.Is(err, drivers.ErrNotOpen) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("console %s not open after %s", d.Device(), wait)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// Unattended consoles streaming at 115200 baud are handed to the outbox once per console
// tick for all boards together, and each board's bytes of a tick in one event: the
// outbox's deliveries (appends, group commits, link writes) do not grow with the number
// of boards, nor a board's events with its rate. Counted for 10 and for 200 boards; every
// byte arrives, in order.
func TestUnattendedConsoleDeliveriesDoNotGrowWithBoards(t *testing.T) {
	const tick = 500 * time.Millisecond
	const seconds = 3
	const perBoard = 11520 * seconds
	type result struct {
		calls, maxEvents int
		took             time.Duration
	}
	run := func(n int) result {
		var boards []board.Config
		var ds []*serial.Driver
		var vbs []*virtual.Board
		for i := 0; i < n; i++ {
			vb, err := virtual.New(fmt.Sprintf("b%03d", i), virtual.Options{RandomBytes: perBoard, Seed: uint64(i + 1)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { vb.Close() })
			d, err := serial.New(serial.Config{Name: "console", Device: vb.Path()})
			if err != nil {
				t.Fatal(err)
			}
			vbs, ds = append(vbs, vb), append(ds, d)
			boards = append(boards, board.Config{Name: vb.Name(), LeaseDuration: time.Minute, Drivers: []driver.Driver{d}})
		}
		conn := newDeliveries()
		sup, err := Start(Options{Boards: boards, StateDir: t.TempDir(), Conn: conn, Logger: hclog.NewNullLogger(), ConsoleTick: tick})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- sup.Run(ctx) }()
		defer func() {
			cancel()
			<-done
		}()
		waitOpen(t, ds)
		began := time.Now()
		for _, vb := range vbs {
			if err := vb.On(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			conn.mu.Lock()
			all := len(conn.console) == n
			for _, b := range conn.console {
				all = all && len(b) >= perBoard
			}
			conn.mu.Unlock()
			if all {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d boards: not every console's %d bytes arrived within 60s", n, perBoard)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(began)
		conn.mu.Lock()
		defer conn.mu.Unlock()
		r := result{calls: conn.calls, took: took}
		for i, vb := range vbs {
			if !bytes.Equal(conn.console[vb.Name()], virtual.RandomData(uint64(i+1), perBoard)) {
				t.Errorf("%d boards: board %s's console bytes differ from those sent", n, vb.Name())
			}
			r.maxEvents = max(r.maxEvents, conn.events[vb.Name()])
		}
		return r
	}
	small, large := run(10), run(200)
	t.Logf("10 boards: %d deliveries with console events in %s, at most %d events a board; 200 boards: %d deliveries in %s, at most %d events a board",
		small.calls, small.took.Round(time.Millisecond), small.maxEvents, large.calls, large.took.Round(time.Millisecond), large.maxEvents)
	for _, r := range []result{small, large} {
		ticks := int(r.took/tick) + 2
		if r.calls > ticks {
			t.Errorf("%d deliveries with console events in %s: more than one a tick (%s)", r.calls, r.took.Round(time.Millisecond), tick)
		}
		if r.maxEvents > ticks {
			t.Errorf("a board had %d console events in %s: more than one a tick (%s)", r.maxEvents, r.took.Round(time.Millisecond), tick)
		}
	}
	// Per second of streaming, 200 boards cost the outbox no more deliveries than 10.
	perSecond := func(r result) float64 { return float64(r.calls) / r.took.Seconds() }
	if perSecond(large) > perSecond(small)*1.5+1 {
		t.Errorf("deliveries per second grow with the boards: %.1f/s for 10, %.1f/s for 200", perSecond(small), perSecond(large))
	}
}

// streamBuf is what console.stream sent, decoded.
type streamBuf struct {
	mu   sync.Mutex
	b    bytes.Buffer
	more chan struct{}
}

func (s *streamBuf) send(v *structpb.Value) error {
	data, err := base64.StdEncoding.DecodeString(v.GetStringValue())
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.b.Write(data)
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
	return nil
}

func (s *streamBuf) waitFor(t *testing.T, text string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		s.mu.Lock()
		got := s.b.String()
		s.mu.Unlock()
		if strings.Contains(got, text) {
			return
		}
		select {
		case <-s.more:
		case <-deadline:
			t.Fatalf("console.stream did not get %q within 10s; it got %q", text, got[max(0, len(got)-200):])
		}
	}
}

// A console followed through console.stream is read and forwarded at once: the echo of
// each keystroke (console.write) reaches the stream before the next keystroke is typed,
// although unattended the console would pause a minute between reads and its output
// wait an hour for the console tick.
func TestStreamWatcherGetsEachEchoBeforeTheNextKeystroke(t *testing.T) {
	vb, err := virtual.New("echo-1", virtual.Options{Unpaced: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vb.Close() })
	dir := t.TempDir()
	// At 50 baud a minute's coalescing holds less than 3 KiB: the pause is the minute.
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, "stateDir: %s\nboards:\n  - name: echo-1\n    drivers: {serial: {device: %s, baud: 50, coalesce: 1m}}\n", dir, vb.Path()))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := devices.Build(cfg, hclog.NewNullLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	sup, err := Start(Options{Boards: BoardsFromConfig(cfg, dev), StateDir: dir, Conn: local.New(), Logger: hclog.NewNullLogger(),
		Sinks: []outbox.Sink{dev.Sink}, ConsoleTick: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sup.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		if err := dev.Close(); err != nil {
			t.Error(err)
		}
	}()
	if p := dev.Board("echo-1").Drivers[0].(interface{ Pause() time.Duration }).Pause(); p != time.Minute {
		t.Fatalf("the console's pause is %s, want a minute", p)
	}

	s := &streamBuf{more: make(chan struct{}, 1)}
	sctx, scancel := context.WithCancel(context.Background())
	streamDone := make(chan error, 1)
	go func() { streamDone <- dev.Stream(sctx, "echo-1", "console", "stream", nil, s.send) }()
	defer func() {
		scancel()
		if err := <-streamDone; err != nil {
			t.Errorf("console.stream: %v", err)
		}
	}()
	deadline := time.Now().Add(wait)
	for !dev.Board("echo-1").Attended() {
		if time.Now().After(deadline) {
			t.Fatal("the console is not attended while console.stream follows it")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := vb.On(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.waitFor(t, "echo-1 login: ")
	typed := ""
	for i := 0; i < 20; i++ {
		k := string(rune('a' + i))
		wctx, wcancel := context.WithTimeout(context.Background(), wait)
		_, err := dev.Call(wctx, "echo-1", "console", "write", []*structpb.Value{structpb.NewStringValue(k)})
		wcancel()
		if err != nil {
			t.Fatal(err)
		}
		typed += k
		s.waitFor(t, "echo-1 login: "+typed)
	}
}
