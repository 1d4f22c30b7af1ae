// Package outbox is the actor that numbers every event of a supervisor and hands it to
// the connector. Events reach it from many actors; its mailbox puts them in one order,
// and the sequence numbers it gives are gap-free in that order.
//
// Persistence of un-acked events and replay after a reconnect land with the gRPC
// connector; until then the outbox delivers at once.
package outbox

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/connector"
)

// Sink receives every numbered event after the connector. Sinks are called from the
// outbox actor, in sequence order, and must not block.
type Sink func(connector.Event)

// Props returns the props of an outbox delivering to conn and then to each sink.
func Props(conn connector.SupervisorConnector, sinks ...Sink) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		o := &outbox{conn: conn, sinks: sinks}
		// A connector that keeps events across restarts says where numbering goes on:
		// events already sent are never renumbered.
		if l, ok := conn.(interface{ LastSeq() uint64 }); ok {
			o.seq = l.LastSeq()
		}
		return o
	})
}

type outbox struct {
	conn  connector.SupervisorConnector
	sinks []Sink
	seq   uint64
}

func (o *outbox) Receive(ctx actor.Context) {
	switch m := ctx.Message().(type) {
	case *actors.Emit:
		o.seq++
		ev := m.Event
		ev.Seq = o.seq
		if ev.Time.IsZero() {
			ev.Time = time.Now()
		}
		connector.Deliver(o.conn, ev)
		for _, s := range o.sinks {
			s(ev)
		}
	}
}
