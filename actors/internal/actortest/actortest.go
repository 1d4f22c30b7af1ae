// Package actortest runs one actor of the supervisor's tree on its own, for the unit
// tests of the actor packages. A Probe is a small parent actor: it spawns the actor
// under test as its child, stands in for the child's parent (a lease's board, a hook
// watcher's lease, a board's host), records every message the child sends it and every
// failure the child hands to its supervisor, and lets the test send the child
// messages. A real outbox in front of a local connector records the events the child
// emits, numbered as the coordinator would see them.
//
// Only tests import this package.
package actortest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/hashicorp/go-hclog"
)

// Wait bounds every wait of a Probe.
const Wait = 20 * time.Second

// Failed is recorded when the child fails (panics) and its failure reaches the probe,
// its supervisor.
type Failed struct {
	Who    *actor.PID
	Reason any
}

// Probe is the parent of one actor under test. Create it with New.
type Probe struct {
	t      *testing.T
	Sys    *actor.ActorSystem
	Logger hclog.Logger
	// Self is the probe: the child's parent.
	Self *actor.PID
	// Child is the actor under test, once Spawn was called.
	Child *actor.PID
	// Outbox is a real outbox delivering to Conn; pass it as the child's Outbox.
	Outbox *actor.PID
	Conn   *local.Connector

	mu      sync.Mutex
	msgs    []any // what the probe received, in order
	next    int   // the first message not yet taken by Next
	changed chan struct{}
}

// Options changes how a Probe supervises its child.
type Options struct {
	// Directive is what the probe does with a failed child after recording it
	// (zero: restart it, as a board does a lease and a lease a hook watcher).
	Directive actor.Directive
}

type (
	spawnReq struct {
		props *actor.Props
		name  string
		reply chan spawnRes
	}
	spawnRes struct {
		pid *actor.PID
		err error
	}
	flushReq struct{}
)

// New starts an actor system, a probe and an outbox for the test; all stop when it ends.
func New(t *testing.T, opts ...Options) *Probe {
	t.Helper()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Directive == 0 {
		o.Directive = actor.RestartDirective
	}
	logger := hclog.New(&hclog.LoggerOptions{Output: logWriter{t}, Level: hclog.Debug, Name: "test"})
	p := &Probe{t: t, Sys: actors.NewSystem(logger), Logger: logger, Conn: local.New(), changed: make(chan struct{})}
	strategy := actor.NewOneForOneStrategy(100, time.Minute, func(reason any) actor.Directive { return o.Directive })
	props := actor.PropsFromFunc(p.receive, actor.WithSupervisor(recording{p: p, inner: strategy}))
	p.Self = p.Sys.Root.Spawn(props)
	p.Outbox = p.Sys.Root.Spawn(outbox.Props(p.Conn))
	t.Cleanup(func() {
		// protoactor's Shutdown stops no actor (STACK.md): stop them first.
		_ = p.Sys.Root.PoisonFuture(p.Self).Wait()
		_ = p.Sys.Root.PoisonFuture(p.Outbox).Wait()
		p.Sys.Shutdown()
	})
	return p
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// recording records each failure of the child, then lets inner decide.
type recording struct {
	p     *Probe
	inner actor.SupervisorStrategy
}

func (r recording) HandleFailure(sys *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, msg any) {
	r.p.record(&Failed{Who: child, Reason: reason})
	r.inner.HandleFailure(sys, sup, child, rs, reason, msg)
}

func (p *Probe) receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actor.Started, *actor.Stopping, *actor.Stopped, *actor.Restarting:
	case *spawnReq:
		pid, err := ctx.SpawnNamed(m.props, m.name)
		m.reply <- spawnRes{pid, err}
	case *flushReq:
		ctx.Respond(m)
	default:
		p.record(m)
	}
}

func (p *Probe) record(m any) {
	p.mu.Lock()
	p.msgs = append(p.msgs, m)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// T returns the probe's test.
func (p *Probe) T() *testing.T { return p.t }

// Spawn starts the actor under test as the probe's child, named name (the name a real
// parent gives it, e.g. "lease/<job>"), and returns its PID.
func (p *Probe) Spawn(props *actor.Props, name string) *actor.PID {
	p.t.Helper()
	reply := make(chan spawnRes, 1)
	p.Sys.Root.Send(p.Self, &spawnReq{props: props, name: name, reply: reply})
	select {
	case r := <-reply:
		if r.err != nil {
			p.t.Fatalf("spawn %s: %v", name, r.err)
		}
		p.Child = r.pid
		return r.pid
	case <-time.After(Wait):
		p.t.Fatalf("the probe did not spawn %s within %s", name, Wait)
		return nil
	}
}

// Send sends msg to the child.
func (p *Probe) Send(msg any) { p.Sys.Root.Send(p.Child, msg) }

// Request sends msg to the child and returns its answer.
func (p *Probe) Request(msg any) any {
	p.t.Helper()
	res, err := p.Sys.Root.RequestFuture(p.Child, msg, Wait).Result()
	if err != nil {
		p.t.Fatalf("%T to %s: no answer: %v", msg, p.Child.Id, err)
	}
	return res
}

// Flush returns once the probe has recorded every message sent to it before the call.
func (p *Probe) Flush() {
	p.t.Helper()
	if _, err := p.Sys.Root.RequestFuture(p.Self, &flushReq{}, Wait).Result(); err != nil {
		p.t.Fatalf("flush the probe: %v", err)
	}
}

// Pending returns the messages recorded but not yet taken by Next.
func (p *Probe) Pending() []any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]any(nil), p.msgs[p.next:]...)
}

