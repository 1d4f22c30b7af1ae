package recording_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/recording"
)

// clock is an injectable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func day(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func open(t *testing.T, opts recording.Options) *recording.Recorder {
	t.Helper()
	r, err := recording.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func write(t *testing.T, r *recording.Recorder, s string) {
	t.Helper()
	if n, err := r.Write([]byte(s)); err != nil || n != len(s) {
		t.Fatalf("Write(%q) = %d, %v", s, n, err)
	}
}

func readLease(t *testing.T, state, board, id string) string {
	t.Helper()
	rc, err := recording.ReadLease(state, board, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// files returns "kind@date" for each file, oldest first, and their contents.
func files(t *testing.T, state, board string) ([]string, []string) {
	t.Helper()
	fs, err := recording.Files(state, board)
	if err != nil {
		t.Fatal(err)
	}
	var kinds, contents []string
	for _, f := range fs {
		k := "board"
		if f.Lease != "" {
			k = "lease-" + f.Lease
		}
		kinds = append(kinds, k+"@"+f.Date)
		b, err := os.ReadFile(filepath.Join(recording.Dir(state, board), f.Name))
		if err != nil {
			t.Fatal(err)
		}
		contents = append(contents, string(b))
	}
	return kinds, contents
}

func TestCutPerLease(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: day("2024-05-01T10:00:00Z")}
	r := open(t, recording.Options{StateDir: state, Board: "rpi4-01", Now: clk.now})
	write(t, r, "boot\n")
	if err := r.StartLease("job-1"); err != nil {
		t.Fatal(err)
	}
	write(t, r, "hook: powering on\n")
	write(t, r, "login: ")
	if r.Lease() != "job-1" {
		t.Errorf("Lease() = %q", r.Lease())
	}
	if err := r.EndLease("job-2"); err != nil { // not current: no-op
		t.Fatal(err)
	}
	write(t, r, "root\n")
	if err := r.EndLease("job-1"); err != nil {
		t.Fatal(err)
	}
	write(t, r, "idle\n")
	if err := r.StartLease("job-2"); err != nil {
		t.Fatal(err)
	}
	if err := r.EndLease("job-2"); err != nil {
		t.Fatal(err)
	}

	kinds, contents := files(t, state, "rpi4-01")
	wantKinds := []string{"board@2024-05-01", "lease-job-1@2024-05-01", "board@2024-05-01", "lease-job-2@2024-05-01"}
	wantContents := []string{"boot\n", "hook: powering on\nlogin: root\n", "idle\n", ""}
	if strings.Join(kinds, " ") != strings.Join(wantKinds, " ") || strings.Join(contents, "|") != strings.Join(wantContents, "|") {
		t.Errorf("files %q with %q\nwant %q with %q", kinds, contents, wantKinds, wantContents)
	}
	if got := readLease(t, state, "rpi4-01", "job-1"); got != "hook: powering on\nlogin: root\n" {
		t.Errorf("ReadLease(job-1) = %q", got)
	}
	if got := readLease(t, state, "rpi4-01", "job-2"); got != "" {
		t.Errorf("ReadLease(job-2) = %q, want empty (a lease that printed nothing)", got)
	}
	if _, err := recording.ReadLease(state, "rpi4-01", "job-3"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadLease of an unknown lease: %v", err)
	}
	if err := r.StartLease("../etc"); err == nil {
		t.Error("StartLease accepted a path as lease ID")
	}
	if _, err := recording.New(recording.Options{StateDir: state, Board: "../x"}); err == nil {
		t.Error("New accepted a path as board name")
	}
}

// A lease across midnight (UTC) is cut into one file a day; ReadLease puts it back
// together, in order, and also after the recorder was reopened (a daemon restart).
func TestCutPerDayAndRestart(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: day("2024-05-01T23:59:58Z")}
	r := open(t, recording.Options{StateDir: state, Board: "b", Now: clk.now})
	if err := r.StartLease("night"); err != nil {
		t.Fatal(err)
	}
	write(t, r, "before midnight|")
	clk.set(day("2024-05-02T00:00:01Z"))
	write(t, r, "after midnight|")
	clk.set(day("2024-05-03T08:00:00+02:00")) // 06:00 UTC
	write(t, r, "two days later|")
	r.Close()
	if _, err := r.Write([]byte("x")); err == nil {
		t.Error("Write after Close succeeded")
	}

	// The daemon restarts and resumes the lease.
	r2 := open(t, recording.Options{StateDir: state, Board: "b", Now: clk.now})
	if err := r2.StartLease("night"); err != nil {
		t.Fatal(err)
	}
	write(t, r2, "after the restart")
	if err := r2.EndLease("night"); err != nil {
		t.Fatal(err)
	}
	kinds, _ := files(t, state, "b")
	want := "lease-night@2024-05-01 lease-night@2024-05-02 lease-night@2024-05-03 lease-night@2024-05-03"
	if strings.Join(kinds, " ") != want {
		t.Errorf("files %q, want %s", kinds, want)
	}
	if got := readLease(t, state, "b", "night"); got != "before midnight|after midnight|two days later|after the restart" {
		t.Errorf("ReadLease = %q", got)
	}
}

