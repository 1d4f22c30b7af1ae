package devices

import (
	"testing"

	"github.com/hashicorp/go-hclog"
)

// A recording writer that falls behind the disk holds at most RecordQueueBytes of
// console bytes: past it a board's bytes are dropped (and counted for the warning), but a
// lease cut is always kept, so that what comes after it still goes to the right file.
func TestRecordQueueDropsBytesNotLeaseCuts(t *testing.T) {
	w := &recWriter{m: &Manager{log: hclog.NewNullLogger()}, more: make(chan struct{}, 1)} // no goroutine: it never drains
	b := &Board{Name: "b1"}
	half := make([]byte, RecordQueueBytes/2)
	w.add(recItem{b: b, data: half})
	w.add(recItem{b: b, data: half}) // exactly the bound: kept
	w.add(recItem{b: b, data: []byte("one byte too many")})
	w.add(recItem{b: b, start: "job-1"})
	w.add(recItem{b: b, data: []byte("x")})
	w.add(recItem{b: b, end: "job-1"})
	if len(w.items) != 4 || w.bytes != RecordQueueBytes {
		t.Fatalf("queued %d items, %d bytes; want 4 items (two halves, the lease's start and end), %d bytes", len(w.items), w.bytes, RecordQueueBytes)
	}
	if w.items[2].start != "job-1" || w.items[3].end != "job-1" {
		t.Errorf("lease cuts not kept in order: %+v %+v", w.items[2], w.items[3])
	}
	// The first drop is warned about at once; the next ones are counted for the next
	// warning, dropLogEvery later.
	if w.warned.IsZero() || w.dropped != 1 {
		t.Errorf("warned at %v, %d bytes counted since; want a warning and then the 1 byte dropped after it", w.warned, w.dropped)
	}
}
