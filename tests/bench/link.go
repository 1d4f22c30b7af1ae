package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	bvgrpc "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
)

// LinkEvents is how many events the link scenario sends; LinkWindow bounds it.
const (
	LinkEvents = 200000
	LinkWindow = 20 * time.Second
)

// counter is a link.Handler that counts events and checks their order.
type counter struct {
	n    atomic.Uint64
	bad  atomic.Uint64
	mu   sync.Mutex
	last uint64
}

func (c *counter) Connected(context.Context, *bvgrpc.Session, *pb.Hello) (uint64, error) {
	return c.n.Load(), nil
}

func (c *counter) Events(_ context.Context, _ *bvgrpc.Session, evs []*pb.Event) error {
	c.mu.Lock()
	for _, ev := range evs {
		if ev.GetSeq() != c.last+1 {
			c.bad.Add(1)
		}
		c.last = ev.GetSeq()
	}
	c.mu.Unlock()
	c.n.Add(uint64(len(evs)))
	return nil
}

func (c *counter) Disconnected(*bvgrpc.Session, error) {}

type noSupervisor struct{}

func (noSupervisor) StartJob(context.Context, connector.StartJobRequest) error { return nil }
func (noSupervisor) StopJob(context.Context, connector.StopJobRequest) error   { return nil }

// runLink sends hook-line events through the real link on loopback: the supervisor's
// Client with its durable Queue (fsync on, as the daemon has it) to a Server whose
// handler counts them; an event counts once the coordinator has it and the supervisor's
// queue has its ack.
func runLink(e *env) error {
	q, err := bvgrpc.OpenQueue(filepath.Join(e.dir, "outbox.db"), bvgrpc.QueueOptions{})
	if err != nil {
		return err
	}
	defer q.Close()
	h := &counter{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	g := grpc.NewServer()
	(&bvgrpc.Server{Handler: h}).Register(g)
	go g.Serve(lis)
	defer g.Stop()
	client := bvgrpc.NewClient(bvgrpc.ClientOptions{Address: lis.Addr().String(), SupervisorID: "bench", Queue: q,
		Boards: []bvgrpc.BoardInfo{{Name: "b0000"}}})
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = client.Run(ctx, noSupervisor{}); close(runDone) }()
	defer func() { cancel(); <-runDone }()

	// Events go in as the outbox would hand them over: numbered, one at a time.
	began := time.Now()
	sent := 0
	job := "00000000-0000-0000-0000-000000000001"
	for sent < LinkEvents && time.Since(began) < LinkWindow/2 {
		sent++
		client.UpdateEvent(connector.Event{Seq: uint64(sent), Time: time.Now(), Board: "b0000", JobID: job,
			Hook: &connector.HookLine{Source: jobs.SourceBeforeLeaseHook, Text: fmt.Sprintf("flashing block %d of the root file system", sent), Offset: int64(sent * 48)}})
	}
	appended := time.Since(began)
	for q.Acked() < uint64(sent) && time.Since(began) < LinkWindow {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(began)
	acked := q.Acked()
	rate := float64(acked) / elapsed.Seconds()
	logf("link: %d events appended in %s, %d delivered and acked in %s: %.0f events/s; %d out of order",
		sent, appended.Round(time.Millisecond), acked, elapsed.Round(time.Millisecond), rate, h.bad.Load())
	note := ""
	if acked < uint64(sent) {
		note = fmt.Sprintf("only %d of %d acked within %s; ", acked, sent, LinkWindow)
	}
	e.add(Row{Figure: "coordinator link: events/s through connector/grpc with acks", Value: fmt.Sprintf("%.0f events/s", rate), Num: rate, Unit: "events/s",
		Target: "-", Met: met(acked == uint64(sent) && h.bad.Load() == 0),
		Note: fmt.Sprintf("%s%d hook-line events, durable queue (fsync) -> loopback gRPC -> counting handler -> ack; %d out of order", note, sent, h.bad.Load())})
	return nil
}

func (noSupervisor) ExtendJob(context.Context, connector.ExtendJobRequest) error { return nil }
