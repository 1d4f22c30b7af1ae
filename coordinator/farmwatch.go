package coordinator

// What an in-process client of the coordinator (the web dashboard, package web) needs
// beyond the LeaseService: a push of farm changes, the supervisors' connection state,
// each board's queue length and who a client token belongs to. Nothing here costs
// anything while nobody watches: notify is one atomic load then.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// farmFeed wakes the FarmWatches after every committed change of boards, leases or
// supervisors. Its zero value is ready.
type farmFeed struct {
	n    atomic.Int64 // watches open: notify does nothing while it is 0
	mu   sync.Mutex
	subs map[*FarmWatch]struct{}
}

// FarmWatch is woken (C) after the coordinator committed a change that may show in
// ListBoards, ListLeases, Supervisors or BoardQueues. Wake-ups coalesce: one pending
// wake-up covers every change before it is received. Close it when done.
type FarmWatch struct {
	c    chan struct{}
	feed *farmFeed
	once sync.Once
}

// C is the channel a wake-up arrives on.
func (w *FarmWatch) C() <-chan struct{} { return w.c }

// Close stops the wake-ups.
func (w *FarmWatch) Close() {
	w.once.Do(func() {
		w.feed.mu.Lock()
		delete(w.feed.subs, w)
		w.feed.mu.Unlock()
		w.feed.n.Add(-1)
	})
}

// WatchFarm returns a watch woken after every committed change of the farm (boards,
// leases, supervisors, a supervisor gone beyond its grace period). It is for the
// coordinator's own process: the caller reads what changed through the LeaseService
// methods.
func (c *Coordinator) WatchFarm() *FarmWatch {
	w := &FarmWatch{c: make(chan struct{}, 1), feed: &c.farm}
	c.farm.mu.Lock()
	if c.farm.subs == nil {
		c.farm.subs = map[*FarmWatch]struct{}{}
	}
	c.farm.subs[w] = struct{}{}
	c.farm.mu.Unlock()
	c.farm.n.Add(1)
	return w
}

// notify wakes every FarmWatch; it never blocks.
func (f *farmFeed) notify() {
	if f.n.Load() == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.subs {
		select {
		case w.c <- struct{}{}:
		default:
		}
	}
}

// SupervisorState is what the coordinator knows of one supervisor.
type SupervisorState struct {
	ID          string
	Connected   bool
	LastContact time.Time // when it was last heard of (connected, an event batch, gone)
	Version     string
	LastSeq     int64 // the highest event number stored from it
	Boards      int   // boards it serves
	LiveLeases  int   // leases not ended on its boards
	// Gone is true once it has been disconnected longer than the grace period (its
	// boards show OFFLINE).
	Gone bool
}

// Supervisors lists the supervisors the coordinator knows, by ID. (The supervisor's own
// outbox depth is not known here: supervisors do not report it.)
//
// The dashboard reads this rather than the operators' ListSupervisors RPC because it
// also shows what that RPC does not carry: the last sequence number stored from each
// supervisor, and whether it has been gone longer than the grace period.
func (c *Coordinator) Supervisors(ctx context.Context) ([]SupervisorState, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT s.id, s.connected, s.last_contact, s.version, s.last_seq,
		(SELECT COUNT(*) FROM boards b WHERE b.supervisor_id = s.id),
		(SELECT COUNT(*) FROM leases l WHERE l.supervisor_id = s.id AND l.state IN ($1, $2))
		FROM supervisors s ORDER BY s.id`, stateAssigned, stateActive)
	if err != nil {
		return nil, rpcError(err)
	}
	defer rows.Close()
	now := c.now()
	var out []SupervisorState
	for rows.Next() {
		var s SupervisorState
		var last int64
		if err := rows.Scan(&s.ID, &s.Connected, &last, &s.Version, &s.LastSeq, &s.Boards, &s.LiveLeases); err != nil {
			return nil, rpcError(err)
		}
		s.LastContact = time.Unix(0, last)
		s.Gone = !s.Connected && now.Sub(s.LastContact) > c.opts.Grace
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, rpcError(err)
	}
	return out, nil
}

// BoardQueues returns, per board name, how many queued leases could take the board
// (by name or by selector, by the coordinator's own matching). Boards no queued lease
// wants are absent.
func (c *Coordinator) BoardQueues(ctx context.Context) (map[string]int, error) {
	queued, err := queryLeases(ctx, c.db, `WHERE l.state = $1`, stateQueued)
	if err != nil {
		return nil, rpcError(err)
	}
	out := map[string]int{}
	if len(queued) == 0 {
		return out, nil
	}
	boards, err := queryBoards(ctx, c.db, &c.rowsRead, "")
	if err != nil {
		return nil, rpcError(err)
	}
	for _, l := range queued {
		m, err := leaseMatcher(l)
		if err != nil {
			continue // a selector that no longer parses matches nothing (assign.go does the same)
		}
		for _, b := range boards {
			if m.matches(b) {
				out[b.Name]++
			}
		}
	}
	return out, nil
}

// ClientAuth tells whether client authentication is on (Options.ClientTokens).
func (c *Coordinator) ClientAuth() bool { return c.clientTokens() != nil }

// LookupClientToken returns the user a client token belongs to, as the LeaseService's
// authentication would (constant-time comparison against every token).
func (c *Coordinator) LookupClientToken(token string) (User, bool) {
	tokens := c.clientTokens() // reloaded by the operators' token commands (operator.go)
	if tokens == nil || token == "" {
		return User{}, false
	}
	return tokens.lookup(token)
}
