package coordinator

import (
	"fmt"
	"sort"
	"strings"
	"sync/atomic"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// The fleet index is the coordinator's in-memory view of every board, kept so that the
// work of one lease request does not grow with the number of boards (issue 24): boards
// by name, by label (key → value → boards), by supervisor, and the set of boards free
// to take a lease now. Labels are parsed once, when a board is loaded or announced.
//
// The store (the boards and leases tables) stays the truth: the index is built from it
// at start, changed only by the state loop in the same step as the store (every change
// to a board's row goes through the index's methods, and a transaction that fails to
// commit has the whole index rebuilt from the store), and compared with a fresh build
// by checkIndex in the tests.
//
// Invariants, checked by checkIndex:
//   - every board row is in byName, under its labels in byLabel and under its supervisor
//     in bySup, and nothing else is;
//   - entry.lease is the ID of the board's unended (assigned or active) lease, or "";
//   - free holds exactly the boards assignable now: supervisor connected, health good,
//     not in maintenance, status AVAILABLE, no unended lease, no refusal hold; held holds
//     the boards that would be free but for a refusal hold;
//   - no queued lease matches a free board once a state-loop step is done (the queue is
//     served as soon as a board frees), so a new lease may take any free board it
//     matches without overtaking an older one.

// boardSet is a set of index entries.
type boardSet map[*boardEntry]struct{}

// boardEntry is one board in the index: its row, with labels parsed.
type boardEntry struct {
	boardRow
	// lease is the board's unended lease in the coordinator's records ("" = none).
	lease string
}

// fleet is the index. It belongs to the state loop; nothing else touches it.
type fleet struct {
	byName  map[string]*boardEntry
	byLabel map[string]map[string]boardSet
	bySup   map[string]boardSet
	free    boardSet
	held    boardSet
	// visits counts index entries looked at, and rows counts board rows read from the
	// store: per-request costs that a test checks do not grow with the fleet.
	visits *atomic.Int64
}

func newFleet(visits *atomic.Int64) *fleet {
	return &fleet{byName: map[string]*boardEntry{}, byLabel: map[string]map[string]boardSet{},
		bySup: map[string]boardSet{}, free: boardSet{}, held: boardSet{}, visits: visits}
}

func (f *fleet) get(name string) *boardEntry {
	f.visits.Add(1)
	return f.byName[name]
}

// put adds a board, or replaces the row of one already indexed (its labels and
// supervisor may have changed). The caller refreshes its free state.
func (f *fleet) put(row boardRow) *boardEntry {
	b := f.byName[row.Name]
	if b == nil {
		b = &boardEntry{}
		f.byName[row.Name] = b
	} else {
		f.unlink(b)
	}
	lease := b.lease
	b.boardRow = row
	b.lease = lease
	f.link(b)
	return b
}

func (f *fleet) link(b *boardEntry) {
	for k, v := range b.Labels {
		vs := f.byLabel[k]
		if vs == nil {
			vs = map[string]boardSet{}
			f.byLabel[k] = vs
		}
		if vs[v] == nil {
			vs[v] = boardSet{}
		}
		vs[v][b] = struct{}{}
	}
	if f.bySup[b.SupervisorID] == nil {
		f.bySup[b.SupervisorID] = boardSet{}
	}
	f.bySup[b.SupervisorID][b] = struct{}{}
}

func (f *fleet) unlink(b *boardEntry) {
	for k, v := range b.Labels {
		if vs := f.byLabel[k]; vs != nil {
			delete(vs[v], b)
			if len(vs[v]) == 0 {
				delete(vs, v)
			}
			if len(vs) == 0 {
				delete(f.byLabel, k)
			}
		}
	}
	if s := f.bySup[b.SupervisorID]; s != nil {
		delete(s, b)
		if len(s) == 0 {
			delete(f.bySup, b.SupervisorID)
		}
	}
}

// remove drops a board from the index.
func (f *fleet) remove(b *boardEntry) {
	f.unlink(b)
	delete(f.free, b)
	delete(f.held, b)
	delete(f.byName, b.Name)
}

// boardsOf returns a supervisor's boards, by name.
func (f *fleet) boardsOf(sup string) []*boardEntry {
	out := make([]*boardEntry, 0, len(f.bySup[sup]))
	for b := range f.bySup[sup] {
		out = append(out, b)
	}
	f.visits.Add(int64(len(out)))
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// readiness says whether a board may take a lease: 0 no, 1 yes, 2 yes once its refusal
// hold is over.
func readiness(b *boardEntry, connected bool, now int64) int {
	if !connected || b.Health != int32(pb.BoardHealth_BOARD_HEALTH_GOOD) || b.Maintenance ||
		b.Status != int32(jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE) || b.lease != "" {
		return 0
	}
	if b.HoldUntil > now {
		return 2
	}
	return 1
}

// setFree puts a board into free, held or neither. It reports whether the board became
// free (and so may serve the queue).
func (f *fleet) setFree(b *boardEntry, r int) bool {
	_, was := f.free[b]
	switch r {
	case 1:
		delete(f.held, b)
		f.free[b] = struct{}{}
		return !was
	case 2:
		delete(f.free, b)
		f.held[b] = struct{}{}
	default:
		delete(f.free, b)
		delete(f.held, b)
	}
	return false
}

// candidates calls fn for each board that may match m, within pool (nil: every board),
// until fn returns false. It looks only at the smallest of: the pool, the boards of
// each label the selector requires. A board named by m is looked up alone.
func (f *fleet) candidates(m matcher, pool boardSet, fn func(*boardEntry) bool) {
	if m.board != "" {
		b := f.get(m.board)
		if b == nil {
			return
		}
		if pool != nil {
			if _, ok := pool[b]; !ok {
				return
			}
		}
		fn(b)
		return
	}
	var smallest boardSet
	size := -1
	if pool != nil {
		smallest, size = pool, len(pool)
	}
	for _, t := range m.sel.terms {
		if t.not {
			continue
		}
		set := f.byLabel[t.key][t.value] // nil when no board has it: no candidates
		if size < 0 || len(set) < size {
			smallest, size = set, len(set)
		}
	}
	if size < 0 { // no required label and no pool: every board
		for _, b := range f.byName {
			f.visits.Add(1)
			if !fn(b) {
				return
			}
		}
		return
	}
	for b := range smallest {
		f.visits.Add(1)
		if pool != nil {
			if _, ok := pool[b]; !ok {
				continue
			}
		}
		if !fn(b) {
			return
		}
	}
}

// anyMatch reports whether some board, free or not, matches m.
func (f *fleet) anyMatch(m matcher) bool {
	found := false
	f.candidates(m, nil, func(b *boardEntry) bool {
		found = m.matches(&b.boardRow)
		return !found
	})
	return found
}

// bestFree returns the free board m matches that has been idle longest (ties by name),
// or nil.
func (f *fleet) bestFree(m matcher) *boardEntry {
	var best *boardEntry
	f.candidates(m, f.free, func(b *boardEntry) bool {
		if m.matches(&b.boardRow) && (best == nil || b.LastLeaseAt < best.LastLeaseAt ||
			(b.LastLeaseAt == best.LastLeaseAt && b.Name < best.Name)) {
			best = b
		}
		return true
	})
	return best
}

// unsatisfiable is the FailedPrecondition message for a request no board matches,
// naming a few known boards (at most maxListedBoards, so it stays cheap).
func (f *fleet) unsatisfiable(m matcher) string {
	what := "no board matches " + m.sel.String()
	if m.board != "" {
		what = "no board named " + m.board
	}
	if m.image != nil {
		if plain := (matcher{board: m.board, sel: m.sel}); f.anyMatch(plain) {
			what = "no board that matches can run image " + m.image.GetManifestDigest() + ": it needs a board labelled " + imageNeeds(m.image)
		}
	}
	if len(f.byName) == 0 {
		return what + ": the coordinator knows no boards yet (no supervisor has connected)"
	}
	// The first boards by name: a bounded pass over the map keeps the smallest names.
	names := make([]string, 0, maxListedBoards+1)
	if len(f.byName) <= 4*maxListedBoards {
		for n := range f.byName {
			names = append(names, n)
		}
		sort.Strings(names)
		if len(names) > maxListedBoards {
			names = names[:maxListedBoards]
		}
	} else {
		for n := range f.byName { // any maxListedBoards boards: the message is a hint
			names = append(names, n)
			if len(names) == maxListedBoards {
				break
			}
		}
		sort.Strings(names)
	}
	known := make([]string, 0, len(names)+1)
	for _, n := range names {
		known = append(known, fmt.Sprintf("%s (%s)", n, formatLabels(f.byName[n].Labels)))
	}
	if more := len(f.byName) - len(names); more > 0 {
		known = append(known, fmt.Sprintf("and %d more", more))
	}
	return what + "; known boards: " + strings.Join(known, ", ")
}
