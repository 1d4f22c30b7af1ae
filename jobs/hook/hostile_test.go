package hook

import (
	"fmt"
	"golang.org/x/sys/unix"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
// not block on its pipe), the spool holds the bound plus the marker, and one marker
// line naming the bound follows the last line kept.
func TestOutputBeyondBoundIsDiscarded(t *testing.T) {
	t.Parallel()
	const bound = 64 << 10
	s := spec(t, `yes 'a line of hook output' | head -c 8000000; echo 'JMP_ERROR: never kept'; exit 0`)
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
	want := fmt.Sprintf("WARN %s%d bytes", truncatedMark, bound)
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
}

// 10 MB without a newline: one line, cut at 64 KiB and marked; the hook is not held up.
func TestHugeLineWithoutNewline(t *testing.T) {
	t.Parallel()
	c := &collect{}
	s := spec(t, `head -c 10485760 /dev/zero | tr '\0' x; exit 0`)
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
}

// Raw binary: every line that comes out is valid UTF-8, and nothing is lost silently.
func TestBinaryOutput(t *testing.T) {
	t.Parallel()
	c := &collect{}
	run, err := newRunner(t).Start(spec(t, `head -c 300000 /dev/urandom; printf '\377\376\0tail\n'; exit 3`), c.onLine)
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
}

// A hook that closes its stdout and stderr and goes on running: it is ended by its
// timeout, and the shim's lines still reach the spool.
func TestClosedStdoutStillTimesOut(t *testing.T) {
	t.Parallel()
	pids := pidsFile(t)
	s := spec(t, `echo before; exec >&- 2>&-; "$REC" & `+awaitPids(1)+`; exec sleep 1000`, "PIDS="+pids, "REC="+recorder(t))
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
}

// The spool's disk is full and stays full: the hook's output waits in the pipe (the hook
// blocks on it) until the hook's timeout, which still applies; then the shim gives the
// output up, counted, and writes its status (the shim runs directly here, on an output
// that is /dev/full).
func TestSpoolDiskFull(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.Symlink("/dev/full", filepath.Join(dir, outputFile)); err != nil {
		t.Fatal(err)
	}
	argv := append(newRunner(t).ShimCommand, "--dir", dir, "--timeout", "2s", "--grace", "100ms", "--",
		"/bin/sh", "-c", `head -c 4000000 /dev/zero; echo done; exit 5`)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	begin := time.Now()
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
		t.Fatal("the shim did not finish: the timeout does not apply on a full disk")
	}
	if d := time.Since(begin); d < 2*time.Second || d > 8*time.Second {
		t.Errorf("took %v, want the 2s timeout and a little", d)
	}
	st, err := readStatus(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.TimedOut || !st.Truncated || st.Discarded <= 0 || st.Discarded > 4000005 {
		t.Errorf("status = %+v, want timed out, truncated, the bytes read counted as discarded", st)
	}
	if !strings.Contains(stderr.String(), "no space left on device") {
		t.Errorf("shim log does not name the problem:\n%s", stderr.String())
	}
}

// The spool's disk is full for a while: the hook's output waits in the pipe and is all
// written once there is space; the hook exits 0 and nothing is lost.
func TestSpoolDiskFullForAWhileLosesNothing(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	ballast := filepath.Join(dir, "ballast")
	f, err := os.Create(ballast)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	spool := filepath.Join(dir, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	argv := append(newRunner(t).ShimCommand, "--dir", spool, "--timeout", "60s", "--grace", "100ms", "--",
		"/bin/sh", "-c", `i=0; while [ $i -lt 20000 ]; do echo "line $i"; i=$((i+1)); done; exit 0`)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	time.Sleep(time.Second) // the hook is held meanwhile: nothing to await from outside
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("shim: %v\n%s", err, stderr.String())
		}
	case <-time.After(testTimeout):
		cmd.Process.Kill()
		t.Fatal("the shim did not finish once space returned")
	}
	st, err := readStatus(spool)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(filepath.Join(spool, outputFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if st.ExitCode != 0 || st.Truncated || st.Discarded != 0 || len(lines) != 20000 || lines[19999] != "line 19999" {
		t.Fatalf("status %+v, %d lines (last %q); want exit 0 and all 20000 lines", st, len(lines), lines[len(lines)-1])
	}
	if !strings.Contains(stderr.String(), "waits in the pipe") {
		t.Errorf("the disk was never full for the shim:\n%s", stderr.String())
	}
}

// The spool cannot be written past a size (RLIMIT_FSIZE on the shim, as a file system
// that fills up): the run ends normally, reports the truncation, and the hook's exit
// status is kept.
func TestSpoolFileSizeLimit(t *testing.T) {
	t.Parallel()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit not installed")
	}
	r := newRunner(t)
	r.ShimCommand = append([]string{prlimit, "--fsize=100000", "--"}, r.ShimCommand...)
	c := &collect{}
	s := spec(t, `yes 'some output' | head -c 3000000; exit 4`)
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
}
