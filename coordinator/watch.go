package coordinator

import (
	"context"
	"database/sql"
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

// publish sends a lease's committed state to its watchers. It runs in the state loop,
// after each commit, so snapshots reach every watcher in commit order.
func (c *Coordinator) publish(l *leaseRow) {
	c.logs.changed(l.ID) // and to its LeaseLog streams (leaselog.go)
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	ws := c.watchers[l.ID]
	if len(ws) == 0 {
		return
	}
	p := leaseProto(l, false)
	for w := range ws {
		w.push(p)
	}
}

// WatchLease streams a lease: its current state first, then every change, until it ends
// (the last message is DONE or FAILED), the caller goes away or the coordinator closes.
// A watcher that falls more than WatchBuffer changes behind skips the oldest ones. Only
// the lease's holder or an admin may watch it, and each user may have at most
// Options.MaxWatchesPerUser streams open (Options.MaxWatches in all).
func (c *Coordinator) WatchLease(req *pb.WatchLeaseRequest, stream pb.LeaseService_WatchLeaseServer) error {
	ctx := stream.Context()
	if req.GetId() == "" {
		return status.Error(codes.InvalidArgument, "a lease ID is required")
	}
	w := &watcher{sig: make(chan struct{}, 1)}
	var release func()
	// Read and register in the state loop: every later commit is published to w, none
	// before.
	var last *pb.Lease
	err := c.do(ctx, func(tctx context.Context, tx *sql.Tx, fx *effects) error {
		l, err := c.leaseFor(tctx, tx, ctx, req.GetId(), "watch")
		if err != nil {
			return err
		}
		if release, err = c.takeWatch(ctx); err != nil {
			return err
		}
		last = leaseProto(l, false)
		c.watchMu.Lock()
		if c.watchers[l.ID] == nil {
			c.watchers[l.ID] = map[*watcher]struct{}{}
		}
		c.watchers[l.ID][w] = struct{}{}
		c.watchMu.Unlock()
		return nil
	})
	if err != nil {
		if release != nil {
			release() // a cancelled call may have got its slot
		}
		return rpcError(err)
	}
	defer release()
	id := last.GetId()
	defer func() {
		c.watchMu.Lock()
		delete(c.watchers[id], w)
		if len(c.watchers[id]) == 0 {
			delete(c.watchers, id)
		}
		c.watchMu.Unlock()
	}()
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
