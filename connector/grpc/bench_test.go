package grpc

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	ggrpc "google.golang.org/grpc"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

func benchLine(i int) connector.Event {
	return connector.Event{Seq: uint64(i), Time: time.Now(), Board: "b0000", JobID: "00000000-0000-0000-0000-000000000001",
		Hook: &connector.HookLine{Source: jobs.SourceBeforeLeaseHook, Text: fmt.Sprintf("flashing block %d of the root file system", i), Offset: int64(i * 48)}}
}

// BenchmarkQueueAppendPerEvent is the per-event path: Append, a channel per event.
func BenchmarkQueueAppendPerEvent(b *testing.B) {
	q, err := OpenQueue(filepath.Join(b.TempDir(), "outbox.db"), QueueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	var last <-chan struct{}
	for i := 1; i <= b.N; i++ {
		last = q.Append(ToProto(benchLine(i)))
	}
	<-last
}

// BenchmarkLinkPerEvent sends events handed over one at a time (UpdateEvent).
func BenchmarkLinkPerEvent(b *testing.B) {
	coord := &benchCounter{}
	addr, _ := serveB(b, &Server{Handler: coord})
	q, err := OpenQueue(filepath.Join(b.TempDir(), "outbox.db"), QueueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	c := NewClient(ClientOptions{Address: addr, SupervisorID: "bench", Queue: q})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, nil); close(done) }()
	defer func() { cancel(); <-done }()
	b.ResetTimer()
	for i := 1; i <= b.N; i++ {
		c.UpdateEvent(benchLine(i))
	}
	for q.Acked() < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkQueueBatch appends hook lines as the outbox and the hook watcher will: one
// DeliverBatch per chunk of 256 lines, then a wait on Synced before the next chunk.
func BenchmarkQueueBatch(b *testing.B) {
	q, err := OpenQueue(filepath.Join(b.TempDir(), "outbox.db"), QueueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	c := NewClient(ClientOptions{Address: "127.0.0.1:1", SupervisorID: "bench", Queue: q})
	b.ResetTimer()
	evs := make([]connector.Event, 0, benchChunk)
	for i := 1; i <= b.N; i++ {
		evs = append(evs, benchLine(i))
		if len(evs) == cap(evs) || i == b.N {
			c.DeliverBatch(evs)
			<-c.Synced()
			evs = evs[:0]
		}
	}
}

// BenchmarkLinkBatch sends events handed over as the outbox will: in batches.
func BenchmarkLinkBatch(b *testing.B) {
	coord := &benchCounter{}
	addr, _ := serveB(b, &Server{Handler: coord})
	q, err := OpenQueue(filepath.Join(b.TempDir(), "outbox.db"), QueueOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	c := NewClient(ClientOptions{Address: addr, SupervisorID: "bench", Queue: q})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, nil); close(done) }()
	defer func() { cancel(); <-done }()
	b.ResetTimer()
	evs := make([]connector.Event, 0, benchChunk)
	for i := 1; i <= b.N; i++ {
		evs = append(evs, benchLine(i))
		if len(evs) == cap(evs) || i == b.N {
			c.DeliverBatch(evs)
			<-c.Synced()
			evs = evs[:0]
		}
	}
	for coord.n.Load() < uint64(b.N) || q.Acked() < uint64(b.N) {
		time.Sleep(time.Millisecond)
	}
}

type benchCounter struct{ n atomic.Uint64 }

func (c *benchCounter) Connected(context.Context, *Session, *pb.Hello) (uint64, error) {
	return c.n.Load(), nil
}
func (c *benchCounter) Events(_ context.Context, _ *Session, evs []*pb.Event) error {
	c.n.Add(uint64(len(evs)))
	return nil
}
func (c *benchCounter) Disconnected(*Session, error) {}

func serveB(b testing.TB, srv *Server) (string, func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	g := ggrpc.NewServer()
	srv.Register(g)
	go g.Serve(lis)
	b.Cleanup(g.Stop)
	return lis.Addr().String(), g.Stop
}

// benchChunk is how many lines go in one DeliverBatch: about 50 KiB of them, under the
// hook watcher's 64 KiB read chunk.
const benchChunk = 1024
