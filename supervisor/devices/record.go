package devices

import (
	"sync"
	"time"
)

// The console recordings are written by one goroutine (recWriter), which owns every
// board's recording I/O: the event path (Sink) never waits for the disk, and a thousand
// boards' recordings cost a wake-up and writes in a row per console tick, not a thousand
// goroutines woken at once (which, on a busy disk, crowded the scheduler and delayed the
// console readers). There were four writers, each with a share of the boards, until
// 2026-12-06: with one, the tick's burst keeps one thread in write system calls rather
// than four, and the supervisor streaming 1,000 consoles cost 14.8 % of a core on
// average against 15.4 % (lower in 9 of 10 alternating pairs of runs; the keystroke
// echo's pooled p99 6.60 against 7.06 ms, docs/console.md).
const (
	// RecordQueueBytes bounds the console bytes queued for the writer: past it, bytes
	// are dropped (and logged) rather than held; lease cuts are never dropped. 64 MiB
	// (what the four writers held in all) is over five seconds of 1,000 boards at
	// 115200 baud.
	RecordQueueBytes = 64 << 20
	// dropLogEvery spaces the warnings about dropped bytes.
	dropLogEvery = 10 * time.Second
)

type recItem struct {
	b          *Board
	data       []byte
	start, end string // lease to start or end recording
}

// recWriter is the recording goroutine's queue.
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

func (m *Manager) startWriter() {
	m.recW = &recWriter{m: m, more: make(chan struct{}, 1)}
	m.wg.Add(1)
	go m.recW.run()
}

// stopWriter writes what is queued and stops the writer.
func (m *Manager) stopWriter() {
	w := m.recW
	if w == nil {
		return
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.signal()
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
