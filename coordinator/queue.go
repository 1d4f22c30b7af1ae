package coordinator

import (
	"sort"
)

// leaseQueue is the in-memory index of queued leases: one FIFO per distinct selector
// and one per board asked for by name, each in queue order (queue_pos). When a board
// frees, only the heads of these FIFOs are looked at: the cost grows with the number of
// distinct requests waiting, not with the fleet or the queue's length.
type leaseQueue struct {
	bySel   map[string]*fifo // canonical selector → leases
	byBoard map[string]*fifo // board name → leases that asked for it by name
	// perUser counts queued leases by owner (quota).
	perUser map[string]int
	n       int
}

type fifo struct {
	m     matcher
	items []*leaseRow // by QueuePos
}

func newLeaseQueue() *leaseQueue {
	return &leaseQueue{bySel: map[string]*fifo{}, byBoard: map[string]*fifo{}, perUser: map[string]int{}}
}

func (q *leaseQueue) fifoFor(l *leaseRow, create bool) (*fifo, map[string]*fifo, string) {
	tab, key := q.bySel, l.Selector
	if l.WantBoard != "" {
		tab, key = q.byBoard, l.WantBoard
	} else if l.Image != nil {
		key += "\x00" + imageNeeds(l.Image) // leases of one FIFO match the same boards
	}
	f := tab[key]
	if f == nil && create {
		m, err := leaseMatcher(l)
		if err != nil {
			return nil, nil, ""
		}
		f = &fifo{m: m}
		tab[key] = f
	}
	return f, tab, key
}

// push queues a lease (in QueuePos order: a lease queued again keeps its place). It
// reports false for a lease whose selector does not parse (it cannot be served).
func (q *leaseQueue) push(l *leaseRow) bool {
	f, _, _ := q.fifoFor(l, true)
	if f == nil {
		return false
	}
	i := sort.Search(len(f.items), func(i int) bool { return f.items[i].QueuePos >= l.QueuePos })
	if i < len(f.items) && f.items[i] == l {
		return true
	}
	f.items = append(f.items, nil)
	copy(f.items[i+1:], f.items[i:])
	f.items[i] = l
	q.perUser[l.Client]++
	q.n++
	return true
}

// remove takes a lease out of the queue (it was assigned or cancelled).
func (q *leaseQueue) remove(l *leaseRow) {
	f, tab, key := q.fifoFor(l, false)
	if f == nil {
		return
	}
	i := sort.Search(len(f.items), func(i int) bool { return f.items[i].QueuePos >= l.QueuePos })
	if i >= len(f.items) || f.items[i] != l {
		return
	}
	f.items = append(f.items[:i], f.items[i+1:]...)
	if len(f.items) == 0 {
		delete(tab, key)
	}
	if q.perUser[l.Client]--; q.perUser[l.Client] <= 0 {
		delete(q.perUser, l.Client)
	}
	q.n--
}

// oldestFor returns the oldest queued lease that board b matches, or nil.
func (q *leaseQueue) oldestFor(b *boardEntry, visits func(int)) *leaseRow {
	var best *leaseRow
	if f := q.byBoard[b.Name]; f != nil && imageFits(f.items[0].Image, b.Labels) {
		best = f.items[0]
	}
	visits(1 + len(q.bySel))
	for _, f := range q.bySel {
		h := f.items[0]
		if (best == nil || h.QueuePos < best.QueuePos) && f.m.matches(&b.boardRow) {
			best = h
		}
	}
	return best
}

// all returns every queued lease, in queue order.
func (q *leaseQueue) all() []*leaseRow {
	out := make([]*leaseRow, 0, q.n)
	for _, f := range q.bySel {
		out = append(out, f.items...)
	}
	for _, f := range q.byBoard {
		out = append(out, f.items...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].QueuePos < out[j].QueuePos })
	return out
}
