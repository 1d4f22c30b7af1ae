package outbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// seen records the sequence numbers a sink was handed.
type seen struct {
	mu   sync.Mutex
	seqs map[uint64]bool
}

func (s *seen) sink(ev connector.Event) {
	s.mu.Lock()
	s.seqs[ev.Seq] = true
	s.mu.Unlock()
}

func (s *seen) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seqs[seq]
}

// ordered is a batching connector that checks, for every event it is handed, that
// every sink has it already, and reports what it got on got.
type ordered struct {
	sinks []*seen
	late  []uint64 // events the connector had before a sink
	got   chan []connector.Event
}

func (o *ordered) Run(ctx context.Context, _ connector.Supervisor) error {
	<-ctx.Done()
	return nil
}

func (o *ordered) DeliverBatch(evs []connector.Event) {
	for _, ev := range evs {
		for _, s := range o.sinks {
			if !s.has(ev.Seq) {
				o.late = append(o.late, ev.Seq)
			}
		}
	}
	o.got <- append([]connector.Event(nil), evs...)
}

func (o *ordered) UpdateJobState(ev connector.Event)    { o.DeliverBatch([]connector.Event{ev}) }
func (o *ordered) ReportJobError(ev connector.Event)    { o.DeliverBatch([]connector.Event{ev}) }
func (o *ordered) SendJobConsoleLog(ev connector.Event) { o.DeliverBatch([]connector.Event{ev}) }
func (o *ordered) UpdateEvent(ev connector.Event)       { o.DeliverBatch([]connector.Event{ev}) }

// Whoever learns of an event through the connector finds the supervisor's own views
// (the sinks: exporter status, recordings, metrics) showing it already: the sinks are
// handed each event, single or batched, before the connector.
func TestSinksHaveEachEventBeforeTheConnector(t *testing.T) {
	a, b := &seen{seqs: map[uint64]bool{}}, &seen{seqs: map[uint64]bool{}}
	conn := &ordered{sinks: []*seen{a, b}, got: make(chan []connector.Event, 16)}
	sys := actor.NewActorSystem()
	pid := sys.Root.Spawn(outbox.Props(conn, a.sink, b.sink))
	defer sys.Root.Stop(pid)

	ready := connector.Event{Board: "b", JobID: "j", Transition: &connector.Transition{From: jobs.PhaseBeforeLease, To: jobs.PhaseReady}}
	sys.Root.Send(pid, &actors.Emit{Event: ready})
	sys.Root.Send(pid, &actors.EmitBatch{Events: []connector.Event{
		{Board: "b", JobID: "j", Console: &connector.Console{Source: jobs.SourceDriver, Data: []byte("a")}},
		{Board: "b", JobID: "j", Console: &connector.Console{Source: jobs.SourceDriver, Data: []byte("b"), Offset: 1}},
	}})
	var n int
	for n < 3 {
		select {
		case evs := <-conn.got:
			n += len(evs)
		case <-time.After(10 * time.Second):
			t.Fatalf("the connector got %d of 3 events within 10s", n)
		}
	}
	if len(conn.late) > 0 {
		t.Fatalf("the connector had events %v before every sink had them", conn.late)
	}
}
