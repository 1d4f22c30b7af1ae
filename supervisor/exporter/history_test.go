package exporter

import (
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// A hook printing long lines cannot make the history a late reader gets grow past
// MaxHistoryBytes; what was dropped is counted.
func TestHistoryBoundedInBytes(t *testing.T) {
	s := New(map[string]map[string]string{"rpi": nil}, nil, nil)
	l := s.register(connector.StartJobRequest{JobID: "j", Board: "rpi", Token: "t"})
	long := strings.Repeat("x", jobs.MaxLineBytes)
	const n = 3 * MaxHistoryBytes / jobs.MaxLineBytes
	for i := 0; i < n; i++ {
		s.Sink(connector.Event{Seq: uint64(i + 1), Board: "rpi", JobID: "j", Hook: &connector.HookLine{Source: jobs.SourceBeforeLeaseHook, Text: long}})
	}
	s.mu.Lock()
	total := 0
	for _, line := range l.lines {
		total += len(line.Text)
	}
	if total != l.bytes || total > MaxHistoryBytes || total < MaxHistoryBytes-jobs.MaxLineBytes {
		t.Fatalf("history holds %d bytes (counted %d), bound %d", total, l.bytes, MaxHistoryBytes)
	}
	if int(l.dropped)+len(l.lines) != n {
		t.Fatalf("%d kept + %d dropped != %d", len(l.lines), l.dropped, n)
	}
	s.mu.Unlock()
	// Short lines are bounded by count.
	for i := 0; i < MaxHistory+5; i++ {
		s.apply(connector.Event{Board: "rpi", JobID: "j", Hook: &connector.HookLine{Text: "short"}}, "", nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(l.lines) != MaxHistory || l.lines[0].Text != "short" {
		t.Fatalf("%d lines kept, first %.10q", len(l.lines), l.lines[0].Text)
	}
}
