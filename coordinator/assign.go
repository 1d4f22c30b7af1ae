package coordinator

import (
	"context"
	"database/sql"
	"sort"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// assignable reports whether a board may take a new lease now: its supervisor is
// connected, it is healthy, not in maintenance, AVAILABLE, not holding off after a
// refusal, and the coordinator's own records give it no unended lease.
func (c *Coordinator) assignable(b *boardRow, busy map[string]string, now int64) bool {
	return c.sessions[b.SupervisorID] != nil && b.Connected &&
		b.Health == int32(pb.BoardHealth_BOARD_HEALTH_GOOD) && !b.Maintenance &&
		b.Status == int32(jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE) &&
		b.HoldUntil <= now && busy[b.Name] == ""
}

// matcher tells which boards a lease may go to.
type matcher struct {
	board string
	sel   Selector
	image *pb.ImageSpecification // nil: none (images.go)
}

func leaseMatcher(l *leaseRow) (matcher, error) {
	if l.WantBoard != "" {
		return matcher{board: l.WantBoard}, nil
	}
	sel, err := ParseSelector(l.Selector)
	return matcher{sel: sel}, err
}

func (m matcher) matches(b *boardRow) bool {
	if !imageFits(m.image, b.Labels) {
		return false
	}
	if m.board != "" {
		return b.Name == m.board
	}
	return m.sel.Matches(b.Labels)
}

// assignQueued gives free boards to queued leases, oldest lease first: a lease is never
// overtaken by a younger one that a board it matches goes to, so leases with the same
// selector are served FIFO. Among the free boards a lease matches, the one idle longest
// is taken. c.mu is held.
func (c *Coordinator) assignQueued(ctx context.Context, tx *sql.Tx, fx *effects) error {
	queued, err := queryLeases(ctx, tx, `WHERE l.state = $1`, stateQueued)
	if err != nil || len(queued) == 0 {
		return err
	}
	boards, err := queryBoards(ctx, tx, "")
	if err != nil {
		return err
	}
	busy, err := busyBoards(ctx, tx)
	if err != nil {
		return err
	}
	now := c.now().UnixNano()
	var free []*boardRow
	for _, b := range boards {
		if c.assignable(b, busy, now) {
			free = append(free, b)
		}
	}
	sort.SliceStable(free, func(i, j int) bool { return free[i].LastLeaseAt < free[j].LastLeaseAt })
	for _, l := range queued {
		if len(free) == 0 {
			break
		}
		m, err := leaseMatcher(l)
		if err != nil {
			c.log.Error("queued lease has a bad selector", "job", l.ID, "error", err)
			continue
		}
		if m.image, err = leaseImage(ctx, tx, l.ID); err != nil {
			return err
		}
		for i, b := range free {
			if !m.matches(b) {
				continue
			}
			free = append(free[:i], free[i+1:]...)
			l.State, l.Board, l.SupervisorID = stateAssigned, b.Name, b.SupervisorID
			l.AssignedAt, l.BeginsAt = now, 0
			l.EndsAt = now + l.DurationNS + l.ExtraNS
			l.Phase = int32(pb.LeasePhase_LEASE_PHASE_CREATED)
			l.StatusMessage = "assigned to board " + b.Name + "; waiting for its supervisor to start the lease"
			if err := saveLease(ctx, tx, l); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE boards SET last_lease_at = $1 WHERE name = $2`, now, b.Name); err != nil {
				return err
			}
			c.log.Info("lease assigned", "job", l.ID, "board", b.Name, "supervisor", b.SupervisorID, "client", l.Client)
			fx.startJob(b.SupervisorID, startJobOf(l))
			fx.leaseChanged(l.ID)
			fx.wake = true
			break
		}
	}
	return nil
}

// expire asks supervisors to stop the leases whose time is up. A lease's end is
// begins_at + duration (+ extensions) once READY, and assigned_at + duration before.
func (c *Coordinator) expire(ctx context.Context, tx *sql.Tx, fx *effects) error {
	now := c.now().UnixNano()
	leases, err := queryLeases(ctx, tx, `WHERE l.state IN ($1, $2) AND l.stop_at = 0 AND l.ends_at > 0 AND l.ends_at <= $3`,
		stateAssigned, stateActive, now)
	if err != nil {
		return err
	}
	for _, l := range leases {
		l.StopAt, l.StopReason = now, "lease expired"
		l.StatusMessage = "ending: the lease's time is up"
		if err := saveLease(ctx, tx, l); err != nil {
			return err
		}
		c.log.Info("lease expired: stopping it", "job", l.ID, "board", l.Board, "supervisor", l.SupervisorID)
		fx.stopJob(l.SupervisorID, l.ID, l.StopReason)
		fx.leaseChanged(l.ID)
	}
	return nil
}

// tick runs the timers that need no supervisor contact: lease expiry, and assignment of
// queued leases to boards whose refusal hold is over.
func (c *Coordinator) tick(ctx context.Context) error {
	return c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		fx.quiet = true
		if err := c.expire(ctx, tx, fx); err != nil {
			return err
		}
		return c.assignQueued(ctx, tx, fx)
	})
}

// nextExpiry returns the earliest end of a running lease not yet asked to stop (Unix
// nanoseconds), or 0.
func (c *Coordinator) nextExpiry(ctx context.Context) (int64, error) {
	var next sql.NullInt64
	err := c.db.QueryRowContext(ctx, `SELECT MIN(ends_at) FROM leases WHERE state IN ($1, $2) AND stop_at = 0 AND ends_at > 0`,
		stateAssigned, stateActive).Scan(&next)
	return next.Int64, err
}
