package main

import (
	"context"
	"fmt"
	"net"
	"os"
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
	// LinkChunk is how many events go in one DeliverBatch, as the outbox hands over a
	// read chunk of hook output: 1024 lines of about 50 bytes, under the hook watcher's
	// 64 KiB read.
	LinkChunk = 1024
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

func (noSupervisor) StartJob(context.Context, connector.StartJobRequest) error   { return nil }
func (noSupervisor) StopJob(context.Context, connector.StopJobRequest) error     { return nil }
func (noSupervisor) ExtendJob(context.Context, connector.ExtendJobRequest) error { return nil }

func hookLine(i int) connector.Event {
	return connector.Event{Seq: uint64(i), Time: time.Now(), Board: "b0000", JobID: "00000000-0000-0000-0000-000000000001",
		Hook: &connector.HookLine{Source: jobs.SourceBeforeLeaseHook, Text: fmt.Sprintf("flashing block %d of the root file system", i), Offset: int64(i * 48)}}
}

// linkResult is one run of the link.
type linkResult struct {
	sent, acked, bad uint64
	rate             float64
}

// runLinkOnce sends hook-line events through the real link on loopback: the supervisor's
// Client with its durable Queue (fsync on, as the daemon has it) to a Server whose
// handler counts them; an event counts once the coordinator has it and the supervisor's
// queue has its ack. batch hands them over as the outbox does (DeliverBatch per chunk);
// otherwise one at a time (UpdateEvent), the per-event path.
func runLinkOnce(dir string, batch bool) (linkResult, error) {
	q, err := bvgrpc.OpenQueue(filepath.Join(dir, "outbox.db"), bvgrpc.QueueOptions{})
	if err != nil {
		return linkResult{}, err
	}
	defer q.Close()
	h := &counter{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return linkResult{}, err
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

	began := time.Now()
	sent := 0
	chunk := make([]connector.Event, 0, LinkChunk)
	for sent < LinkEvents && time.Since(began) < LinkWindow/2 {
		sent++
		if !batch {
			client.UpdateEvent(hookLine(sent))
			continue
		}
		chunk = append(chunk, hookLine(sent))
		if len(chunk) == LinkChunk {
			client.DeliverBatch(chunk)
			chunk = chunk[:0]
		}
	}
	if len(chunk) > 0 {
		client.DeliverBatch(chunk)
	}
	for q.Acked() < uint64(sent) && time.Since(began) < LinkWindow {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(began)
	r := linkResult{sent: uint64(sent), acked: q.Acked(), bad: h.bad.Load()}
	r.rate = float64(r.acked) / elapsed.Seconds()
	return r, nil
}

// runLink measures the link with events handed over in batches (the outbox's way) and,
// as the baseline in the same run, one at a time (the per-event path); then the durable
// outbox alone (runOutbox).
func runLink(e *env) error {
	var res [2]linkResult
	for i, batch := range []bool{false, true} {
		dir := filepath.Join(e.dir, fmt.Sprintf("link-%v", batch))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		r, err := runLinkOnce(dir, batch)
		if err != nil {
			return err
		}
		res[i] = r
		logf("link (batches %v): %d events sent, %d delivered and acked: %.0f events/s; %d out of order", batch, r.sent, r.acked, r.rate, r.bad)
	}
	base, r := res[0], res[1]
	note := ""
	if r.acked < r.sent {
		note = fmt.Sprintf("only %d of %d acked within %s; ", r.acked, r.sent, LinkWindow)
	}
	e.add(Row{Figure: "coordinator link: events/s end to end (durable outbox -> loopback gRPC -> counting handler -> ack)", Value: fmt.Sprintf("%.0f events/s", r.rate), Num: r.rate, Unit: "events/s",
		Target: ">= 50000 events/s", Met: met(r.rate >= 50000 && r.acked == r.sent && r.bad == 0),
		Baseline: fmt.Sprintf("%.0f events/s", base.rate), Ratio: ratio(r.rate, base.rate),
		Note: fmt.Sprintf("%s%d hook-line events handed over in batches of %d (DeliverBatch), fsync on; %d out of order; baseline: the same handed over one at a time (UpdateEvent)", note, r.sent, LinkChunk, r.bad)})
	return runOutbox(e)
}

// OutboxLines bounds the outbox scenario.
const (
	OutboxLines      = 300000
	OutboxWindow     = 10 * time.Second
	OutboxBaseWindow = 3 * time.Second
)

// runOutbox measures hook lines into the durable outbox (fsync on) the way the hook
// watcher hands them over: a chunk of lines (DeliverBatch), then a wait on Synced before
// the next chunk. Baseline, in the same run: the per-line path, each line appended on its
// own (Append) and waited for before the next, as a watcher recording its offset per
// line did.
func runOutbox(e *env) error {
	open := func(name string) (*bvgrpc.Queue, *bvgrpc.Client, error) {
		q, err := bvgrpc.OpenQueue(filepath.Join(e.dir, name), bvgrpc.QueueOptions{})
		if err != nil {
			return nil, nil, err
		}
		return q, bvgrpc.NewClient(bvgrpc.ClientOptions{Address: "127.0.0.1:1", SupervisorID: "bench", Queue: q}), nil
	}
	q, c, err := open("outbox-batch.db")
	if err != nil {
		return err
	}
	began := time.Now()
	n := 0
	chunk := make([]connector.Event, 0, LinkChunk)
	for n < OutboxLines && time.Since(began) < OutboxWindow {
		for len(chunk) < LinkChunk {
			n++
			chunk = append(chunk, hookLine(n))
		}
		c.DeliverBatch(chunk)
		<-c.Synced()
		chunk = chunk[:0]
	}
	elapsed := time.Since(began)
	rate := float64(n) / elapsed.Seconds()
	durable := q.Durable() && q.LastSeq() == uint64(n)
	commits, _ := q.WriteStats()
	q.Close()

	bq, _, err := open("outbox-line.db")
	if err != nil {
		return err
	}
	began = time.Now()
	bn := 0
	for time.Since(began) < OutboxBaseWindow {
		bn++
		<-bq.Append(bvgrpc.ToProto(hookLine(bn)))
	}
	base := float64(bn) / time.Since(began).Seconds()
	bq.Close()
	logf("outbox: %d lines at %.0f lines/s in chunks of %d; baseline %d lines at %.0f lines/s one at a time", n, rate, LinkChunk, bn, base)
	e.add(Row{Figure: "hook lines into the durable outbox (fsync'd group commits)", Value: fmt.Sprintf("%.0f lines/s", rate), Num: rate, Unit: "lines/s",
		Target: ">= 100000 lines/s", Met: met(rate >= 100000 && durable), Baseline: fmt.Sprintf("%.0f lines/s", base), Ratio: ratio(rate, base),
		Note: fmt.Sprintf("%d lines, DeliverBatch of %d then a wait on Synced, as the hook watcher does: %d commits of %.1f ms each (bbolt: 2 fdatasync per commit); baseline: each line appended (Append) and waited for before the next",
			n, LinkChunk, commits, float64(elapsed.Milliseconds())/float64(max(commits, 1)))})
	return nil
}
