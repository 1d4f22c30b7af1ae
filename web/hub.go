package web

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/hashicorp/go-hclog"
)

// A table is one kind of live data (the farm: boards and leases; the supervisors),
// read by one server-side watcher shared by every open tab: the watcher starts with the
// first tab's stream and stops after the last, reads the coordinator when the
// coordinator says something changed (coordinator.WatchFarm), at most once per
// coalesce interval (and never more than 5% of the time: see gap), and hands each tab
// the rows that changed. A row's SSE event is
// encoded once, by the watcher, whatever the number of tabs. A tab that reads slowly
// holds at most one pending version of each row (newer versions replace older ones):
// its memory is bounded by the table's size, and the watcher never waits for it.

// row is one row of a table: its key (kind/key) and its SSE event, encoded once.
type row struct {
	kind, key string
	event     []byte            // "event: row\ndata: {...}\n\n"
	labels    map[string]string // boards: for the label filter
	client    string            // leases: whose lease it is
}

func (r *row) id() string { return r.kind + "/" + r.key }

// removal is the SSE event that takes a row off a tab.
func removal(kind, key string) []byte {
	b, _ := json.Marshal(struct {
		Kind string `json:"kind"`
		Key  string `json:"key"`
	}{kind, key})
	return sseEvent("remove", "", b)
}

// problemRow is the row a table shows while the coordinator cannot be read.
const problemKind = "problem"

type table struct {
	name     string
	load     func(ctx context.Context) ([]*row, error)
	coalesce time.Duration
	watch    func() *coordinator.FarmWatch
	log      hclog.Logger

	loads   atomic.Int64 // reads of the coordinator, for tests and the bench
	running atomic.Bool  // a watcher runs (tests)

	mu     sync.Mutex
	subs   map[*tabSub]struct{}
	rows   map[string]*row // the last read, by id
	loaded bool            // rows holds a read
	cancel context.CancelFunc
	gen    int
	closed bool // close was called: no watcher starts again
	wg     sync.WaitGroup
}

// tabSub is one tab's stream of a table.
type tabSub struct {
	filter func(*row) bool
	sig    chan struct{}

	mu      sync.Mutex
	pending map[string][]byte // by row id: the newest event not yet written
	sent    map[string]bool   // rows the tab has (so that only those are removed)
}

func newTable(name string, coalesce time.Duration, watch func() *coordinator.FarmWatch, log hclog.Logger,
	load func(ctx context.Context) ([]*row, error)) *table {
	return &table{name: name, load: load, coalesce: coalesce, watch: watch, log: log, subs: map[*tabSub]struct{}{}}
}

// join opens a tab's stream: it gets every current row its filter keeps, then changes.
// The first tab starts the watcher.
func (t *table) join(filter func(*row) bool) *tabSub {
	s := &tabSub{filter: filter, sig: make(chan struct{}, 1), pending: map[string][]byte{}, sent: map[string]bool{}}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, r := range t.rows {
		s.offer(id, r)
	}
	t.subs[s] = struct{}{}
	if len(t.subs) == 1 && !t.closed {
		ctx, cancel := context.WithCancel(context.Background())
		t.cancel = cancel
		t.gen++
		t.wg.Add(1)
		t.running.Store(true)
		go t.run(ctx, t.gen)
	}
	s.poke()
	return s
}

// leave closes a tab's stream; after the last one the watcher stops and the rows are
// forgotten (the next tab starts from a fresh read).
func (t *table) leave(s *tabSub) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.subs[s]; !ok {
		return
	}
	delete(t.subs, s)
	if len(t.subs) == 0 && t.cancel != nil {
		t.cancel()
		t.gen++
		t.rows, t.loaded = nil, false
	}
}

// isLoaded says whether the table holds a read (a tab then has the whole state once it
// has written its pending rows).
func (t *table) isLoaded() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loaded
}

// close stops the watcher and waits for it.
func (t *table) close() {
	t.mu.Lock()
	t.closed = true
	if t.cancel != nil {
		t.cancel()
	}
	t.gen++
	t.mu.Unlock()
	t.wg.Wait()
}

