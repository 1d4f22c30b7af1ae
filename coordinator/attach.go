package coordinator

// A queued or starting lease belongs to a live client. A lease created attached
// (CreateLeaseRequest.attached, as `boardvisor shell` does) is held by its client's
// AttachLease streams: once none has been open for AttachGrace, a lease that is not
// READY yet is withdrawn from the queue, or released if a board was assigned (its
// hooks run as for any release). A short grace lets a client reconnect. A lease created
// detached (`lease create --detach`) is withdrawn if it is still queued after its
// max_wait (default DetachedMaxWait). Once READY a lease is its session's: these rules
// no longer apply (its duration bounds it).
//
// Holds are kept in memory and in the lease_holds table, so that a restarted
// coordinator still withdraws the leases of clients that went away meanwhile (their
// grace starts again at start-up, longer, so live clients have time to reattach).

import (
	"context"
	"database/sql"
	"sync"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of the holds.
const (
	// DefaultAttachGrace is how long an attached lease may be without its client's
	// AttachLease stream.
	DefaultAttachGrace = 3 * time.Second
	// DefaultDetachedMaxWait bounds how long a detached lease may stay queued.
	DefaultDetachedMaxWait = time.Hour
)

// restartGrace is the grace of attached leases at start-up: clients reconnect with
// back-off after a coordinator restart. (A variable for the tests.)
var restartGrace = 15 * time.Second

// leaseHoldsTable (migration 4) keeps the holds across a restart; only this file reads
// and writes it.
const leaseHoldsTable = `CREATE TABLE IF NOT EXISTS lease_holds (
		id         TEXT PRIMARY KEY,
		attached   BOOLEAN NOT NULL,
		wait_until BIGINT NOT NULL DEFAULT 0
	)`

// hold is one lease's tie to its client.
type hold struct {
	attached bool
	streams  int       // open AttachLease streams
	deadline time.Time // withdrawn then unless a stream is open (attached) or it is no longer queued (detached)
}

// holds are the coordinator's leases tied to a client or to a wait bound.
type holds struct {
	mu   sync.Mutex
	m    map[string]*hold
	wake chan struct{}
}

func newHolds() *holds {
	return &holds{m: map[string]*hold{}, wake: make(chan struct{}, 1)}
}

func (h *holds) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// openHolds loads the holds recorded before a restart (or by the last active
// coordinator), in place of those in memory.
func (c *Coordinator) openHolds(ctx context.Context) error {
	rows, err := c.db.QueryContext(ctx, `SELECT id, attached, wait_until FROM lease_holds`)
	if err != nil {
		return err
	}
	defer rows.Close()
	now := c.now()
	m := map[string]*hold{}
	for rows.Next() {
		var id string
		var attached bool
		var until int64
		if err := rows.Scan(&id, &attached, &until); err != nil {
			return err
		}
		hd := &hold{attached: attached, deadline: time.Unix(0, until)}
		if attached {
			hd.deadline = now.Add(max(restartGrace, c.attachGrace()))
		}
		m[id] = hd
	}
	if err := rows.Err(); err != nil {
		return err
	}
	h := c.ops.holds
	h.mu.Lock()
	h.m = m
	h.mu.Unlock()
	h.poke()
	return nil
}

// reloadHolds is openHolds when the coordinator becomes the active one.
func (c *Coordinator) reloadHolds() error {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	return c.openHolds(ctx)
}

func (c *Coordinator) attachGrace() time.Duration {
	if c.opts.AttachGrace > 0 {
		return c.opts.AttachGrace
	}
	return DefaultAttachGrace
}

func (c *Coordinator) detachedMaxWait() time.Duration {
	if c.opts.DetachedMaxWait > 0 {
		return c.opts.DetachedMaxWait
	}
	return DefaultDetachedMaxWait
}

// holdLease records, in the transaction that creates an attached lease, that its
// client holds it; createdHold then puts the hold in memory, after the commit.
func (c *Coordinator) holdLease(ctx context.Context, tx *sql.Tx, id string, req *pb.CreateLeaseRequest) error {
	if !req.GetAttached() {
		return nil
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO lease_holds (id, attached, wait_until) VALUES ($1, $2, $3)`, id, true, int64(0))
	return err
}

// createdHold puts a new lease's hold in memory. An attached lease's grace runs from
// its creation until its client attaches: a client killed between CreateLease and
// AttachLease leaves nothing behind. A detached lease that had to queue is bounded by
// its max_wait (recorded here, after the commit: a crash right between leaves it to
// its duration alone).
func (c *Coordinator) createdHold(ctx context.Context, l *pb.Lease, req *pb.CreateLeaseRequest) {
	hd := &hold{attached: req.GetAttached(), deadline: c.now().Add(c.attachGrace())}
	if !hd.attached {
		if !l.GetQueued() {
			return
		}
		wait := c.detachedMaxWait()
		if d := req.GetMaxWait(); d != nil && d.IsValid() && d.AsDuration() > 0 {
			wait = min(d.AsDuration(), c.opts.MaxDuration)
		}
		hd.deadline = c.now().Add(wait)
		if err := c.execFenced(context.WithoutCancel(ctx), `INSERT INTO lease_holds (id, attached, wait_until) VALUES ($1, $2, $3)`,
			l.GetId(), false, hd.deadline.UnixNano()); err != nil {
			c.log.Warn("lease hold: record the wait bound (it holds until a restart)", "job", l.GetId(), "error", err)
		}
	}
	h := c.ops.holds
	h.mu.Lock()
	if _, ok := h.m[l.GetId()]; !ok {
		h.m[l.GetId()] = hd
	}
	h.mu.Unlock()
	h.poke()
}

// AttachLease is WatchLease for the lease's client, which holds an attached lease
// while the stream is open.
func (c *Coordinator) AttachLease(req *pb.AttachLeaseRequest, stream pb.LeaseService_AttachLeaseServer) error {
	ctx := stream.Context()
	l, err := c.lease(ctx, req.GetId())
	if err != nil {
		return err
	}
	if err := c.mayChange(ctx, l, "attach to"); err != nil {
		return err
	}
	h := c.ops.holds
	h.mu.Lock()
	hd := h.m[l.ID]
	if hd != nil {
		hd.streams++
	}
	h.mu.Unlock()
	if hd != nil {
		defer func() {
			h.mu.Lock()
			hd.streams--
			if hd.streams == 0 && hd.attached {
				hd.deadline = c.now().Add(c.attachGrace())
			}
			h.mu.Unlock()
			h.poke()
		}()
	}
	return c.WatchLease(&pb.WatchLeaseRequest{Id: l.ID}, stream)
}

// runHolds withdraws the leases whose hold has lapsed, until ctx is done or the
// coordinator closes.
func (c *Coordinator) runHolds(ctx context.Context) {
	h := c.ops.holds
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.done:
			return
		case <-timer.C:
		case <-h.wake:
		}
		now := c.now()
		var due []string
		next := now.Add(time.Second)
		h.mu.Lock()
		for id, hd := range h.m {
			if hd.attached && hd.streams > 0 {
				continue
			}
			if !hd.deadline.After(now) {
				due = append(due, id)
			} else if hd.deadline.Before(next) {
				next = hd.deadline
			}
		}
		h.mu.Unlock()
		for _, id := range due {
			c.lapse(ctx, id)
		}
		c.ops.reloadTokensIfChanged()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(max(time.Until(next), 10*time.Millisecond))
	}
}

// lapse acts on a lapsed hold: a lease not READY yet is withdrawn (queued) or released
// (assigned); one that is READY or over keeps no hold. A hold that came back meanwhile
// (the client reattached) is left.
func (c *Coordinator) lapse(ctx context.Context, id string) {
	h := c.ops.holds
	h.mu.Lock()
	hd := h.m[id]
	if hd == nil || (hd.attached && hd.streams > 0) || hd.deadline.After(c.now()) {
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	l, err := getLease(ctx, c.db, id)
	if err != nil {
		c.log.Warn("lease hold: read the lease", "job", id, "error", err)
		h.mu.Lock()
		hd.deadline = c.now().Add(time.Second) // try again
		h.mu.Unlock()
		return
	}
	act := l != nil && l.State != stateEnded && l.StopAt == 0 && l.Phase < int32(pb.LeasePhase_LEASE_PHASE_READY)
	if act && !hd.attached {
		act = l.State == stateQueued
	}
	if act {
		reason := "withdrawn: its client went away (no AttachLease stream for " + c.attachGrace().String() + ")"
		if !hd.attached {
			reason = "withdrawn: still queued after its maximum wait"
		}
		sys := context.WithValue(ctx, userKey{}, User{Name: "coordinator", Admin: true})
		if _, err := c.ReleaseLease(sys, &pb.ReleaseLeaseRequest{Id: id, Reason: reason}); err != nil && status.Code(err) != codes.NotFound {
			c.log.Warn("lease hold: withdraw the lease", "job", id, "error", err)
			h.mu.Lock()
			hd.deadline = c.now().Add(time.Second)
			h.mu.Unlock()
			return
		}
		c.log.Info("lease withdrawn", "job", id, "client", l.Client, "board", l.Board, "reason", reason)
		c.ops.audit(auditEntry{kind: "withdrawn", who: "coordinator", board: l.Board, job: id, reason: reason})
	}
	h.mu.Lock()
	if h.m[id] == hd && hd.streams == 0 {
		delete(h.m, id)
	}
	h.mu.Unlock()
	if err := c.execFenced(context.WithoutCancel(ctx), `DELETE FROM lease_holds WHERE id = $1`, id); err != nil {
		c.log.Warn("lease hold: forget it", "job", id, "error", err)
	}
}
