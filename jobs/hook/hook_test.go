package hook

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/hashicorp/go-hclog"
)

// shimMarker in its environment makes the test binary act as the shim.
const shimMarker = "BOARDVISOR_TEST_SHIM"

func TestMain(m *testing.M) {
	if os.Getenv(shimMarker) == "1" {
		// Not passed on to the hook.
		os.Unsetenv(shimMarker)
		os.Unsetenv("GORACE")
		os.Exit(ShimMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// testTimeout bounds every wait in these tests; hooks get it as their timeout too, so
// nothing outlives a failed test for long.
const testTimeout = 20 * time.Second

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// newRunner returns a Runner whose shim is this test binary.
func newRunner(t *testing.T) *Runner {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	base, _ := testCgroupBase()
	return &Runner{
		// With -race, a process sleeps 1s at exit unless told otherwise; the runner
		// waits for the shim's exit.
		ShimCommand: []string{"/usr/bin/env", shimMarker + "=1",
			"GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0", exe},
		Logger:     hclog.New(&hclog.LoggerOptions{Output: logWriter{t}, Level: hclog.Debug}),
		CgroupBase: base, // every run gets a cgroup where one can be had (as root)
	}
}

var (
	cgroupOnce sync.Once
	cgroupBase string
	cgroupErr  error
)

// testCgroupBase is FindCgroupBase, once per test binary.
func testCgroupBase() (string, error) {
	cgroupOnce.Do(func() { cgroupBase, cgroupErr = FindCgroupBase("") })
	return cgroupBase, cgroupErr
}

// lines collects what onLine receives.
type lines chan Line

func newLines() lines { return make(chan Line, 1024) }

func (c lines) onLine(ls []Line) {
	for _, l := range ls {
		c <- l
	}
}

// next returns the next line, failing the test if none arrives in time.
func (c lines) next(t *testing.T) Line {
	t.Helper()
	select {
	case l := <-c:
		return l
	case <-time.After(testTimeout):
		t.Fatal("no line arrived")
		return Line{}
	}
}

// rest returns the lines left after the run is done.
func (c lines) rest() []Line {
	var out []Line
	for {
		select {
		case l := <-c:
			out = append(out, l)
		default:
			return out
		}
	}
}

func wait(t *testing.T, run *Run) Result {
	t.Helper()
	select {
	case <-run.Done():
		return run.Result()
	case <-time.After(testTimeout):
		run.Stop()
		t.Fatal("hook run did not end")
		return Result{}
	}
}

// bothPaths runs f as two parallel subtests: the hook's output a terminal (the
// default) and a pipe (Spec.Pipe).
func bothPaths(t *testing.T, f func(t *testing.T, pipe bool)) {
	for _, pipe := range []bool{false, true} {
		name := "terminal"
		if pipe {
			name = "pipe"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, pipe)
		})
	}
}

// specOn is spec on the terminal (pipe false) or a pipe.
func specOn(t *testing.T, pipe bool, script string, env ...string) Spec {
	s := spec(t, script, env...)
	s.Pipe = pipe
	return s
}

func spec(t *testing.T, script string, env ...string) Spec {
	return Spec{
		Name:    t.Name(),
		Script:  script,
		Timeout: testTimeout,
		Grace:   time.Second,
		Dir:     filepath.Join(t.TempDir(), "spool"),
		Env:     env,
	}
}

func texts(ls []Line) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.Severity.String() + " " + l.Text
	}
	return out
}

