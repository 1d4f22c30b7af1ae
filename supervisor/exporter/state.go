package exporter

import (
	"fmt"
	"sync"
	"time"

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
	st      statusMsg // what clients are shown (see view.go)
	current string    // job holding the board
	watch   map[*queue[statusMsg]]bool

	// A failed hook's status is shown until holdUntil; the changes that come meanwhile
	// wait in pending, and holdTimer shows them when the hold ends.
	holdUntil time.Time
	pending   []statusMsg
	holdTimer *time.Timer
	// last is the lease the board's last status was about; lastEnded its last ended
	// lease while that lease's log is kept (see grace.go).
	last, lastEnded *leaseState
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

	// What upstream clients are told (view.go): the hooks' warnings and a failed hook's
	// verdict, from the lease's SYSTEM log; the lease's own status; its first failed
	// status; the status a late reader is shown once it ended (final); and the
	// message of the day its beforeLease hook wrote.
	warnings map[jobs.HookKind]string
	verdict  *hookVerdict
	status   jobs.ExporterStatus
	failed   *statusMsg
	final    statusMsg
	endedAt  time.Time
	motd     string
	// consoles are the lease's open console streams (RouterService.Stream), closed by
	// the serial driver's close.
	consoles map[chan struct{}]bool
}

func (l *leaseState) markReadyOrNever() { l.readyOnce.Do(func() { close(l.ready) }) }

// apply updates the state with one event (and the message of the day its lease's
// beforeLease hook left, see motd.go). It never blocks.
func (s *Service) apply(ev connector.Event, motd string, motdErr error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case ev.BoardStatus != nil:
		b := s.board(ev.Board)
		b.current = ev.JobID
		// A status with no lease follows the end of the last one (AVAILABLE after its
		// release): its afterLease warning is worded in it, once.
		l := s.leases[ev.JobID]
		if ev.JobID == "" {
			l, b.last = b.last, nil
		} else {
			b.last = l
		}
		st := ev.BoardStatus.Status
		s.showStatus(b, statusMsg{status: st, message: statusMessage(st, l, ev.BoardStatus.Message)})
	case ev.Transition != nil:
		l := s.leases[ev.JobID]
		if l == nil {
			return
		}
		t := ev.Transition
		l.phase = t.To
		if failedStatus(t.Status) && l.failed == nil {
			l.failed = &statusMsg{status: t.Status, message: statusMessage(t.Status, l, "")}
		}
		if t.To.Terminal() {
			l.final = statusMsg{status: t.Status, prev: l.status, message: statusMessage(t.Status, l, "")}
			if l.failed != nil {
				l.final = *l.failed
				l.final.prev = l.status
			}
		} else {
			l.status = t.Status
		}
		if t.From == jobs.PhaseBeforeLease {
			if motdErr != nil {
				l.log(logLine{Source: jobs.SourceSystem, Severity: jobs.SeverityWarn, Seq: ev.Seq, Text: "boardvisor: " + motdErr.Error()})
			}
			l.setMotd(motd, ev.Seq)
		}
		// A marker in the log itself: a reader sees every hook line of a phase before the
		// next phase, because the events are in sequence order.
		l.log(logLine{Source: jobs.SourceSystem, Severity: jobs.SeverityInfo, Seq: ev.Seq, Phase: t.To, Status: t.Status,
			Text: fmt.Sprintf("lease %s: %s", t.To, t.Message)})
		if l.phase >= jobs.PhaseReady {
			l.markReadyOrNever()
		}
		if t.To.Terminal() {
			s.endLease(l, true)
		}
	case ev.Hook != nil:
		l := s.leases[ev.JobID]
		if l == nil {
			return
		}
		line := logLine{Source: ev.Hook.Source, Severity: ev.Hook.Severity, Text: ev.Hook.Text, Progress: ev.Hook.Progress, Seq: ev.Seq}
		if line.Source == jobs.SourceSystem {
			l.noteSystemLine(line)
		}
		l.log(line)
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

// endLease closes a lease's streams and forgets its token as a live lease's: it stops
// working for driver calls the moment the lease ends. A lease that ran (keep) stays
// readable with its token for the grace period (grace.go).
func (s *Service) endLease(l *leaseState, keep bool) {
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
	for c := range l.consoles {
		close(c)
	}
	l.consoles = nil
	delete(s.tokens, l.tokenHash)
	delete(s.leases, l.job)
	if keep {
		s.retain(l)
	}
}

func (s *Service) board(name string) *boardState {
	b := s.boards[name]
	if b == nil {
		b = &boardState{name: name, watch: map[*queue[statusMsg]]bool{}}
		s.boards[name] = b
	}
	return b
}
