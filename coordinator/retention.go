package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"
)

// Retention of ended leases' logs. The rule: an ended lease's log (its events) is kept
// for LeaseLogOptions.Retention after the lease ended, and the logs of ended leases
// together take at most LeaseLogOptions.MaxBytes of stored payload; past either bound the
// logs of the leases that ended first are removed. The logs of leases that have not
// ended are never touched, nor is the lease's own record (leases table).
//
// Removal runs in the background, in small transactions (PruneBatch events each, with
// PrunePause in between) taken under c.mu like every other write, so the supervisor
// link waits for at most one of them. A lease's log is first counted (its size), once,
// after the lease ended; a log that is removed is marked (lease_logs.pruned_at), and
// LeaseLog then says so instead of serving an empty log.

// startRetention runs retention until ctx is done or the coordinator closes; the
// returned function stops it and waits for it.
func (c *Coordinator) startRetention(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		opts := c.logs.opts
		t := time.NewTimer(opts.PruneInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-c.done:
				return
			case <-t.C:
			}
			if _, active := c.currentTerm(); !active {
				t.Reset(opts.PruneInterval) // a standby prunes nothing (leader.go)
				continue
			}
			if _, err := c.pruneLogs(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errClosed) && !isStandby(err) {
				c.log.Error("lease log retention", "error", err)
			}
			t.Reset(opts.PruneInterval)
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// pruneStats is what one retention pass did.
type pruneStats struct {
	counted, byAge, bySize int   // leases whose logs were counted, removed for age, for size
	events                 int64 // events removed
}

// pruneLogs is one retention pass: count the logs of newly ended leases, then remove
// the logs past their age, then the oldest ones while the total is over the bound.
func (c *Coordinator) pruneLogs(ctx context.Context) (pruneStats, error) {
	return c.pruneLogsWith(ctx, c.logs.opts)
}

// pruneLogsWith is pruneLogs with the given bounds (tests change them without racing
// the background pass).
func (c *Coordinator) pruneLogsWith(ctx context.Context, opts LeaseLogOptions) (pruneStats, error) {
	var st pruneStats
	n, err := c.countEndedLogs(ctx)
	st.counted = n
	if err != nil {
		return st, err
	}
	if opts.Retention > 0 {
		cutoff := c.now().Add(-opts.Retention).UnixNano()
		for {
			ids, err := queryIDs(ctx, c.db, `SELECT lease_id, log_bytes FROM lease_logs
				WHERE pruned_at = 0 AND log_bytes >= 0 AND ended_at < $1 ORDER BY ended_at LIMIT 100`, cutoff)
			if err != nil || len(ids) == 0 {
				return st, err
			}
			for _, id := range ids {
				ev, err := c.pruneLog(ctx, id.id)
				st.events += ev
				if err != nil {
					return st, err
				}
				st.byAge++
			}
			if len(ids) < 100 {
				break
			}
		}
	}
	if opts.MaxBytes > 0 {
		var total int64
		if err := c.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(log_bytes), 0) FROM lease_logs WHERE pruned_at = 0 AND log_bytes > 0`).Scan(&total); err != nil {
			return st, err
		}
		for total > opts.MaxBytes {
			ids, err := queryIDs(ctx, c.db, `SELECT lease_id, log_bytes FROM lease_logs
				WHERE pruned_at = 0 AND log_bytes >= 0 ORDER BY ended_at LIMIT 100`)
			if err != nil || len(ids) == 0 {
				return st, err
			}
			for _, id := range ids {
				if total <= opts.MaxBytes {
					break
				}
				ev, err := c.pruneLog(ctx, id.id)
				st.events += ev
				if err != nil {
					return st, err
				}
				st.bySize++
				total -= id.bytes
			}
		}
	}
	if st.byAge+st.bySize > 0 {
		c.log.Info("lease logs removed by retention", "for_age", st.byAge, "for_size", st.bySize, "events", st.events)
	}
	return st, nil
}

type idBytes struct {
	id    string
	bytes int64
}

func queryIDs(ctx context.Context, q querier, query string, args ...any) ([]idBytes, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []idBytes
	for rows.Next() {
		var r idBytes
		if err := rows.Scan(&r.id, &r.bytes); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// countEndedLogs records the size and end time of the logs of ended leases not counted
// yet, a few leases per transaction; it returns how many it counted.
func (c *Coordinator) countEndedLogs(ctx context.Context) (int, error) {
	counted := 0
	for {
		rows, err := c.db.QueryContext(ctx, `SELECT l.id, l.ended_at FROM leases l LEFT JOIN lease_logs g ON g.lease_id = l.id
			WHERE l.state = $1 AND (g.lease_id IS NULL OR g.log_bytes < 0) ORDER BY l.ended_at LIMIT 50`, stateEnded)
		if err != nil {
			return counted, err
		}
		type ended struct {
			id string
			at int64
		}
		var todo []ended
		for rows.Next() {
			var e ended
			if err := rows.Scan(&e.id, &e.at); err != nil {
				rows.Close()
				return counted, err
			}
			todo = append(todo, e)
		}
		err = rows.Err()
		rows.Close()
		if err != nil || len(todo) == 0 {
			return counted, err
		}
		sizes := make([]int64, len(todo))
		for i, e := range todo {
			// Read outside any write transaction: a long log costs the link nothing.
			if err := c.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM events WHERE job_id = $1`, e.id).Scan(&sizes[i]); err != nil {
				return counted, err
			}
		}
		err = c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
			fx.quiet = true
			for i, e := range todo {
				if _, err := tx.ExecContext(ctx, `INSERT INTO lease_logs (lease_id, ended_at, log_bytes) VALUES ($1, $2, $3)
					ON CONFLICT (lease_id) DO UPDATE SET ended_at = excluded.ended_at, log_bytes = excluded.log_bytes`,
					e.id, e.at, sizes[i]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return counted, err
		}
		counted += len(todo)
	}
}

// pruneLog removes one lease's log, PruneBatch events per transaction, and marks it
// removed in the last one. It returns how many events it removed.
func (c *Coordinator) pruneLog(ctx context.Context, id string) (int64, error) {
	opts := c.logs.opts
	var removed int64
	for {
		var n int64
		err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
			fx.quiet = true
			res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE (supervisor_id, seq) IN
				(SELECT supervisor_id, seq FROM events WHERE job_id = $1 LIMIT $2)`, id, opts.PruneBatch)
			if err != nil {
				return err
			}
			if n, err = res.RowsAffected(); err != nil {
				return err
			}
			if n < int64(opts.PruneBatch) {
				_, err = tx.ExecContext(ctx, `UPDATE lease_logs SET pruned_at = $2, log_bytes = 0 WHERE lease_id = $1`, id, c.now().UnixNano())
			}
			return err
		})
		removed += n
		if err != nil || n < int64(opts.PruneBatch) {
			return removed, err
		}
		t := time.NewTimer(opts.PrunePause)
		select {
		case <-ctx.Done():
			t.Stop()
			return removed, ctx.Err()
		case <-c.done:
			t.Stop()
			return removed, errClosed
		case <-t.C:
		}
	}
}
