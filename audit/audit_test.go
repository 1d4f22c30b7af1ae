package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// readEntries parses every line of the file, failing on one that is not a whole JSON
// entry.
func readEntries(t *testing.T, path string) []Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d is not a JSON entry: %v\n%s", len(out)+1, err, sc.Bytes())
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAppendOnlyAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for i := 0; i < 3; i++ {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Record(Entry{Kind: KindRequest, Who: "alice", Board: "rpi", Job: fmt.Sprint("job-", i)}); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := l.Record(Entry{Kind: KindRequest}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Record after Close: %v", err)
		}
	}
	es := readEntries(t, path)
	if len(es) != 3 {
		t.Fatalf("%d entries, want 3 (one per open, none overwritten)", len(es))
	}
	for i, e := range es {
		if e.Job != fmt.Sprint("job-", i) || e.Time.IsZero() || e.Time.Location() != time.UTC {
			t.Errorf("entry %d: %+v", i, e)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
}

// A line torn by a crash is left alone, and the next entry starts on a line of its own.
func TestTornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(`{"kind":"request","who":"a"}`+"\n"+`{"kind":"tra`), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, SyncEach())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(Entry{Kind: KindRefused, Who: "b"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 3 || lines[1] != `{"kind":"tra` || !strings.Contains(lines[2], `"who":"b"`) {
		t.Fatalf("file:\n%s", b)
	}
}

// Many goroutines, through two Logs open on the same file (as two processes would be),
// produce whole lines only, each entry exactly once.
func TestConcurrentWritersWriteWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var logs [2]*Log
	for i := range logs {
		l, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		logs[i] = l
	}
	const writers, each = 8, 200
	long := strings.Repeat("x", 6000) // entries above PIPE_BUF (4096) too
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				reason := ""
				if i%10 == 0 {
					reason = long
				}
				if err := logs[w%2].Record(Entry{Kind: KindRequest, Who: fmt.Sprint("w", w), Job: fmt.Sprint(i), Reason: reason}); err != nil {
					t.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	for _, l := range logs {
		l.Close()
	}
	es := readEntries(t, path)
	if len(es) != writers*each {
		t.Fatalf("%d entries, want %d", len(es), writers*each)
	}
	seen := map[string]bool{}
	for _, e := range es {
		k := e.Who + "/" + e.Job
		if seen[k] {
			t.Fatalf("entry %s twice", k)
		}
		seen[k] = true
	}
}

func TestSinkRecordsTransitionsOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path, Who("lab-1"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))
	l.Sink(connector.Event{Seq: 7, Time: at, Board: "rpi", JobID: "j1",
		Transition: &connector.Transition{From: jobs.PhaseReady, To: jobs.PhaseEnding, Status: jobs.StatusLeaseReady, Message: "end requested"}})
	l.Sink(connector.Event{Seq: 8, Board: "rpi", JobID: "j1", Hook: &connector.HookLine{Text: "a hook line"}})
	l.Sink(connector.Event{Seq: 9, Board: "rpi", BoardStatus: &connector.BoardStatus{}})
	l.Refused("10.0.0.1:5000", "rpi", "j1", "the token holds no live lease")
	l.Request("alice", "rpi", "j1", "StartJob", "")
	if err := l.Close(); err != nil || l.Err() != nil {
		t.Fatal(err, l.Err())
	}
	es := readEntries(t, path)
	if len(es) != 3 {
		t.Fatalf("%d entries: %+v", len(es), es)
	}
	tr := es[0]
	if tr.Kind != KindTransition || tr.Who != "lab-1" || tr.Board != "rpi" || tr.Job != "j1" || tr.From != "READY" || tr.To != "ENDING" ||
		tr.Reason != "end requested" || tr.Details["seq"] != "7" || tr.Details["status"] != jobs.StatusLeaseReady.String() || !tr.Time.Equal(at) {
		t.Errorf("transition entry %+v", tr)
	}
	if r := es[1]; r.Kind != KindRefused || r.Who != "10.0.0.1:5000" || r.Reason == "" {
		t.Errorf("refused entry %+v", r)
	}
	if r := es[2]; r.Kind != KindRequest || r.Who != "alice" || r.Details["what"] != "StartJob" {
		t.Errorf("request entry %+v", r)
	}
}

// The guard against a caller passing a token by mistake.
func TestSecretsAreRedacted(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Record(Entry{Kind: KindRefused, Reason: "bad header authorization: Bearer s3cr3t-1 and bearer s3cr3t-2\"x",
		Details: map[string]string{"lease_token": "s3cr3t-3", "Authorization": "s3cr3t-4", "note": "Bearer s3cr3t-5"}})
	l.Close()
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "s3cr3t") {
		t.Fatalf("a secret reached the audit log:\n%s", b)
	}
	es := readEntries(t, path)
	if es[0].Reason != `bad header authorization: Bearer [redacted] and bearer [redacted]"x` {
		t.Errorf("reason %q", es[0].Reason)
	}
}