func mkfifo(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// release unblocks a hook waiting in `read x < fifo`.
func release(t *testing.T, fifo string) {
	t.Helper()
	f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("go\n")
	f.Close()
}

// recorder writes a script that appends "PID STARTTIME" of its process to $PIDS and
// then sleeps (exec keeps the pid and start time).
func recorder(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "record-and-sleep")
	script := "#!/bin/sh\necho \"$$ $(cut -d' ' -f22 /proc/$$/stat)\" >> \"$PIDS\"\nexec sleep 1000\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// awaitPids is shell that waits until $PIDS has n lines.
func awaitPids(n int) string {
	return fmt.Sprintf(`while [ "$(wc -l < "$PIDS")" -lt %d ]; do sleep 0.01; done`, n)
}

// pidsFile creates the empty file the hook records its processes in.
func pidsFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pids")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// assertGone checks that none of the processes recorded in file exists any more.
func assertGone(t *testing.T, file string, want int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	recs := strings.Fields(string(b))
	if len(recs) != 2*want {
		t.Fatalf("recorded processes: %q, want %d", b, want)
	}
	for i := 0; i < len(recs); i += 2 {
		pid, _ := strconv.Atoi(recs[i])
		start, _ := strconv.ParseUint(recs[i+1], 10, 64)
		st, err := readStat(pid)
		// A zombie has exited (whoever adopted it has not reaped it yet).
		if err == nil && st.startTime == start && !st.dead() {
			t.Errorf("process %d survived the hook (state %c, parent %d)", pid, st.state, st.ppid)
		}
	}
}

// 1. Severities and order.
func TestLinesAndSeverities(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `echo "JMP_INFO: a"; echo "JMP_WARN: b" >&2; echo "JMP_ERROR: c"; echo plain`), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		got := texts(c.rest())
		want := []string{"INFO a", "WARN b", "ERROR c", "INFO plain"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("lines = %q, want %q", got, want)
		}
		if !res.OK() || res.ExitCode != 0 {
			t.Errorf("result = %+v, want OK", res)
		}
		if res.Started.IsZero() || res.Ended.Before(res.Started) {
			t.Errorf("times: started %v ended %v", res.Started, res.Ended)
		}
	})
}

// 2. A line arrives while the hook is still running: the hook blocks on a FIFO that
// the test opens only after it has received the line.
func TestLinesArriveLive(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		for _, polling := range []bool{false, true} {
			t.Run(fmt.Sprintf("polling=%v", polling), func(t *testing.T) {
				fifo := mkfifo(t, "gate")
				c := newLines()
				r := newRunner(t)
				r.noInotify = polling
				run, err := r.Start(specOn(t, pipe, `echo first; read x < "$FIFO"; echo second`, "FIFO="+fifo), c.onLine)
				if err != nil {
					t.Fatal(err)
				}
				if l := c.next(t); l.Text != "first" {
					t.Fatalf("first line = %q", l.Text)
				}
				select {
				case <-run.Done():
					t.Fatal("run ended while the hook was blocked")
				default:
				}
				release(t, fifo)
				if l := c.next(t); l.Text != "second" {
					t.Fatalf("second line = %q", l.Text)
				}
				if res := wait(t, run); !res.OK() {
					t.Errorf("result = %+v", res)
				}
			})
		}
	})
}

// 3. A failing exit code.
func TestExitCode(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		run, err := newRunner(t).Start(specOn(t, pipe, `echo failing; exit 3`), nil)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if res.ExitCode != 3 || res.OK() || res.Err != nil || res.TimedOut || res.Stopped {
			t.Errorf("result = %+v, want exit 3, not OK, no error", res)
		}
	})
}

// 4. The timeout ladder: the hook ignores SIGTERM and leaves a child in its group and
// processes that escaped it with setsid, one of them a grandchild.
func TestTimeoutKillsEverything(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		s := specOn(t, pipe, `trap '' TERM
	"$REC" &
	setsid "$REC" &
	sh -c 'setsid "$REC" & wait' &
	`+awaitPids(3)+`
	echo ready
	sleep 1000`, "PIDS="+pids, "REC="+recorder(t))
		s.Timeout, s.Grace = 300*time.Millisecond, 200*time.Millisecond
		c := newLines()
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.TimedOut || res.OK() || res.Signal != "SIGKILL" {
			t.Errorf("result = %+v, want timed out, killed by SIGKILL", res)
		}
		got := strings.Join(texts(c.rest()), "\n")
		for _, want := range []string{"INFO ready", "ERROR boardvisor: hook timed out", "sent SIGKILL", "WARN boardvisor: hook left"} {
			if !strings.Contains(got, want) {
				t.Errorf("output lacks %q:\n%s", want, got)
			}
		}
		assertGone(t, pids, 3)
	})
}

