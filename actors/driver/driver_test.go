package driver_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/driver"
	"github.com/boardvisor/boardvisor/actors/internal/actortest"
)

// These tests run the driver actor under a probe that stands in for its board. The
// drivers are fakes: what is under test is the actor's contract with any driver (start
// it, pass its bytes on, hand its failures to the board, stop it), and a fake can fail,
// panic or hang on demand where a real serial port cannot. The real drivers under this
// actor are tested in supervisor (TestPanickingDriverIsRestartedAndLeaseGoesOn) and in
// the e2e tests.

// fake is a driver whose Run is the test's function.
type fake struct {
	name    string
	run     func(ctx context.Context, out func([]byte)) error
	runs    atomic.Int32
	stopped chan struct{} // closed when a Run saw its context done and returned
}

func newFake(name string, run func(ctx context.Context, out func([]byte)) error) *fake {
	return &fake{name: name, run: run, stopped: make(chan struct{})}
}

func (f *fake) Name() string { return f.name }

func (f *fake) Run(ctx context.Context, out func([]byte)) error {
	f.runs.Add(1)
	err := f.run(ctx, out)
	if ctx.Err() != nil {
		select {
		case <-f.stopped:
		default:
			close(f.stopped)
		}
	}
	return err
}

// untilStopped is a Run that blocks until it is stopped, and then takes a moment to
// close its device.
func untilStopped(ctx context.Context, _ func([]byte)) error {
	<-ctx.Done()
	time.Sleep(100 * time.Millisecond)
	return nil
}

func spawn(t *testing.T, p *actortest.Probe, d driver.Driver) *actor.PID {
	t.Helper()
	return p.Spawn(driver.Props(d, p.Logger.Named("driver")), "driver/"+d.Name())
}

// What a console driver reads reaches its board as DriverOutput, in order, and the
// board hears DriverUp once the driver has run UpAfter without failing.
func TestDriverOutputAndUpReachTheBoard(t *testing.T) {
	p := actortest.New(t)
	chunks := []string{"U-Boot 2024.01\r\n", "Starting kernel ...\r\n", "rpi login: "}
	spawn(t, p, newFake("console", func(ctx context.Context, out func([]byte)) error {
		for _, c := range chunks {
			out([]byte(c))
		}
		<-ctx.Done()
		return nil
	}))
	var got bytes.Buffer
	for range chunks {
		m := actortest.Want[*actors.DriverOutput](p)
		if m.Driver != "console" {
			t.Errorf("DriverOutput names driver %q, want console", m.Driver)
		}
		got.Write(m.Data)
	}
	if got.String() != strings.Join(chunks, "") {
		t.Errorf("the board got %q, want %q", got.String(), strings.Join(chunks, ""))
	}
	if up := actortest.Want[*actors.DriverUp](p); up.Driver != "console" {
		t.Errorf("DriverUp names driver %q, want console", up.Driver)
	}
}

// A driver's error, a panic in its goroutine, and a Run that returns before it is
// stopped all reach the board's supervision as a failure of the actor (an
// actors.Failure wrapping the cause), never as a crash of the daemon; and a driver that
// fails at once never tells its board it is up.
func TestDriverFailuresGoToItsSupervisor(t *testing.T) {
	errUnplugged := errors.New("read /dev/ttyUSB0: input/output error")
	cases := []struct {
		name string
		run  func(ctx context.Context, out func([]byte)) error
		want string
		is   error
	}{
		{"error", func(context.Context, func([]byte)) error { return errUnplugged }, "input/output error", errUnplugged},
		{"panic", func(context.Context, func([]byte)) error { panic("index out of range") }, "panic: index out of range", nil},
		{"returned", func(context.Context, func([]byte)) error { return nil }, "returned without an error before it was stopped", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := actortest.New(t, actortest.Options{Directive: actor.StopDirective})
			pid := spawn(t, p, newFake("power", c.run))
			f, skipped := actortest.Until[*actortest.Failed](p, nil)
			if len(skipped) > 0 {
				t.Errorf("before its failure the board got %s", actortest.Describe(skipped))
			}
			var fail actors.Failure
			err, _ := f.Reason.(error)
			if !errors.As(err, &fail) || !f.Who.Equal(pid) {
				t.Fatalf("failure %v (%T) of %s, want an actors.Failure of %s", f.Reason, f.Reason, f.Who.Id, pid.Id)
			}
			if !strings.Contains(fail.Error(), "driver power: ") || !strings.Contains(fail.Error(), c.want) {
				t.Errorf("failure %q, want it to name the driver and say %q", fail.Error(), c.want)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("failure %v does not wrap the driver's error", err)
			}
			// Stopped by its supervisor: the board hears it is gone, and never that it was up.
			if m := actortest.Want[*actor.Terminated](p); !m.Who.Equal(pid) {
				t.Errorf("Terminated of %s, want %s", m.Who.Id, pid.Id)
			}
			time.Sleep(driver.UpAfter + 50*time.Millisecond) // past the up timer, had it been left armed
			p.Flush()
			if rest := p.Pending(); len(rest) > 0 {
				t.Errorf("after the failure the board got %s", actortest.Describe(rest))
			}
		})
	}
}

// A restarted driver runs again (the board's strategy restarts it after a back-off;
// here the probe restarts it at once), and the board hears DriverUp from the new run.
func TestDriverRunsAgainAfterARestart(t *testing.T) {
	p := actortest.New(t) // restarts a failed child
	var n atomic.Int32
	d := newFake("serial", func(ctx context.Context, _ func([]byte)) error {
		if n.Add(1) == 1 {
			return errors.New("device gone")
		}
		<-ctx.Done()
		return nil
	})
	spawn(t, p, d)
	actortest.Want[*actortest.Failed](p)
	actortest.Want[*actors.DriverUp](p)
	if got := d.runs.Load(); got != 2 {
		t.Errorf("Run was called %d times, want 2", got)
	}
}

// Stopping the driver actor (the board stops, the daemon shuts down) cancels Run's
// context and waits for Run to return.
func TestDriverStopCancelsRun(t *testing.T) {
	p := actortest.New(t)
	d := newFake("console", untilStopped)
	pid := spawn(t, p, d)
	actortest.Want[*actors.DriverUp](p)
	if err := p.Sys.Root.PoisonFuture(pid).Wait(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.stopped:
	default:
		t.Fatal("the actor stopped before its driver's Run saw its context done and returned")
	}
	if m := actortest.Want[*actor.Terminated](p); !m.Who.Equal(pid) {
		t.Errorf("Terminated of %s, want %s", m.Who.Id, pid.Id)
	}
}
