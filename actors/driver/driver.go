// Package driver is the actor that runs one driver of a board (a serial console, power
// control, a simulated board). The driver's I/O runs in a goroutine the actor owns;
// when it fails, the actor panics so that its board's supervision strategy restarts it
// with back-off (see board.Strategy).
package driver

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/hashicorp/go-hclog"
)

// Driver is one piece of board I/O.
type Driver interface {
	// Name names the driver within its board, e.g. "serial".
	Name() string
	// Run does the driver's work until ctx is done (then it returns nil) or it fails (it
	// returns the error). Bytes it reads for the console go to out.
	Run(ctx context.Context, out func([]byte)) error
}

// StopTimeout bounds how long a stopping driver actor waits for Run to return.
const StopTimeout = 5 * time.Second

// Props returns the props of the actor running d. Its parent (the board) receives
// DriverUp when the driver starts and DriverOutput for what it reads.
func Props(d Driver, logger hclog.Logger) *actor.Props { return PropsTo(d, logger, nil) }

// PropsTo is Props with what the driver reads given to out, called in the driver's own
// goroutine (for a console, its reader's) as it is read, instead of sent to the parent
// as DriverOutput messages; nil means messages. A message per chunk costs a mailbox post
// and, as a board's mailbox is mostly idle, a goroutine started and scheduled to run it:
// on 1,000 streaming consoles that was about a tenth of the supervisor's CPU.
func PropsTo(d Driver, logger hclog.Logger, out func([]byte)) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &driverActor{d: d, log: logger, out: out}
	}, actor.WithReceiverMiddleware(actors.LogPanics(logger)))
}

// UpAfter is how long a (re)started driver must run without failing before its board
// hears that it is up: a device that is absent fails at once, and the board's health
// does not flap between good and unknown while it is gone.
const UpAfter = 250 * time.Millisecond

type (
	failed  struct{ err error }
	settled struct{ done chan struct{} }
)

type driverActor struct {
	d      Driver
	log    hclog.Logger
	out    func([]byte) // nil: DriverOutput messages to the parent
	cancel context.CancelFunc
	done   chan struct{}
	up     *time.Timer // reports DriverUp once the driver has settled
}

func (a *driverActor) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started:
		a.start(ctx)
	case *failed:
		panic(actors.Failure{Err: fmt.Errorf("driver %s: %w", a.d.Name(), m.err)})
	case *settled:
		if m.done == a.done && a.up != nil {
			a.up.Stop()
			a.up = nil
			ctx.Send(ctx.Parent(), &actors.DriverUp{Driver: a.d.Name()})
		}
	case *actor.Stopping, *actor.Restarting:
		a.stop()
	}
}

func (a *driverActor) start(ctx actor.Context) {
	runCtx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan struct{})
	self, parent, root, done := ctx.Self(), ctx.Parent(), ctx.ActorSystem().Root, a.done
	name := a.d.Name()
	out := a.out
	if out == nil {
		// Output goes straight to the board: one mailbox hop fewer per chunk.
		out = func(b []byte) { root.Send(parent, &actors.DriverOutput{Driver: name, Data: b, At: time.Now()}) }
	}
	go func() {
		defer close(done)
		var err error
		func() {
			// A panic in the driver's own goroutine would take the whole daemon down;
			// it becomes a failure of this actor instead.
			defer func() {
				if r := recover(); r != nil {
					a.log.Error("driver panicked", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			err = a.d.Run(runCtx, out)
		}()
		if err == nil && runCtx.Err() == nil {
			err = fmt.Errorf("returned without an error before it was stopped")
		}
		if runCtx.Err() == nil {
			root.Send(self, &failed{err: err})
		}
	}()
	a.up = time.AfterFunc(UpAfter, func() { root.Send(self, &settled{done: done}) })
}

func (a *driverActor) stop() {
	if a.up != nil {
		a.up.Stop()
		a.up = nil
	}
	if a.cancel == nil {
		return
	}
	a.cancel()
	select {
	case <-a.done:
	case <-time.After(StopTimeout):
		a.log.Error("driver did not stop in time; abandoning it", "timeout", StopTimeout.String())
	}
	a.cancel = nil
}