// 5. A hook that succeeds but leaves a process behind.
func TestLeftoverKilledAfterSuccess(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `setsid "$REC" &
	`+awaitPids(1)+`
	echo done`, "PIDS="+pids, "REC="+recorder(t)), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() {
			t.Errorf("result = %+v, want OK", res)
		}
		ls := c.rest()
		if len(ls) != 2 || ls[0].Text != "done" || ls[1].Severity != jobs.SeverityWarn || !strings.Contains(ls[1].Text, "left 1 process") {
			t.Errorf("lines = %q", texts(ls))
		}
		assertGone(t, pids, 1)
	})
}

// A hook that succeeds but leaves a process in its own process group: on a terminal
// too (where the hook's exit hangs the terminal up for its group), the shim names it
// and kills it.
func TestLeftoverInGroupKilled(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `"$REC" &
`+awaitPids(1)+`
echo done`, "PIDS="+pids, "REC="+recorder(t)), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		if res := wait(t, run); !res.OK() {
			t.Errorf("result = %+v, want OK", res)
		}
		ls := c.rest()
		if len(ls) != 2 || ls[0].Text != "done" || !strings.Contains(ls[1].Text, "left 1 process") {
			t.Errorf("lines = %q", texts(ls))
		}
		assertGone(t, pids, 1)
	})
}

// 6. Stop during a run.
func TestStop(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `"$REC" &
	setsid "$REC" &
	`+awaitPids(2)+`
	echo ready
	sleep 1000`, "PIDS="+pids, "REC="+recorder(t)), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		if l := c.next(t); l.Text != "ready" {
			t.Fatalf("line = %q", l.Text)
		}
		run.Stop()
		run.Stop() // idempotent
		res := wait(t, run)
		if !res.Stopped || res.TimedOut || res.OK() || res.Signal != "SIGTERM" {
			t.Errorf("result = %+v, want stopped by SIGTERM", res)
		}
		assertGone(t, pids, 2)
		run.Stop() // after Done: nothing
	})
}

// A Stop right after Start is not lost: the shim handles SIGTERM before Start returns.
func TestStopRightAfterStart(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		run, err := newRunner(t).Start(specOn(t, pipe, `exec sleep 1000`), nil)
		if err != nil {
			t.Fatal(err)
		}
		run.Stop()
		if res := wait(t, run); !res.Stopped || res.Err != nil {
			t.Errorf("result = %+v, want stopped", res)
		}
	})
}

// 7. Exec that cannot be run.
func TestExecCannotRun(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		notExec := filepath.Join(t.TempDir(), "hook.sh")
		if err := os.WriteFile(notExec, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			path string
			code int
		}{
			{filepath.Join(t.TempDir(), "missing-hook"), 127},
			{notExec, 126},
		} {
			c := newLines()
			s := specOn(t, pipe, "")
			s.Exec = tc.path
			run, err := newRunner(t).Start(s, c.onLine)
			if err != nil {
				t.Fatal(err)
			}
			res := wait(t, run)
			if res.ExitCode != tc.code || res.Err == nil || !strings.Contains(res.Err.Error(), tc.path) || res.OK() {
				t.Errorf("%s: result = %+v, want exit %d and an error naming the path", tc.path, res, tc.code)
			}
			ls := c.rest()
			if len(ls) != 1 || ls[0].Severity != jobs.SeverityError || !strings.Contains(ls[0].Text, tc.path) {
				t.Errorf("%s: lines = %q, want one ERROR line naming the path", tc.path, texts(ls))
			}
		}
	})
}

