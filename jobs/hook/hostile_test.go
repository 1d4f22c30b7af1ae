package hook

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/boardvisor/boardvisor/jobs"
)

// Hooks that misbehave with their output. The shim keeps at most Spec.MaxOutput bytes
// of it, writes one marker line past that, and reads on so the hook never blocks.

const truncatedMark = "boardvisor: output truncated after "

// collect gathers every line without bound (newLines holds 1024).
type collect struct {
	mu sync.Mutex
	ls []Line
}

func (c *collect) onLine(ls []Line) {
	c.mu.Lock()
	c.ls = append(c.ls, ls...)
	c.mu.Unlock()
}

func (c *collect) rest() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Line(nil), c.ls...)
}

// A hook that writes far more than the bound, in lines: it finishes at once (it does
// not block on its output), the spool holds the bound plus the marker, and one marker
// line naming the bound and counting what was dropped follows the last line kept.
func TestOutputBeyondBoundIsDiscarded(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		const bound = 64 << 10
		s := specOn(t, pipe, `yes 'a line of hook output' | head -c 8000000; echo 'JMP_ERROR: never kept'; exit 0`)
		s.MaxOutput = bound
		s.Timeout = 10 * time.Second
		c := &collect{}
		begin := time.Now()
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() || !res.Truncated {
			t.Fatalf("result = %+v, want OK and truncated", res)
		}
		if d := time.Since(begin); d > 5*time.Second {
			t.Errorf("the hook took %v: it was held up by its output", d)
		}
		ls := c.rest()
		var marks []string
		for i, l := range ls {
			if strings.Contains(l.Text, truncatedMark) {
				marks = append(marks, l.Severity.String()+" "+l.Text)
				if i != len(ls)-1 {
					t.Errorf("lines after the marker: %q", texts(ls[i+1:]))
				}
			} else if l.Text != "a line of hook output" && l.Text != "a line of hook" {
				// The last line kept may be cut short by the bound.
				if !strings.HasPrefix("a line of hook output", l.Text) {
					t.Errorf("unexpected line %q", l.Text)
				}
			}
		}
		// The hook wrote 8,000,000 bytes of 22-byte lines, the last one cut short and
		// ended by the 22 bytes of the JMP_ERROR line; the marker counts what was dropped.
		const total = 8000000 + 22
		lines := 8000000/22 + 1
		keptLines := bound / 22
		want := fmt.Sprintf("WARN %s%d bytes (the hook's output limit): %d more bytes in %d lines dropped",
			truncatedMark, bound, total-bound, lines-keptLines)
		if len(marks) != 1 || marks[0] != want {
			t.Fatalf("marker lines %q, want exactly [%q]", marks, want)
		}
		fi, err := os.Stat(filepath.Join(run.Dir(), outputFile))
		if err != nil {
			t.Fatal(err)
		}
		if max := int64(bound + 200); fi.Size() > max {
			t.Errorf("spool holds %d bytes, want at most %d", fi.Size(), max)
		}
	})
}

// 10 MB without a newline: one line, cut at 64 KiB and marked; the hook is not held up.
func TestHugeLineWithoutNewline(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		c := &collect{}
		s := specOn(t, pipe, `head -c 10485760 /dev/zero | tr '\0' x; exit 0`)
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() || res.Truncated {
			t.Errorf("result = %+v, want OK, not truncated (10 MB is within the default bound)", res)
		}
		ls := c.rest()
		if len(ls) != 1 || !ls[0].Cut || len(ls[0].Text) != jobs.MaxLineBytes+len(jobs.CutMark) || ls[0].Offset != 10485760 {
			t.Fatalf("got %d lines, first: cut %v, %d bytes, offset %d", len(ls), len(ls) > 0 && ls[0].Cut, len(ls[0].Text), ls[0].Offset)
		}
	})
}

// Raw binary: every line that comes out is valid UTF-8, and nothing is lost silently.
func TestBinaryOutput(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		c := &collect{}
		run, err := newRunner(t).Start(specOn(t, pipe, `head -c 300000 /dev/urandom; printf '\377\376\0tail\n'; exit 3`), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if res.ExitCode != 3 || res.Err != nil {
			t.Errorf("result = %+v, want exit 3", res)
		}
		ls := c.rest()
		if len(ls) == 0 || !strings.HasSuffix(ls[len(ls)-1].Text, "\x00tail") {
			t.Fatalf("%d lines; the last one should end with NUL+tail", len(ls))
		}
		for _, l := range ls {
			if !utf8.ValidString(l.Text) {
				t.Fatalf("line is not valid UTF-8: %q", l.Text)
			}
		}
		if ls[len(ls)-1].Offset != 300000+8 {
			t.Errorf("last offset %d, want every byte accounted for", ls[len(ls)-1].Offset)
		}
	})
}

// A hook that closes its stdout and stderr and goes on running: it is ended by its
// timeout, and the shim's lines still reach the spool.
func TestClosedStdoutStillTimesOut(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		s := specOn(t, pipe, `echo before; exec >&- 2>&-; "$REC" & `+awaitPids(1)+`; exec sleep 1000`, "PIDS="+pids, "REC="+recorder(t))
		s.Timeout, s.Grace = 300*time.Millisecond, 200*time.Millisecond
		c := &collect{}
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.TimedOut || res.OK() {
			t.Errorf("result = %+v, want timed out", res)
		}
		got := strings.Join(texts(c.rest()), "\n")
		if !strings.HasPrefix(got, "INFO before\nERROR boardvisor: hook timed out") {
			t.Errorf("lines:\n%s", got)
		}
		assertGone(t, pids, 1)
	})
}

