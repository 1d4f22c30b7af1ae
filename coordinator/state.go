package coordinator

import (
	"container/heap"
	"context"
	"database/sql"
	"fmt"
	"reflect"
	"sort"
	"strings"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// loaded is the state the state loop keeps in memory, as read from the store.
type loaded struct {
	fleet   *fleet
	queue   *leaseQueue
	live    map[string]*leaseRow
	applied map[string]uint64
	stored  map[string]uint64 // last event seq stored, per supervisor
	nextPos int64
}

// load reads the in-memory state from the store: every board, every unended lease, and
// each supervisor's event cursors. It costs a pass over the boards and the live leases:
// it runs at start and after a failed transaction, never per request.
func (c *Coordinator) load(ctx context.Context, q querier) (*loaded, error) {
	s := &loaded{fleet: newFleet(&c.visits), queue: newLeaseQueue(), live: map[string]*leaseRow{},
		applied: map[string]uint64{}, stored: map[string]uint64{}}
	boards, err := queryBoards(ctx, q, &c.rowsRead, "")
	if err != nil {
		return nil, fmt.Errorf("read boards: %w", err)
	}
	for _, b := range boards {
		s.fleet.put(*b)
	}
	leases, err := queryLeases(ctx, q, `WHERE l.state IN ($1, $2, $3)`, stateQueued, stateAssigned, stateActive)
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	if err := loadImages(ctx, q, leases); err != nil {
		return nil, fmt.Errorf("read lease images: %w", err)
	}
	for _, l := range leases { // in queue order
		s.live[l.ID] = l
		switch l.State {
		case stateQueued:
			if !s.queue.push(l) {
				c.log.Error("queued lease has a bad selector: it waits for ever", "job", l.ID, "selector", l.Selector)
			}
		default:
			if b := s.fleet.byName[l.Board]; b != nil && b.SupervisorID == l.SupervisorID && b.lease == "" {
				b.lease = l.ID
			}
		}
	}
	var pos sql.NullInt64
	if err := q.QueryRowContext(ctx, `SELECT MAX(queue_pos) FROM leases`).Scan(&pos); err != nil {
		return nil, fmt.Errorf("read queue position: %w", err)
	}
	s.nextPos = pos.Int64 + 1
	rows, err := q.QueryContext(ctx, `SELECT id, applied_seq, last_seq FROM supervisors`)
	if err != nil {
		return nil, fmt.Errorf("read supervisors: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var applied, stored int64
		if err := rows.Scan(&id, &applied, &stored); err != nil {
			return nil, err
		}
		s.applied[id], s.stored[id] = uint64(max(applied, 0)), uint64(max(stored, 0))
	}
	return s, rows.Err()
}

// reload replaces the in-memory state with the store's (at start, and after a failed
// transaction left it out of step). Events stored but not applied are queued to be
// applied from the store.
func (c *Coordinator) reload(ctx context.Context) error {
	s, err := c.load(ctx, c.db)
	if err != nil {
		return err
	}
	c.fleet, c.queue, c.live, c.applied, c.nextPos = s.fleet, s.queue, s.live, s.applied, s.nextPos
	c.timers = nil
	for _, l := range c.live {
		c.rearm(l)
	}
	c.freed = boardSet{}
	c.dirtyL, c.dirtyB, c.recentEnded = nil, nil, nil
	for _, b := range c.fleet.byName {
		c.refresh(b)
	}
	c.applyQ.reset()
	for sup, stored := range s.stored {
		if stored > s.applied[sup] {
			c.applyQ.push(&eventBatch{sup: sup, first: s.applied[sup] + 1, top: stored, catchUp: true})
		}
	}
	c.stale = false
	c.kickLoop()
	return nil
}

// checkIndex compares the in-memory state with a fresh load from the store and
// describes every difference (nil: none). Run it in the state loop.
func (c *Coordinator) checkIndex(ctx context.Context, tx *sql.Tx) error {
	s, err := c.load(ctx, tx)
	if err != nil {
		return err
	}
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	for name, want := range s.fleet.byName {
		got := c.fleet.byName[name]
		switch {
		case got == nil:
			add("board %s is in the store but not in the index", name)
		case !reflect.DeepEqual(got.boardRow.withoutSupervisorColumns(), want.boardRow.withoutSupervisorColumns()):
			add("board %s: index %+v, store %+v", name, got.boardRow, want.boardRow)
		case got.lease != want.lease:
			add("board %s: index says lease %q, store %q", name, got.lease, want.lease)
		}
	}
	for name, b := range c.fleet.byName {
		if s.fleet.byName[name] == nil {
			add("board %s is in the index but not in the store", name)
		}
		r := readiness(b, c.sessions[b.SupervisorID] != nil, c.now().UnixNano())
		_, free := c.fleet.free[b]
		_, held := c.fleet.held[b]
		if free != (r == 1) || held != (r == 2) {
			add("board %s: free %v held %v, but readiness is %d", name, free, held, r)
		}
	}
	setNames := func(f *fleet, sets func(*fleet) map[string]map[string]boardSet) map[string][]string {
		out := map[string][]string{}
		for k, vs := range sets(f) {
			for v, bs := range vs {
				for b := range bs {
					out[k+"="+v] = append(out[k+"="+v], b.Name)
				}
				sort.Strings(out[k+"="+v])
			}
		}
		return out
	}
	labels := func(f *fleet) map[string]map[string]boardSet { return f.byLabel }
	if got, want := setNames(c.fleet, labels), setNames(s.fleet, labels); !reflect.DeepEqual(got, want) {
		add("label index %v, store %v", got, want)
	}
	sups := func(f *fleet) map[string][]string {
		out := map[string][]string{}
		for sup, bs := range f.bySup {
			for b := range bs {
				out[sup] = append(out[sup], b.Name)
			}
			sort.Strings(out[sup])
		}
		return out
	}
	if got, want := sups(c.fleet), sups(s.fleet); !reflect.DeepEqual(got, want) {
		add("supervisor index %v, store %v", got, want)
	}
	ids := func(ls []*leaseRow) []string {
		out := []string{}
		for _, l := range ls {
			out = append(out, l.ID)
		}
		return out
	}
	if got, want := ids(c.queue.all()), ids(s.queue.all()); !reflect.DeepEqual(got, want) {
		add("queue %v, store %v", got, want)
	}
	if !reflect.DeepEqual(c.queue.perUser, s.queue.perUser) {
		add("queued per user %v, store %v", c.queue.perUser, s.queue.perUser)
	}
	for id, want := range s.live {
		got := c.live[id]
		if got == nil {
			add("lease %s is live in the store but not in memory", id)
			continue
		}
		g, w := *got, *want
		g.Endpoint, w.Endpoint = "", "" // joined from boards
		g.Token = w.Token               // the plain token lives only in the creating request
		if !reflect.DeepEqual(g, w) {
			add("lease %s: memory %+v, store %+v", id, g, w)
		}
	}
	for id := range c.live {
		if s.live[id] == nil {
			add("lease %s is live in memory but not in the store", id)
		}
	}
	if s.nextPos > c.nextPos {
		add("next queue position %d, store says at least %d", c.nextPos, s.nextPos)
	}
	// Every queued lease is waiting for a reason: no free board matches it.
	for _, l := range c.queue.all() {
		m, err := leaseMatcher(l)
		if err == nil && c.fleet.bestFree(m) != nil {
			add("queued lease %s matches free board %s", l.ID, c.fleet.bestFree(m).Name)
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("index and store differ:\n%s", strings.Join(diffs, "\n"))
}

// withoutSupervisorColumns drops what the boards row joins from supervisors (the index
// reads the connection state from the sessions).
func (b boardRow) withoutSupervisorColumns() boardRow {
	b.Connected, b.LastContact = false, 0
	if len(b.Labels) == 0 {
		b.Labels = map[string]string{}
	}
	return b
}

// Writes of the state loop are coalesced: a change marks its lease or board, and the
// step writes every marked row once, at its end (flush), with one multi-row upsert per
// table and flushRows rows: a step's writes cost a few statements whatever it holds
// (what PostgreSQL pays per statement is a round trip). Until then the store is behind
// the memory: what the state loop reads from the store within a step is never a marked
// row (live leases are read from memory, and a lease ended in the step stays in
// recentEnded until the flush).

func (c *Coordinator) markLease(l *leaseRow) {
	if c.dirtyL == nil {
		c.dirtyL = map[*leaseRow]struct{}{}
	}
	c.dirtyL[l] = struct{}{}
}

func (c *Coordinator) markBoard(b *boardEntry) {
	if c.dirtyB == nil {
		c.dirtyB = map[*boardEntry]struct{}{}
	}
	c.dirtyB[b] = struct{}{}
}

// flushRows bounds the rows of one upsert (SQLite looks "$n" parameters up linearly).
const flushRows = 40

// flush writes the marked leases and boards.
func (c *Coordinator) flush(ctx context.Context, tx *sql.Tx) error {
	leases := make([]*leaseRow, 0, len(c.dirtyL))
	for l := range c.dirtyL {
		leases = append(leases, l)
	}
	for len(leases) > 0 {
		n := min(len(leases), flushRows)
		if err := upsertLeases(ctx, tx, leases[:n], c.stepTerm); err != nil {
			return err
		}
		leases = leases[n:]
	}
	boards := make([]*boardRow, 0, len(c.dirtyB))
	for b := range c.dirtyB {
		if c.fleet.byName[b.Name] == b { // not removed since
			boards = append(boards, &b.boardRow)
		}
	}
	for len(boards) > 0 {
		n := min(len(boards), flushRows)
		if err := upsertBoards(ctx, tx, boards[:n]); err != nil {
			return err
		}
		boards = boards[n:]
	}
	clear(c.dirtyL)
	clear(c.dirtyB)
	clear(c.recentEnded)
	return nil
}

// refresh recomputes whether a board is free; a board that becomes free is noted, so
// that the step serves the queue from it.
func (c *Coordinator) refresh(b *boardEntry) {
	r := readiness(b, c.sessions[b.SupervisorID] != nil, c.now().UnixNano())
	if c.fleet.setFree(b, r) {
		c.freed[b] = struct{}{}
	}
}

// assignFreed serves the queue from the boards that became free: each goes, in order of
// idleness (longest first), to the oldest queued lease it matches. A lease is never
// overtaken by a younger one that a board it matches goes to.
func (c *Coordinator) assignFreed(ctx context.Context, tx *sql.Tx, fx *effects) error {
	for len(c.freed) > 0 {
		boards := make([]*boardEntry, 0, len(c.freed))
		for b := range c.freed {
			boards = append(boards, b)
		}
		c.freed = boardSet{}
		sort.Slice(boards, func(i, j int) bool {
			if boards[i].LastLeaseAt != boards[j].LastLeaseAt {
				return boards[i].LastLeaseAt < boards[j].LastLeaseAt
			}
			return boards[i].Name < boards[j].Name
		})
		for _, b := range boards {
			if _, free := c.fleet.free[b]; !free || c.queue.n == 0 {
				continue
			}
			l := c.queue.oldestFor(b, func(n int) { c.visits.Add(int64(n)) })
			if l == nil {
				continue
			}
			c.take(l, b)
			c.markLease(l)
			if err := c.assigned(ctx, tx, fx, l, b); err != nil {
				return err
			}
		}
	}
	return nil
}

// serveQueued gives a lease just put (back) in the queue a free board it matches, if
// there is one. No older queued lease matches a free board (they are served as boards
// free), so this overtakes nobody.
func (c *Coordinator) serveQueued(ctx context.Context, tx *sql.Tx, fx *effects, l *leaseRow) error {
	m, err := leaseMatcher(l)
	if err != nil {
		return nil
	}
	b := c.fleet.bestFree(m)
	if b == nil {
		return nil
	}
	c.take(l, b)
	c.markLease(l)
	return c.assigned(ctx, tx, fx, l, b)
}

// take gives board b to lease l in memory: l leaves the queue, b is no longer free.
func (c *Coordinator) take(l *leaseRow, b *boardEntry) {
	now := c.now().UnixNano()
	c.queue.remove(l)
	l.State, l.Board, l.SupervisorID = stateAssigned, b.Name, b.SupervisorID
	l.AssignedAt, l.BeginsAt = now, 0
	l.EndsAt = 0 // known at READY: the duration counts from then
	l.Phase = int32(pb.LeasePhase_LEASE_PHASE_CREATED)
	l.StatusMessage = "assigned to board " + b.Name + "; waiting for its supervisor to start the lease"
	l.Endpoint = b.Endpoint
	l.Offers = append(l.Offers, b.SupervisorID+"/"+b.Name)
	if len(l.Offers) > maxOffers {
		l.Offers = l.Offers[len(l.Offers)-maxOffers:]
	}
	b.lease = l.ID
	b.LastLeaseAt = now
	c.live[l.ID] = l
	c.refresh(b)
	c.rearm(l)
}

// assigned stores the board's side of an assignment (the lease row is the caller's) and
// queues the StartJob.
func (c *Coordinator) assigned(_ context.Context, _ *sql.Tx, fx *effects, l *leaseRow, b *boardEntry) error {
	c.markBoard(b)
	c.log.Info("lease assigned", "job", l.ID, "board", b.Name, "supervisor", b.SupervisorID, "client", l.Client)
	fx.startJob(b.SupervisorID, c.startJobOf(l))
	fx.leaseChanged(l)
	return nil
}

// ended updates the in-memory state for a lease that has just ended (endLease): it is
// no longer live, queued, or holding its board.
func (c *Coordinator) ended(l *leaseRow) {
	delete(c.live, l.ID)
	if c.recentEnded == nil {
		c.recentEnded = map[string]*leaseRow{}
	}
	c.recentEnded[l.ID] = l // the store has it only at the step's flush
	c.queue.remove(l)
	c.release(l)
}

// release frees l's board in the index if l holds it.
func (c *Coordinator) release(l *leaseRow) {
	if l.Board == "" {
		return
	}
	if b := c.fleet.get(l.Board); b != nil && b.lease == l.ID {
		b.lease = ""
		c.refresh(b)
	}
}

// requeued updates the in-memory state for an assigned lease put back in the queue
// (its board refused it); board is the one it had.
func (c *Coordinator) requeued(l *leaseRow, board string) {
	if b := c.fleet.get(board); b != nil && b.lease == l.ID {
		b.lease = ""
		c.refresh(b)
	}
	c.queue.push(l)
}

// lease returns a lease for the state loop: from memory if it is live, else from the
// store (nil if there is none).
func (c *Coordinator) leaseOf(ctx context.Context, tx *sql.Tx, id string) (*leaseRow, error) {
	if l := c.live[id]; l != nil {
		return l, nil
	}
	if l := c.recentEnded[id]; l != nil {
		return l, nil
	}
	if id == "" {
		return nil, nil
	}
	l, err := getLease(ctx, tx, id)
	if l != nil {
		// Kept for the rest of the step: a second read gets the same row, with what the
		// first reader changed (the store has it only at the flush).
		if c.recentEnded == nil {
			c.recentEnded = map[string]*leaseRow{}
		}
		c.recentEnded[id] = l
	}
	return l, err
}

// Deadlines: every live lease not yet asked to stop has one, when the coordinator ends
// it. They are kept in a heap; an entry whose lease moved on is dropped when it comes up.

type deadline struct {
	at int64
	id string
}

type deadlineHeap []deadline

func (h deadlineHeap) Len() int           { return len(h) }
func (h deadlineHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h deadlineHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *deadlineHeap) Push(x any)        { *h = append(*h, x.(deadline)) }
func (h *deadlineHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// deadlineOf is when the coordinator ends a live lease (0: it does not): once READY, at
// its ends_at (begins_at + duration + extensions); before, at assigned_at + the start
// bound (Options.StartBound), its own setting, so that a slow beforeLease hook or a READY
// still on its way is never cut short by the lease's duration.
func (c *Coordinator) deadlineOf(l *leaseRow) int64 {
	switch {
	case l.StopAt != 0:
		return 0
	case l.State == stateAssigned:
		return l.AssignedAt + int64(c.opts.StartBound)
	case l.State == stateActive:
		return l.EndsAt
	}
	return 0
}

// preReady reports whether a live lease is still waiting for READY.
func preReady(l *leaseRow) bool { return l.State == stateAssigned }

// rearm records a live lease's deadline (again, after it changed).
func (c *Coordinator) rearm(l *leaseRow) {
	at := c.deadlineOf(l)
	if at <= 0 {
		return
	}
	if len(c.timers) > 2*len(c.live)+64 { // drop stale entries now and then
		fresh := c.timers[:0]
		for _, d := range c.timers {
			if x := c.live[d.id]; x != nil && c.deadlineOf(x) == d.at {
				fresh = append(fresh, d)
			}
		}
		c.timers = fresh
		heap.Init(&c.timers)
	}
	heap.Push(&c.timers, deadline{at: at, id: l.ID})
	c.wakeFor(at)
}

// wakeFor notes a deadline set in this step, so that Run is woken if it sleeps past it.
func (c *Coordinator) wakeFor(at int64) {
	if c.soonest == 0 || at < c.soonest {
		c.soonest = at
	}
}

// due pops the leases whose deadline is at or before now; next is the earliest deadline
// left (0: none).
func (c *Coordinator) due(now int64) (due []*leaseRow, next int64) {
	seen := map[string]bool{}
	for len(c.timers) > 0 {
		d := c.timers[0]
		l := c.live[d.id]
		if l == nil || c.deadlineOf(l) != d.at || seen[d.id] {
			heap.Pop(&c.timers)
			continue
		}
		if d.at > now {
			return due, d.at
		}
		heap.Pop(&c.timers)
		seen[d.id] = true
		due = append(due, l)
	}
	return due, 0
}