// 8. A daemon crash: the run is detached after line 1, line 2 is written while nobody
// watches, and the run is adopted from line 1's offset.
func TestDetachAndAdopt(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		fifo1, fifo2 := mkfifo(t, "gate1"), mkfifo(t, "gate2")
		r := newRunner(t)
		c1 := newLines()
		run, err := r.Start(specOn(t, pipe, `echo one; read x < "$FIFO1"; echo two; read x < "$FIFO2"; printf three`,
			"FIFO1="+fifo1, "FIFO2="+fifo2), c1.onLine)
		if err != nil {
			t.Fatal(err)
		}
		l1 := c1.next(t)
		if l1.Text != "one" || l1.Offset != 4 {
			t.Fatalf("line 1 = %+v", l1)
		}
		run.Detach()
		if res := run.Result(); !errors.Is(res.Err, ErrDetached) {
			t.Fatalf("detached result = %+v", res)
		}
		if rest := c1.rest(); len(rest) != 0 {
			t.Fatalf("lines after line 1 before detaching: %q", texts(rest))
		}
		release(t, fifo1) // "two" is written while nobody tails

		c2 := newLines()
		adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), l1.Offset, c2.onLine)
		if err != nil {
			t.Fatal(err)
		}
		if l := c2.next(t); l.Text != "two" || l.Offset != 8 {
			t.Fatalf("line 2 = %+v", l)
		}
		select {
		case <-adopted.Done():
			t.Fatal("adopted run ended while the hook was blocked")
		default:
		}
		release(t, fifo2)
		res := wait(t, adopted)
		got := c2.rest()
		if len(got) != 1 || got[0].Text != "three" || got[0].Offset != 13 {
			t.Errorf("lines after line 2 = %+v, want only \"three\"", got)
		}
		if !res.OK() {
			t.Errorf("result = %+v", res)
		}
		if len(c1.rest()) != 0 {
			t.Error("the detached run passed on lines")
		}
	})
}

// Stop of an adopted run, with and without pidfd.
func TestAdoptThenStop(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		for _, noPidfd := range []bool{false, true} {
			t.Run(fmt.Sprintf("noPidfd=%v", noPidfd), func(t *testing.T) {
				r := newRunner(t)
				r.noPidfd = noPidfd
				c := newLines()
				run, err := r.Start(specOn(t, pipe, `echo ready; exec sleep 1000`), c.onLine)
				if err != nil {
					t.Fatal(err)
				}
				l := c.next(t)
				run.Detach()
				adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), l.Offset, c.onLine)
				if err != nil {
					t.Fatal(err)
				}
				adopted.Stop()
				res := wait(t, adopted)
				if !res.Stopped || res.Signal != "SIGTERM" || res.Err != nil {
					t.Errorf("result = %+v, want stopped", res)
				}
				if got := texts(c.rest()); len(got) != 1 || !strings.Contains(got[0], "hook stopped") {
					t.Errorf("lines = %q", got)
				}
			})
		}
	})
}

// 9. Adopt of a pid that is not the shim (wrong start time) with no status file.
func TestAdoptWrongStartTimeVanished(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, outputFile), []byte("seen\nunseen\nlast"), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := startTimeOf(os.Getpid()) // alive, but not with this start time
	if err != nil {
		t.Fatal(err)
	}
	c := newLines()
	run, err := newRunner(t).Adopt(dir, os.Getpid(), st+1, 5, c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	res := wait(t, run)
	if !errors.Is(res.Err, ErrShimVanished) || res.OK() {
		t.Errorf("result = %+v, want ErrShimVanished", res)
	}
	if got := texts(c.rest()); strings.Join(got, "|") != "INFO unseen|INFO last" {
		t.Errorf("lines = %q", got)
	}
	run.Stop() // must not signal this process
}

// Adopt of a shim that finished while the daemon was away: the status file is read.
func TestAdoptFinished(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		r := newRunner(t)
		run, err := r.Start(specOn(t, pipe, `echo a; echo b; exit 4`), nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, run)
		c := newLines()
		adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), 0, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, adopted)
		if res.ExitCode != 4 || res.Err != nil {
			t.Errorf("result = %+v, want exit 4", res)
		}
		if got := texts(c.rest()); strings.Join(got, "|") != "INFO a|INFO b" {
			t.Errorf("lines = %q", got)
		}
	})
}

