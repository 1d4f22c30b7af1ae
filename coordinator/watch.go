package coordinator

import (
	"context"
	"sync"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// WatchBuffer is how many lease snapshots may wait for one slow watcher. Past it the
// oldest waiting snapshots are dropped; the newest (and so the final one) never is.
const WatchBuffer = 64

// watcher is one WatchLease stream's mailbox. publish never blocks on it.
type watcher struct {
	mu  sync.Mutex
	q   []*pb.Lease
	sig chan struct{}
}

func (w *watcher) push(l *pb.Lease) {
	w.mu.Lock()
	if len(w.q) >= WatchBuffer {
		w.q = append(w.q[:0], w.q[len(w.q)-WatchBuffer+1:]...)
	}
	w.q = append(w.q, l)
	w.mu.Unlock()
	select {
	case w.sig <- struct{}{}:
	default:
	}
}

func (w *watcher) drain() []*pb.Lease {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.q
	w.q = nil
	return q
}

// publish sends a lease's committed state to its watchers; c.mu is held, so snapshots
// reach every watcher in commit order.
func (c *Coordinator) publish(ctx context.Context, id string) {
	c.logs.changed(id) // and to its LeaseLog streams (leaselog.go)
	ws := c.watchers[id]
	if len(ws) == 0 {
		return
	}
	l, err := getLease(context.WithoutCancel(ctx), c.db, id)
	if err != nil || l == nil {
		c.log.Warn("lease change not published to watchers", "job", id, "error", err)
		return
	}
	p := leaseProto(l, false)
	for w := range ws {
		w.push(p)
	}
}

// WatchLease streams a lease: its current state first, then every change, until it ends
// (the last message is DONE or FAILED), the caller goes away or the coordinator closes.
// A watcher that falls more than WatchBuffer changes behind skips the oldest ones.
func (c *Coordinator) WatchLease(req *pb.WatchLeaseRequest, stream pb.LeaseService_WatchLeaseServer) error {
	ctx := stream.Context()
	if req.GetId() == "" {
		return status.Error(codes.InvalidArgument, "a lease ID is required")
	}
	w := &watcher{sig: make(chan struct{}, 1)}
	// Register and read under c.mu: every later commit is published to w, none before.
	c.mu.Lock()
	l, err := getLease(ctx, c.db, req.GetId())
	if err == nil && l != nil {
		if c.watchers[l.ID] == nil {
			c.watchers[l.ID] = map[*watcher]struct{}{}
		}
		c.watchers[l.ID][w] = struct{}{}
	}
	c.mu.Unlock()
	if err != nil {
		return rpcError(err)
	}
	if l == nil {
		return status.Errorf(codes.NotFound, "lease %s not found", req.GetId())
	}
	defer func() {
		c.mu.Lock()
		delete(c.watchers[l.ID], w)
		if len(c.watchers[l.ID]) == 0 {
			delete(c.watchers, l.ID)
		}
		c.mu.Unlock()
	}()
	last := leaseProto(l, false)
	if err := stream.Send(last); err != nil {
		return err
	}
	if terminal(last.GetPhase()) {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-c.done:
			return status.Error(codes.Unavailable, "the coordinator is shutting down")
		case <-w.sig:
		}
		for _, p := range w.drain() {
			if proto.Equal(p, last) {
				continue
			}
			if err := stream.Send(p); err != nil {
				return err
			}
			last = p
			if terminal(p.GetPhase()) {
				return nil
			}
		}
	}
}
