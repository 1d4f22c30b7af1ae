package devices

import (
	"sync"
	"time"
)

// The console recordings are written by a few goroutines (RecordWriters), each owning the
// recordings of its share of the boards: the event path (Sink) never waits for the disk,
// and a thousand boards' recordings cost a few wake-ups and writes in a row per console
// tick, not a thousand goroutines woken at once (which, on a busy disk, crowded the
// scheduler and delayed the console readers).
const (
	RecordWriters = 4
	// RecordQueueBytes bounds the console bytes queued for one writer: past it, bytes
	// for its boards are dropped (and logged) rather than held; lease cuts are never
	// dropped.
	RecordQueueBytes = 16 << 20
	// dropLogEvery spaces the warnings about dropped bytes.
	dropLogEvery = 10 * time.Second
)

type recItem struct {
	b          *Board
	data       []byte
	start, end string // lease to start or end recording
}

// recWriter is one recording goroutine's queue.
type recWriter struct {
	m       *Manager
	mu      sync.Mutex
	items   []recItem
	bytes   int
	closed  bool
	dropped int       // bytes dropped since the last warning
	warned  time.Time // when it was
	more    chan struct{}
}

func (m *Manager) startWriters() {
	for range RecordWriters {
		w := &recWriter{m: m, more: make(chan struct{}, 1)}
		m.writers = append(m.writers, w)
		m.wg.Add(1)
		go w.run()
	}
}

// stopWriters writes what is queued and stops the writers.
func (m *Manager) stopWriters() {
	for _, w := range m.writers {
		w.mu.Lock()
		w.closed = true
		w.mu.Unlock()
		w.signal()
	}
	m.wg.Wait()
}

func (w *recWriter) signal() {
	select {
	case w.more <- struct{}{}:
	default:
	}
}

// add queues an item; console bytes past RecordQueueBytes are dropped.
func (w *recWriter) add(it recItem) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	if it.data != nil && w.bytes+len(it.data) > RecordQueueBytes {
		w.dropped += len(it.data)
		if time.Since(w.warned) >= dropLogEvery {
			w.m.log.Warn("console recording falls behind the disk; bytes dropped", "board", it.b.Name, "bytes", w.dropped)
			w.dropped, w.warned = 0, time.Now()
		}
		w.mu.Unlock()
		return
	}
	w.items = append(w.items, it)
	w.bytes += len(it.data)
	w.mu.Unlock()
	w.signal()
}

func (w *recWriter) run() {
	defer w.m.wg.Done()
	for {
		<-w.more
		for {
			w.mu.Lock()
			items, closed := w.items, w.closed
			w.items, w.bytes = nil, 0
			w.mu.Unlock()
			if len(items) == 0 {
				if closed {
					return
				}
				break
			}
			for _, it := range items {
				w.write(it)
			}
		}
	}
}

func (w *recWriter) write(it recItem) {
	rec := it.b.rec
	var err error
	switch {
	case it.start != "":
		err = rec.StartLease(it.start)
	case it.end != "":
		err = rec.EndLease(it.end)
	default:
		_, err = rec.Write(it.data)
	}
	if err != nil {
		w.m.log.Warn("console recording", "board", it.b.Name, "error", err)
	}
}