// The recording stays within its size cap: the oldest files go first, the newest bytes
// stay; a lease's recording loses its beginning, not its end.
func TestSizeCap(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: day("2024-05-01T10:00:00Z")}
	const maxBytes = 1000
	r := open(t, recording.Options{StateDir: state, Board: "b", MaxBytes: maxBytes, Now: clk.now})
	write(t, r, strings.Repeat("o", 200)) // the board's, oldest
	if err := r.StartLease("big"); err != nil {
		t.Fatal(err)
	}
	var all bytes.Buffer
	for i := range 100 {
		chunk := strings.Repeat(string(rune('a'+i%26)), 50)
		write(t, r, chunk)
		all.WriteString(chunk)
		total := int64(0)
		fs, _ := recording.Files(state, "b")
		for _, f := range fs {
			total += f.Size
		}
		if total > maxBytes {
			t.Fatalf("after %d writes the recording is %d bytes, over the %d cap", i+1, total, maxBytes)
		}
	}
	got := readLease(t, state, "b", "big")
	if len(got) < maxBytes*3/4-50 || !strings.HasSuffix(all.String(), got) {
		t.Errorf("the lease's recording (%d bytes) is not the end of what was written", len(got))
	}
	kinds, _ := files(t, state, "b")
	for _, k := range kinds {
		if strings.HasPrefix(k, "board@") {
			t.Errorf("the oldest file (the board's) was kept: %q", kinds)
		}
	}
}

// Files whose day ended more than the retention ago are deleted (on open, at a new file
// and on Prune); newer ones are kept.
func TestRetention(t *testing.T) {
	state := t.TempDir()
	clk := &clock{t: day("2024-05-01T10:00:00Z")}
	opts := recording.Options{StateDir: state, Board: "b", Retention: 7 * 24 * time.Hour, Now: clk.now}
	r := open(t, opts)
	write(t, r, "may 1|")
	clk.set(day("2024-05-05T10:00:00Z"))
	write(t, r, "may 5|")
	r.Close()

	clk.set(day("2024-05-09T10:00:00Z")) // May 1 ended 7 days and 10 hours ago
	r2 := open(t, opts)
	if kinds, _ := files(t, state, "b"); strings.Join(kinds, " ") != "board@2024-05-05" {
		t.Errorf("after reopening: %q, want only May 5's file", kinds)
	}
	write(t, r2, "may 9|")
	clk.set(day("2024-05-13T10:00:00Z"))
	r2.Prune()
	if kinds, _ := files(t, state, "b"); strings.Join(kinds, " ") != "board@2024-05-09" {
		t.Errorf("after Prune: %q, want only the file being written (May 9)", kinds)
	}
	write(t, r2, "may 13") // a new day, a new file; May 9's ended 3 days ago: kept
	if kinds, _ := files(t, state, "b"); strings.Join(kinds, " ") != "board@2024-05-09 board@2024-05-13" {
		t.Errorf("after the day cut: %q", kinds)
	}
}

// Files that are not the recorder's are left alone and do not count.
func TestForeignFilesIgnored(t *testing.T) {
	state := t.TempDir()
	dir := recording.Dir(state, "b")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := open(t, recording.Options{StateDir: state, Board: "b", MaxBytes: 10})
	write(t, r, "0123456789")
	write(t, r, "abcdefghij")
	if _, err := os.Stat(filepath.Join(dir, "notes.txt")); err != nil {
		t.Error(err)
	}
}