// Next returns the next message the probe received, waiting for it (bounded by Wait).
func (p *Probe) Next() any {
	p.t.Helper()
	deadline := time.NewTimer(Wait)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		if p.next < len(p.msgs) {
			m := p.msgs[p.next]
			p.next++
			p.mu.Unlock()
			return m
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			p.t.Fatalf("the probe received nothing more within %s; it had: %s", Wait, Describe(p.all()))
			return nil
		}
	}
}

func (p *Probe) all() []any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]any(nil), p.msgs...)
}

// Want returns the next message the probe received, which must be a T.
func Want[T any](p *Probe) T {
	p.t.Helper()
	m := p.Next()
	v, ok := m.(T)
	if !ok {
		var zero T
		p.t.Fatalf("the probe received %s, want a %T; all it had: %s", describe(m), zero, Describe(p.all()))
	}
	return v
}

// Until skips messages until one is a T for which ok holds (nil: any T), and returns
// it with the messages it skipped.
func Until[T any](p *Probe, ok func(T) bool) (T, []any) {
	p.t.Helper()
	var skipped []any
	for {
		m := p.Next()
		if v, is := m.(T); is && (ok == nil || ok(v)) {
			return v, skipped
		}
		skipped = append(skipped, m)
	}
}

// Describe lists messages on one line each, for failures.
func Describe(ms []any) string {
	var b strings.Builder
	for _, m := range ms {
		b.WriteString("\n\t")
		b.WriteString(describe(m))
	}
	if b.Len() == 0 {
		return "nothing"
	}
	return b.String()
}

func describe(m any) string {
	switch v := m.(type) {
	case *actors.LeaseChanged:
		return fmt.Sprintf("LeaseChanged{%s %s %s end=%v}", v.JobID, v.Phase, v.Status, v.EndRequested)
	case *actor.Terminated:
		return "Terminated{" + v.Who.Id + "}"
	case *Failed:
		return fmt.Sprintf("Failed{%s: %v}", v.Who.Id, v.Reason)
	}
	return fmt.Sprintf("%T%+v", m, m)
}

// ---- events ----

// WaitEvents waits (bounded by Wait) until cond holds of the events the outbox
// delivered, and returns them.
func (p *Probe) WaitEvents(what string, cond func([]connector.Event) bool) []connector.Event {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	evs, err := p.Conn.Wait(ctx, cond)
	if err != nil {
		p.t.Fatalf("no %s within %s; events:%s", what, Wait, EventList(evs))
	}
	return evs
}

// WaitTransition waits until job reported a transition to phase, and returns the events.
func (p *Probe) WaitTransition(job string, to jobs.Phase) []connector.Event {
	p.t.Helper()
	return p.WaitEvents(fmt.Sprintf("transition of %s to %s", job, to), func(evs []connector.Event) bool {
		for _, ev := range evs {
			if ev.JobID == job && ev.Transition != nil && ev.Transition.To == to {
				return true
			}
		}
		return false
	})
}

// Transitions lists job's transitions in evs as "FROM->TO".
func Transitions(evs []connector.Event, job string) []string {
	var out []string
	for _, ev := range evs {
		if ev.JobID == job && ev.Transition != nil {
			out = append(out, ev.Transition.From.String()+"->"+ev.Transition.To.String())
		}
	}
	return out
}

// HookLines lists the hook lines of job in evs from source, in order.
func HookLines(evs []connector.Event, job string, source jobs.LogSource) []connector.HookLine {
	var out []connector.HookLine
	for _, ev := range evs {
		if ev.JobID == job && ev.Hook != nil && ev.Hook.Source == source {
			out = append(out, *ev.Hook)
		}
	}
	return out
}

// Index returns the index of the first event in evs for which ok holds, or -1.
func Index(evs []connector.Event, ok func(connector.Event) bool) int {
	for i, ev := range evs {
		if ok(ev) {
			return i
		}
	}
	return -1
}

// EventList lists events on one line each, for failures.
func EventList(evs []connector.Event) string {
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString("\n\t")
		b.WriteString(ev.String())
	}
	return b.String()
}

// ---- hooks and faults ----

// Gate is a FIFO a hook blocks on (`read x < GATE`) until the test opens it.
type Gate string

// NewGate makes a gate in a temporary directory of the test.
func NewGate(t *testing.T) Gate {
	t.Helper()
	g := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(g, 0o600); err != nil {
		t.Fatal(err)
	}
	return Gate(g)
}

// Open lets the hook blocked on the gate go on (bounded by Wait).
func (g Gate) Open(t *testing.T) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(string(g), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString("go\n")
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(Wait):
		t.Fatalf("no hook read gate %s within %s", g, Wait)
	}
}

// Boom is what a test sends an actor to make it panic (see PanicOnBoom).
type Boom struct{}

// PanicOnBoom is receiver middleware that makes the actor panic, once, when it receives
// a *Boom: a bug, as its supervisor sees it.
func PanicOnBoom() actor.ReceiverMiddleware {
	var fired atomic.Bool
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		return func(ctx actor.ReceiverContext, env *actor.MessageEnvelope) {
			if _, ok := env.Message.(*Boom); ok && fired.CompareAndSwap(false, true) {
				panic("injected fault")
			}
			next(ctx, env)
		}
	}
}

// WaitRecord polls store until job's record satisfies ok, and returns it. (A Store
// cannot be awaited; the poll is bounded by Wait.)
func WaitRecord(t *testing.T, store actors.Store, job, what string, ok func(jobs.Record) bool) jobs.Record {
	t.Helper()
	deadline := time.Now().Add(Wait)
	for {
		rec, found, err := store.Load(job)
		if err != nil {
			t.Fatal(err)
		}
		if found && ok(rec) {
			return rec
		}
		if time.Now().After(deadline) {
			t.Fatalf("the record of %s never showed %s within %s: %+v", job, what, Wait, rec)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