// A shim that exits without a status.
func TestShimVanishes(t *testing.T) {
	t.Parallel()
	r := &Runner{ShimCommand: []string{"/bin/true"}}
	run, err := r.Start(spec(t, `echo never`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res := wait(t, run); !errors.Is(res.Err, ErrShimVanished) || res.OK() {
		t.Errorf("result = %+v, want ErrShimVanished", res)
	}
}

// 10. Invalid UTF-8 is replaced, a line over 64 KiB is cut, and the last line is passed
// on without a newline.
func TestInvalidUTF8AndLongLine(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `printf 'bad \377\376 bytes\n'; head -c 102400 /dev/zero | tr '\0' x`), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() {
			t.Errorf("result = %+v", res)
		}
		ls := c.rest()
		if len(ls) != 2 {
			t.Fatalf("got %d lines, want 2", len(ls))
		}
		if ls[0].Text != "bad \uFFFD bytes" || ls[0].Cut {
			t.Errorf("line 1 = %q", ls[0].Text)
		}
		want := strings.Repeat("x", jobs.MaxLineBytes) + jobs.CutMark
		if !ls[1].Cut || ls[1].Text != want {
			t.Errorf("line 2: cut %v, %d bytes", ls[1].Cut, len(ls[1].Text))
		}
		if ls[1].Offset != int64(len("bad \377\376 bytes\n")+102400) {
			t.Errorf("line 2 offset = %d", ls[1].Offset)
		}
	})
}

func TestSpecErrors(t *testing.T) {
	t.Parallel()
	r := newRunner(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "stale"), nil, 0o600)
	for _, s := range []Spec{
		{Name: "both", Script: "true", Exec: "/bin/true", Dir: t.TempDir()},
		{Name: "neither", Dir: t.TempDir()},
		{Name: "nodir", Script: "true"},
		{Name: "notempty", Script: "true", Dir: dir},
	} {
		if _, err := r.Start(s, nil); err == nil || !strings.Contains(err.Error(), "hook "+s.Name+": ") {
			t.Errorf("%s: err = %v", s.Name, err)
		}
	}
}

// The hook sees the lease variables and a minimal environment, not the shim marker.
func TestHookEnvironment(t *testing.T) {
	t.Parallel()
	bothPaths(t, func(t *testing.T, pipe bool) {
		c := newLines()
		s := specOn(t, pipe, `env | sort`, Env("l1", "alice", "rpi-7", "/tmp/motd", map[string]string{"device-type": "rpi4"})...)
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, run)
		got := strings.Join(texts(c.rest()), "\n")
		for _, want := range []string{"INFO BOARD_LABEL_DEVICE_TYPE=rpi4", "INFO LEASE_NAME=l1", "INFO CLIENT_NAME=alice", "INFO PATH="} {
			if !strings.Contains(got, want) {
				t.Errorf("environment lacks %q:\n%s", want, got)
			}
		}
		if strings.Contains(got, shimMarker) {
			t.Errorf("environment has the shim marker:\n%s", got)
		}
	})
}

func TestEnv(t *testing.T) {
	got := Env("lease-1", "alice", "rpi-7", "/run/motd", map[string]string{
		"device": "rpi4", "a.b": "first", "a-b": "second", "zone/x": "lab",
	})
	want := []string{
		"BOARD_LABEL_A_B=second", // "a-b" sorts before "a.b"
		"BOARD_LABEL_DEVICE=rpi4",
		"BOARD_LABEL_ZONE_X=lab",
		"BOARD_NAME=rpi-7",
		"CLIENT_NAME=alice",
		"JMP_MOTD_FILE=/run/motd",
		"LEASE_NAME=lease-1",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Env = %q, want %q", got, want)
	}
}

// Runs leave no goroutine behind. Not parallel: it counts goroutines.
func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	r := newRunner(t)
	for i := 0; i < 3; i++ {
		run, err := r.Start(spec(t, `echo hi`), nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, run)
		adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, adopted)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r.w != nil {
		t.Error("inotify watcher still open")
	}
}