// A spool that never becomes writable (/dev/full): the hook waits on its output and is
// ended by its timeout; once it is gone, the shim retries for the drain timeout, then
// drops what it held, counts it in the status and names the cause in its log (the
// shim runs directly here, on an output that is /dev/full).
func TestSpoolNeverWritable(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		dir := t.TempDir()
		if err := os.Symlink("/dev/full", filepath.Join(dir, outputFile)); err != nil {
			t.Fatal(err)
		}
		argv := append(newRunner(t).ShimCommand, "--dir", dir, "--timeout", "1s", "--grace", "100ms", "--drain-timeout", "300ms")
		if pipe {
			argv = append(argv, "--pipe")
		}
		argv = append(argv, "--", "/bin/sh", "-c", `head -c 4000000 /dev/zero; echo done; exit 5`)
		cmd := exec.Command(argv[0], argv[1:]...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("shim: %v\n%s", err, stderr.String())
			}
		case <-time.After(testTimeout):
			cmd.Process.Kill()
			t.Fatal("the shim did not finish: the drain timeout was not kept")
		}
		st, err := readStatus(dir)
		if err != nil {
			t.Fatal(err)
		}
		// Blocked on its output, the hook never got to "echo done; exit 5".
		if !st.TimedOut || st.ExitCode == 5 || !st.Truncated || st.Discarded <= 0 || st.Discarded >= 4000000 {
			t.Errorf("status = %+v, want timed out, truncated, some (not all) bytes discarded", st)
		}
		log := stderr.String()
		for _, want := range []string{"no space left on device; holding the hook's output and retrying",
			"could not be written for 300ms after the hook ended", "output truncated after 0 bytes (a spool that could not be written: no space left on device)"} {
			if !strings.Contains(log, want) {
				t.Errorf("shim log lacks %q:\n%s", want, log)
			}
		}
	})
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory, or skips the test where
// mounting is not permitted (it fails under CI=true).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount a tmpfs (CI must allow it): %v", err)
		}
		t.Skipf("cannot mount a tmpfs here (%v): the full-disk test needs root and CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file in dir until the file system is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for { // the last, partial pages
		if _, err := f.Write(block[:512]); err != nil {
			break
		}
	}
	return p
}

// The disk under the spool fills up while a hook prints: the hook waits on its output
// (it does not get to its end), nothing is dropped; once space is freed every line
// arrives, once and in order, and the run counts as whole.
func TestSpoolFullDiskLosesNothing(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		disk := mountTmpfs(t, 16<<20)
		const n = 60000 // 60000 lines of about 40 bytes: more than the terminal or pipe holds
		finished := filepath.Join(t.TempDir(), "finished")
		s := specOn(t, pipe, `i=0
while [ $i -lt `+strconv.Itoa(n)+` ]; do echo "line $i of the hook's output"; i=$((i+1)); done
touch "$FINISHED"`, "FINISHED="+finished)
		s.Dir = filepath.Join(disk, "spool")
		if err := os.Mkdir(s.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		filler := fill(t, disk)
		c := &collect{}
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		// The hook cannot finish while its output cannot be written. Nothing can be
		// awaited here; give it time it would need to finish many times over.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(finished); err == nil {
				t.Fatal("the hook finished while its output could not be written: output was dropped")
			}
			select {
			case <-run.Done():
				t.Fatalf("the run ended on a full disk: %+v", run.Result())
			case <-time.After(50 * time.Millisecond):
			}
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() || res.Truncated {
			t.Errorf("result = %+v, want OK and nothing truncated", res)
		}
		ls := c.rest()
		if len(ls) != n {
			t.Fatalf("%d lines, want %d; last: %q", len(ls), n, texts(ls[max(len(ls)-3, 0):]))
		}
		for i, l := range ls {
			if want := fmt.Sprintf("line %d of the hook's output", i); l.Text != want || l.Progress {
				t.Fatalf("line %d = %+v, want %q", i, l, want)
			}
		}
		log, _ := os.ReadFile(filepath.Join(s.Dir, shimLogFile))
		if !strings.Contains(string(log), "nothing was lost") {
			t.Errorf("shim log does not say it recovered:\n%s", log)
		}
	})
}

// The spool cannot be written past a size (RLIMIT_FSIZE on the shim, as a file system
// that fills up): the run ends normally, reports the truncation, and the hook's exit
// status is kept.
func TestSpoolFileSizeLimit(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			t.Skip("prlimit not installed")
		}
		r := newRunner(t)
		r.ShimCommand = append([]string{prlimit, "--fsize=100000", "--"}, r.ShimCommand...)
		c := &collect{}
		s := specOn(t, pipe, `yes 'some output' | head -c 3000000; exit 4`)
		s.Timeout = 10 * time.Second
		run, err := r.Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if res.ExitCode != 4 || !res.Truncated || res.Err != nil {
			t.Errorf("result = %+v, want exit 4 and truncated", res)
		}
		fi, err := os.Stat(filepath.Join(run.Dir(), outputFile))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 100000 {
			t.Errorf("spool grew to %d bytes past its limit", fi.Size())
		}
		log, _ := os.ReadFile(filepath.Join(run.Dir(), shimLogFile))
		if !strings.Contains(string(log), "file too large") {
			t.Errorf("shim log does not name the problem:\n%s", log)
		}
	})
}
