package hook

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Hooks write to a pseudo-terminal by default: programs that block-buffer into a pipe
// write each line as they print it, and progress redrawn with carriage returns becomes
// progress lines.

// needProgram returns the path of a program the test needs, skipping the test without
// it (failing under CI=true, where .ci/run installs it).
func needProgram(t *testing.T, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing: .ci/run should install it", path)
		}
		t.Skipf("%s is not installed", path)
	}
	return path
}

// The hook's stdout and stderr are its controlling terminal, of a fixed size, in a
// session of its own; stdin stays /dev/null; the bytes reach the spool as written; and
// the shim holds no descriptor of the terminal's slave side.
func TestHookSeesATerminal(t *testing.T) {
	t.Parallel()
	fifo := mkfifo(t, "gate")
	c := newLines()
	run, err := newRunner(t).Start(spec(t, `[ -t 1 ] && echo "stdout is a terminal"
[ -t 2 ] && echo "stderr is a terminal" >&2
[ -t 0 ] || echo "stdin is not"
stty size < /dev/tty
echo "TERM=$TERM"
set -- $(cut -d' ' -f5,6 /proc/$$/stat)
[ "$1" = $$ ] && [ "$2" = $$ ] && echo "leads its process group and session"
printf 'raw\nbytes\tkept\n'
read x < "$FIFO"`, "FIFO="+fifo), c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 8 {
		got = append(got, c.next(t).Text)
	}
	want := []string{"stdout is a terminal", "stderr is a terminal", "stdin is not",
		fmt.Sprintf("%d %d", TerminalRows, TerminalColumns), "TERM=dumb", "leads its process group and session", "raw", "bytes\tkept"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("lines = %q, want %q", got, want)
	}
	// While the hook runs: the shim holds the master only.
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", run.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", run.Pid(), fd.Name()))
		if strings.HasPrefix(link, "/dev/pts/") {
			t.Errorf("the shim holds the terminal's slave side as fd %s (%s)", fd.Name(), link)
		}
	}
	release(t, fifo)
	if res := wait(t, run); !res.OK() {
		t.Errorf("result = %+v", res)
	}
	b, err := os.ReadFile(filepath.Join(run.Dir(), outputFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\nraw\nbytes\tkept\n") || strings.Contains(string(b), "\r") {
		t.Errorf("spool = %q, want the bytes as written (no \\r added)", b)
	}
}

