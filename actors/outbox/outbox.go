// Package outbox is the actor that numbers every event of a supervisor and hands it to
// the connector. Events reach it from many actors; its mailbox puts them in one order,
// and the sequence numbers it gives are gap-free in that order.
//
// A batch (EmitBatch: a read chunk of hook output) is numbered and handed over in one
// call when the connector is a connector.Batcher; its sender may ask to hear when the
// batch is durable (the connector is a connector.Syncer: the supervisor's on-disk
// outbox). That is how a hook watcher holds a hook's output back in its spool while the
// outbox cannot keep up, and how a lease waits for its hook's last lines before it moves
// on. The outbox itself never blocks on the disk.
package outbox

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/connector"
)

// Sink receives every numbered event before the connector does. Sinks are called from
// the outbox actor, in sequence order, and must not block.
//
// Sinks are the supervisor's own views (the exporter's status and log, the recordings,
// the metrics), so they come first: whoever learns of an event through the connector
// (the coordinator, a test watching it) finds those views already showing it. A client
// told by its coordinator that its lease is ready is never answered "before-lease hook
// running" by the exporter's GetStatus a moment later.
type Sink func(connector.Event)

// Props returns the props of an outbox delivering to each sink and then to conn.
func Props(conn connector.SupervisorConnector, sinks ...Sink) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		o := &outbox{conn: conn, sinks: sinks, stop: make(chan struct{})}
		// A connector that keeps events across restarts says where numbering goes on:
		// events already sent are never renumbered.
		if l, ok := conn.(interface{ LastSeq() uint64 }); ok {
			o.seq = l.LastSeq()
		}
		o.syncer, _ = conn.(connector.Syncer)
		return o
	})
}

type outbox struct {
	conn   connector.SupervisorConnector
	syncer connector.Syncer // nil: the connector keeps nothing on disk
	sinks  []Sink
	seq    uint64
	// stop ends the goroutines waiting for durability when the outbox stops (their
	// batches are then never reported durable: nothing is, that is not).
	stop    chan struct{}
	stopped bool
}

func (o *outbox) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actors.Emit:
		o.deliver([]connector.Event{m.Event}, nil)
	case *actors.EmitBatch:
		o.deliver(m.Events, m.Durable)
	case *actor.Stopping:
		if !o.stopped {
			o.stopped = true
			close(o.stop)
		}
	}
}

// deliver numbers evs, hands them to the sinks and then the connector, and closes
// durable (if not nil) once they are durable.
func (o *outbox) deliver(evs []connector.Event, durable chan struct{}) {
	now := time.Now()
	for i := range evs {
		o.seq++
		evs[i].Seq = o.seq
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	for _, ev := range evs {
		for _, s := range o.sinks {
			s(ev)
		}
	}
	if len(evs) > 0 {
		connector.DeliverAll(o.conn, evs)
	}
	if durable == nil {
		return
	}
	if o.syncer == nil {
		close(durable)
		return
	}
	synced := o.syncer.Synced()
	select {
	case <-synced:
		close(durable)
		return
	default:
	}
	stop := o.stop
	go func() {
		select {
		case <-synced:
			close(durable)
		case <-stop:
		}
	}()
}
