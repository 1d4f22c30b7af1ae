package exporter

import (
	"fmt"
	"sync"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// MaxHistory and MaxHistoryBytes bound the hook lines kept per lease for readers that
// join late (a hook line may be 64 KiB long): past either, the oldest lines are dropped
// and a late reader is told how many it missed.
const (
	MaxHistory      = 10000
	MaxHistoryBytes = 8 << 20
)

// SubscriberBuffer bounds what waits for one slow reader; past it lines are dropped
// and the reader is told how many it missed.
const SubscriberBuffer = 1024

// logLine is one line of a lease's log as clients see it.
type logLine struct {
	Source   jobs.LogSource
	Severity jobs.Severity
	Text     string
	Progress bool // superseded by the next line of its source
	Seq      uint64
	// Phase is set on the SYSTEM line that marks a phase change, with the board's Status.
	Phase  jobs.Phase
	Status jobs.ExporterStatus
}

// queue is a bounded, never-blocking queue for one subscriber.
type queue[T any] struct {
	mu     sync.Mutex
	items  []T
	missed uint64
	closed bool
	notify chan struct{}
	cap    int
}

func newQueue[T any](capacity int) *queue[T] {
	return &queue[T]{notify: make(chan struct{}, 1), cap: capacity}
}

func (q *queue[T]) push(v T) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	if len(q.items) >= q.cap {
		q.missed++
	} else {
		q.items = append(q.items, v)
	}
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *queue[T]) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// take returns what is queued, how many items were dropped since the last take, and
// whether the queue is closed: then items are the last ones, and the caller must not
// wait for more.
func (q *queue[T]) take() (items []T, missed uint64, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items, missed = q.items, q.missed
	q.items, q.missed = nil, 0
	return items, missed, q.closed
}

type statusMsg struct {
	status, prev jobs.ExporterStatus
	version      uint64
	message      string
}

type boardState struct {
	name    string
	labels  map[string]string
	st      statusMsg
	current string // job holding the board
	watch   map[*queue[statusMsg]]bool
}

type leaseState struct {
	job, board string
	tokenHash  string
	phase      jobs.Phase
	lines      []logLine
	bytes      int    // of the texts in lines
	dropped    uint64 // history lines dropped past MaxHistory or MaxHistoryBytes
	subs       map[*queue[logLine]]bool
	ready      chan struct{} // closed when READY is reached, or the lease can never be READY
	ended      chan struct{} // closed when the lease is DONE or FAILED
	readyOnce  sync.Once
}

func (l *leaseState) markReadyOrNever() { l.readyOnce.Do(func() { close(l.ready) }) }

// apply updates the state with one event. It never blocks.
func (s *Service) apply(ev connector.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case ev.BoardStatus != nil:
		b := s.board(ev.Board)
		b.current = ev.JobID
		if b.st.status != ev.BoardStatus.Status || b.st.version == 0 {
			b.st = statusMsg{status: ev.BoardStatus.Status, prev: b.st.status, version: b.st.version + 1, message: ev.BoardStatus.Message}
			for q := range b.watch {
				q.push(b.st)
			}
		}
	case ev.Transition != nil:
		l := s.leases[ev.JobID]
		if l == nil {
			return
		}
		t := ev.Transition
		l.phase = t.To
		// A marker in the log itself: a reader sees every hook line of a phase before the
		// next phase, because the events are in sequence order.
		l.log(logLine{Source: jobs.SourceSystem, Severity: jobs.SeverityInfo, Seq: ev.Seq, Phase: t.To, Status: t.Status,
			Text: fmt.Sprintf("lease %s: %s", t.To, t.Message)})
		if l.phase >= jobs.PhaseReady {
			l.markReadyOrNever()
		}
		if t.To.Terminal() {
			s.endLease(l)
		}
	case ev.Hook != nil:
		l := s.leases[ev.JobID]
		if l == nil {
			return
		}
		l.log(logLine{Source: ev.Hook.Source, Severity: ev.Hook.Severity, Text: ev.Hook.Text, Progress: ev.Hook.Progress, Seq: ev.Seq})
	}
}

// log adds a line to the lease's history and hands it to its readers.
func (l *leaseState) log(line logLine) {
	l.lines = append(l.lines, line)
	l.bytes += len(line.Text)
	drop := 0
	for len(l.lines)-drop > MaxHistory || (l.bytes > MaxHistoryBytes && len(l.lines)-drop > 1) {
		l.bytes -= len(l.lines[drop].Text)
		drop++
	}
	if drop > 0 {
		clear(l.lines[:drop]) // let the texts be collected
		l.lines = l.lines[drop:]
		l.dropped += uint64(drop)
	}
	for q := range l.subs {
		q.push(line)
	}
}

// endLease closes a lease's streams and forgets its token: the token stops working the
// moment the lease ends.
func (s *Service) endLease(l *leaseState) {
	l.markReadyOrNever()
	select {
	case <-l.ended:
		return
	default:
	}
	close(l.ended)
	for q := range l.subs {
		q.close()
	}
	delete(s.tokens, l.tokenHash)
	delete(s.leases, l.job)
}

func (s *Service) board(name string) *boardState {
	b := s.boards[name]
	if b == nil {
		b = &boardState{name: name, watch: map[*queue[statusMsg]]bool{}}
		s.boards[name] = b
	}
	return b
}