// run is the watcher: read, publish, wait for a change, let changes gather, again.
func (t *table) run(ctx context.Context, gen int) {
	defer t.wg.Done()
	defer t.running.Store(false)
	w := t.watch() // before the first read: no change is missed between the two
	defer w.Close()
	backoff := time.Second
	for {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		began := time.Now()
		rows, err := t.load(rctx)
		took := time.Since(began)
		cancel()
		t.loads.Add(1)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t.log.Warn("dashboard: the coordinator could not be read", "table", t.name, "error", err)
			msg, _ := json.Marshal(map[string]string{"kind": problemKind, "key": t.name,
				"message": "the dashboard cannot read the coordinator's " + t.name + " (" + err.Error() + "); it tries again"})
			t.publishProblem(gen, sseEvent("row", "", msg))
			if !sleepCtx(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = time.Second
		t.publish(gen, rows)
		select {
		case <-ctx.Done():
			return
		case <-w.C():
		}
		if !sleepCtx(ctx, gap(t.coalesce, took)) {
			return
		}
	}
}

// maxDuty is the share of the time the watcher may spend reading the coordinator: after
// a read that took d it waits at least (1/maxDuty - 1) × d before the next. So however
// large the farm, and however often it changes, one table's watcher costs the
// coordinator at most about 5% of a core (the read's wall time bounds its CPU time).
const maxDuty = 0.05

// gap is how long the watcher lets changes gather after a read that took took: the
// coalesce interval, or longer for a slow read; never more than 10s.
func gap(coalesce, took time.Duration) time.Duration {
	return min(max(coalesce, time.Duration(float64(took)*(1/maxDuty-1))), 10*time.Second)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// publish replaces the table's rows by a fresh read and hands every tab what changed.
func (t *table) publish(gen int, fresh []*row) {
	next := make(map[string]*row, len(fresh))
	for _, r := range fresh {
		next[r.id()] = r
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if gen != t.gen {
		return // stopped meanwhile
	}
	var changed []*row
	var removed []string
	for id, r := range next {
		if old := t.rows[id]; old == nil || !bytes.Equal(old.event, r.event) {
			changed = append(changed, r)
		}
	}
	for id := range t.rows {
		if next[id] == nil {
			removed = append(removed, id)
		}
	}
	prev := t.rows
	t.rows, t.loaded = next, true
	if len(changed) == 0 && len(removed) == 0 && len(prev) > 0 {
		return
	}
	for s := range t.subs {
		for _, r := range changed {
			s.offer(r.id(), r)
		}
		for _, id := range removed {
			s.take(id, prev[id])
		}
		s.poke()
	}
}

// publishProblem shows tabs that the table cannot be read; the next good read takes it
// away (it is not one of the read's rows).
func (t *table) publishProblem(gen int, ev []byte) {
	pr := &row{kind: problemKind, key: t.name, event: ev}
	t.mu.Lock()
	defer t.mu.Unlock()
	if gen != t.gen {
		return
	}
	if t.rows == nil {
		t.rows = map[string]*row{}
	}
	t.rows[pr.id()] = pr
	for s := range t.subs {
		s.offer(pr.id(), pr)
		s.poke()
	}
}

// offer queues a row's new version for the tab (or its removal, if the tab's filter
// no longer keeps a row it has).
func (s *tabSub) offer(id string, r *row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.kind == problemKind || s.filter(r) {
		s.pending[id] = r.event
		s.sent[id] = true
	} else if s.sent[id] {
		s.pending[id] = removal(r.kind, r.key)
		delete(s.sent, id)
	}
}

// take queues a removed row's removal, if the tab has it.
func (s *tabSub) take(id string, r *row) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sent[id] {
		s.pending[id] = removal(r.kind, r.key)
		delete(s.sent, id)
	}
}

func (s *tabSub) poke() {
	select {
	case s.sig <- struct{}{}:
	default:
	}
}

// drain returns the events waiting for the tab.
func (s *tabSub) drain() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) == 0 {
		return nil
	}
	out := make([][]byte, 0, len(s.pending))
	for _, ev := range s.pending {
		out = append(out, ev)
	}
	clear(s.pending)
	return out
}
