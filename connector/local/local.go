// Package local is the in-process SupervisorConnector: the embedded mode's link between
// a supervisor and a coordinator in the same process, and the tests' window on a
// supervisor. It records every event and lets its owner issue StartJob and StopJob.
package local

import (
	"context"
	"errors"
	"sync"

	"github.com/boardvisor/boardvisor/connector"
)

// Connector is an in-process connector. Its zero value is not usable; use New.
type Connector struct {
	mu      sync.Mutex
	events  []connector.Event
	changed chan struct{} // closed and replaced whenever an event arrives
	sup     connector.Supervisor
	running chan struct{} // closed when Run has a supervisor
}

var _ connector.SupervisorConnector = (*Connector)(nil)

// New returns a connector with no events.
func New() *Connector {
	return &Connector{changed: make(chan struct{}), running: make(chan struct{})}
}

// ErrNotRunning is returned by StartJob and StopJob when Run was not called before ctx ended.
var ErrNotRunning = errors.New("local connector: supervisor not running")

// Run makes sup the target of StartJob and StopJob until ctx is done. It returns
// ctx's error.
func (c *Connector) Run(ctx context.Context, sup connector.Supervisor) error {
	c.mu.Lock()
	if c.sup != nil {
		c.mu.Unlock()
		return errors.New("local connector: Run called twice")
	}
	c.sup = sup
	close(c.running)
	c.mu.Unlock()
	<-ctx.Done()
	return ctx.Err()
}

func (c *Connector) supervisor(ctx context.Context) (connector.Supervisor, error) {
	select {
	case <-c.running:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.sup, nil
	case <-ctx.Done():
		return nil, ErrNotRunning
	}
}

// StartJob asks the supervisor to start a job, waiting (bounded by ctx) for Run.
func (c *Connector) StartJob(ctx context.Context, req connector.StartJobRequest) error {
	sup, err := c.supervisor(ctx)
	if err != nil {
		return err
	}
	return sup.StartJob(ctx, req)
}

// StopJob asks the supervisor to stop a job, waiting (bounded by ctx) for Run.
func (c *Connector) StopJob(ctx context.Context, req connector.StopJobRequest) error {
	sup, err := c.supervisor(ctx)
	if err != nil {
		return err
	}
	return sup.StopJob(ctx, req)
}

// ExtendJob asks the supervisor to extend a job, waiting (bounded by ctx) for Run.
func (c *Connector) ExtendJob(ctx context.Context, req connector.ExtendJobRequest) error {
	sup, err := c.supervisor(ctx)
	if err != nil {
		return err
	}
	return sup.ExtendJob(ctx, req)
}

func (c *Connector) record(ev connector.Event) {
	c.mu.Lock()
	c.events = append(c.events, ev)
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// UpdateJobState records a state transition event.
func (c *Connector) UpdateJobState(ev connector.Event) { c.record(ev) }

// ReportJobError records an error event.
func (c *Connector) ReportJobError(ev connector.Event) { c.record(ev) }

// SendJobConsoleLog records a console event.
func (c *Connector) SendJobConsoleLog(ev connector.Event) { c.record(ev) }

// UpdateEvent records any other event.
func (c *Connector) UpdateEvent(ev connector.Event) { c.record(ev) }

// Events returns a copy of every event recorded so far, in arrival order.
func (c *Connector) Events() []connector.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]connector.Event(nil), c.events...)
}

// Wait blocks until cond is true of the events recorded so far, or ctx is done. It
// returns the events cond last saw, and ctx's error if cond never became true.
func (c *Connector) Wait(ctx context.Context, cond func([]connector.Event) bool) ([]connector.Event, error) {
	for {
		c.mu.Lock()
		evs := append([]connector.Event(nil), c.events...)
		changed := c.changed
		c.mu.Unlock()
		if cond(evs) {
			return evs, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return evs, ctx.Err()
		}
	}
}