// A hook that must not see a terminal (Spec.Pipe) gets a pipe, and no TERM.
func TestPipeIsNoTerminal(t *testing.T) {
	t.Parallel()
	c := newLines()
	run, err := newRunner(t).Start(specOn(t, true, `[ -t 1 ] || echo "stdout is not a terminal"; echo "TERM=${TERM-unset}"`), c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	wait(t, run)
	if got := strings.Join(texts(c.rest()), "|"); got != "INFO stdout is not a terminal|INFO TERM=unset" {
		t.Errorf("lines = %q", got)
	}
}

// Programs that block-buffer into a pipe (Python's print, awk) write each line to the
// terminal as they print it: each line arrives while the hook waits on a FIFO that the
// test opens only after it has received that line.
func TestBlockBufferedLinesArriveLive(t *testing.T) {
	t.Parallel()
	python := needProgram(t, "/usr/bin/python3")
	awk := needProgram(t, "/usr/bin/awk")
	for _, tc := range []struct{ name, script string }{
		{"python", python + ` -c 'import os
for i in range(3):
    print("step", i)
    open(os.environ["FIFO"]).read()
'`},
		{"awk", awk + ` 'BEGIN { for (i = 0; i < 3; i++) { print "step", i; getline x < ENVIRON["FIFO"]; close(ENVIRON["FIFO"]) } }'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fifo := mkfifo(t, "gate")
			c := newLines()
			run, err := newRunner(t).Start(spec(t, tc.script, "FIFO="+fifo), c.onLine)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if l := c.next(t); l.Text != fmt.Sprintf("step %d", i) {
					t.Fatalf("line %d = %q", i, l.Text)
				}
				release(t, fifo)
			}
			if res := wait(t, run); !res.OK() {
				t.Errorf("result = %+v", res)
			}
		})
	}
}

// progressHook redraws "flashing N/1000" 1000 times in about 2 s, stopping after the
// 500th redraw until $FIFO is opened, then ends the line.
const progressHook = `/usr/bin/python3 -c '
import os, sys, time
sys.stdout.write("JMP_INFO: starting\n")
for i in range(1, 1001):
    sys.stdout.write("\rflashing %d/1000" % i)
    sys.stdout.flush()
    time.sleep(0.002)
    if i == 500:
        open(os.environ["FIFO"]).read()
sys.stdout.write("\n")
'`

// A hook redrawing a line 1000 times: the reader sees intermediate states while the
// hook runs, at most one per ProgressInterval, in order, then the final state as the
// ordinary line. Each progress line's Offset is the start of its line.
func TestProgressLines(t *testing.T) {
	t.Parallel()
	needProgram(t, "/usr/bin/python3")
	fifo := mkfifo(t, "gate")
	c := &collect{}
	got := make(chan Line, 1)
	begin := time.Now()
	run, err := newRunner(t).Start(spec(t, progressHook, "FIFO="+fifo), func(ls []Line) {
		c.onLine(ls)
		for _, l := range ls {
			if l.Progress {
				select {
				case got <- l:
				default:
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got: // while the hook waits on the FIFO
		if !strings.HasPrefix(l.Text, "flashing ") {
			t.Errorf("progress line %+v", l)
		}
	case <-time.After(testTimeout):
		t.Fatal("no progress line while the hook ran")
	}
	release(t, fifo)
	res := wait(t, run)
	elapsed := time.Since(begin)
	if !res.OK() {
		t.Fatalf("result = %+v", res)
	}
	ls := c.rest()
	if len(ls) < 3 || ls[0].Text != "starting" || ls[0].Progress {
		t.Fatalf("lines = %+v", ls)
	}
	end := int64(len("JMP_INFO: starting\n") + len("\n"))
	for i := 1; i <= 1000; i++ {
		end += int64(len(fmt.Sprintf("\rflashing %d/1000", i)))
	}
	last := ls[len(ls)-1]
	if last.Progress || last.Text != "flashing 1000/1000" || last.Offset != end {
		t.Errorf("last line = %+v, want the final state as an ordinary line at the end of the output", last)
	}
	progress := ls[1 : len(ls)-1]
	prev := 0
	for _, l := range progress {
		var n int
		if _, err := fmt.Sscanf(l.Text, "flashing %d/1000", &n); err != nil || !l.Progress || l.Offset != 19 {
			t.Fatalf("line %+v: want a progress line at offset 19", l)
		}
		if n <= prev {
			t.Errorf("progress went from %d to %d", prev, n)
		}
		prev = n
	}
	// The stated rate: at most two a second.
	if limit := int(elapsed/(500*time.Millisecond)) + 1; len(progress) > limit {
		t.Errorf("%d progress lines in %v: more than two a second", len(progress), elapsed)
	}
	t.Logf("%d progress lines in %v", len(progress), elapsed)
}

// A tail resumed from a progress line's Offset (after a restart) reads the line again:
// its ordinary line arrives once, and the line before it is not repeated.
func TestProgressResume(t *testing.T) {
	t.Parallel()
	fifo := mkfifo(t, "gate")
	r := newRunner(t)
	c1 := newLines()
	run, err := r.Start(spec(t, `echo first; printf '\r10%%\r20%%'; read x < "$FIFO"; printf '\r30%%\n'; echo after`, "FIFO="+fifo), c1.onLine)
	if err != nil {
		t.Fatal(err)
	}
	if l := c1.next(t); l.Text != "first" || l.Offset != 6 {
		t.Fatalf("line 1 = %+v", l)
	}
	p := c1.next(t)
	if !p.Progress || p.Text != "20%" || p.Offset != 6 {
		t.Fatalf("progress line = %+v", p)
	}
	run.Detach()
	c2 := newLines()
	adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), p.Offset, c2.onLine)
	if err != nil {
		t.Fatal(err)
	}
	release(t, fifo)
	if res := wait(t, adopted); !res.OK() {
		t.Errorf("result = %+v", res)
	}
	var ordinary []string
	for _, l := range c2.rest() {
		if !l.Progress {
			ordinary = append(ordinary, fmt.Sprintf("%s@%d", l.Text, l.Offset))
		}
	}
	if got, want := strings.Join(ordinary, " "), "30%@19 after@25"; got != want {
		t.Errorf("ordinary lines after resuming = %q, want %q", got, want)
	}
}

// The line state of the terminal's progress does not hold a hook: one that redraws
// without pause and never ends its line is bounded like any other output.
func TestProgressWithoutEnd(t *testing.T) {
	t.Parallel()
	c := &collect{}
	s := spec(t, `yes "$(printf '\r50%%')" | tr -d '\n' | head -c 3000000; exit 0`)
	s.MaxOutput = 1 << 20
	run, err := newRunner(t).Start(s, c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	if res := wait(t, run); !res.OK() || !res.Truncated {
		t.Errorf("result = %+v, want OK and truncated", res)
	}
	ls := c.rest()
	var ordinary []Line
	for _, l := range ls {
		if !l.Progress {
			ordinary = append(ordinary, l)
		} else if !strings.HasPrefix("50%", l.Text) || l.Offset != 0 {
			// A read may end in the middle of a redraw: its state so far is shown.
			t.Errorf("progress line %+v", l)
		}
	}
	if len(ordinary) != 2 || ordinary[0].Text != "50%" || !strings.Contains(ordinary[1].Text, truncatedMark) ||
		!strings.Contains(ordinary[1].Text, "in 1 lines dropped") {
		t.Errorf("ordinary lines = %q, want the last state and the marker", texts(ordinary))
	}
}
