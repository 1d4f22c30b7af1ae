package tests

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/jobs/journal"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/encoding/protojson"
	_ "modernc.org/sqlite" // the coordinator's database, read back by the checks
)

// hookMarker names the restart test's hooks in their command line (`sh -c SCRIPT`), for
// a person reading ps; the test itself finds them by their record file's path.
const hookMarker = "restart-e2e-hook"

// hookScript returns a hook that records its run in rec ("<kind> $LEASE_NAME" when it
// starts, "<kind>-done $LEASE_NAME" when it ends) and prints n numbered lines
// "<kind> line <i>" with a small sleep before each, so that a kill lands while it prints.
func hookScript(kind, rec string, n int, sleep string) string {
	return fmt.Sprintf(": %s; echo \"%s $LEASE_NAME\" >> %s; i=1; while [ $i -le %d ]; do sleep %s; echo \"%s line $i\"; i=$((i+1)); done; echo \"%s-done $LEASE_NAME\" >> %s",
		hookMarker, kind, rec, n, sleep, kind, kind, rec)
}

// startQuiet starts a boardvisor process like start, but without tying it to a test:
// the restart test starts its supervisor again and again from its subtests, and kills
// them itself. Its output is kept (and searchable) but printed only on demand.
func startQuiet(name string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(binary, args...), done: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		w.Close()
		close(p.done)
	}()
	return p, nil
}

// untilLine polls (every 200µs) until the process prints a line, after byte from, that
// holds every one of subs; it returns that line.
func (p *proc) untilLine(from int, timeout time.Duration, subs ...string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		out := p.out.String()
		p.mu.Unlock()
		if from > len(out) {
			from = len(out)
		}
		rest := out[from:]
		// Only whole lines: the last one may still be written.
		if i := strings.LastIndexByte(rest, '\n'); i >= 0 {
			for _, l := range strings.Split(rest[:i], "\n") {
				if containsAll(l, subs) {
					return l, nil
				}
			}
			from += i + 1
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("%s exited (%v) before printing a line with %q", p.name, p.err, subs)
		default:
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s printed no line with %q within %s", p.name, subs, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

var phaseField = regexp.MustCompile(`\bphase=([A-Z_]+)`)

// lastPhase returns the last phase the process logged for a job ("" if none): what the
// lease actor had reached when the process was killed.
func (p *proc) lastPhase(job string) string {
	last := ""
	for _, l := range strings.Split(p.output(), "\n") {
		if !strings.Contains(l, "job="+job) {
			continue
		}
		if m := phaseField.FindStringSubmatch(l); m != nil {
			last = m[1]
		}
	}
	return last
}

var listenField = regexp.MustCompile(`supervising.*\blisten=(\S+)`)

// listenAddr returns the client-service address a supervisor logged at start-up.
func (p *proc) listenAddr() string {
	if m := listenField.FindStringSubmatch(p.output()); m != nil {
		return m[1]
	}
	return ""
}

// waitFile polls (every 200µs) until the file at path holds want.
func waitFile(path, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(want)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not hold %q after %s (%v)", path, want, timeout, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// waitExists polls (every 200µs) until path exists.
func waitExists(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not exist after %s", path, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// leftover is a process found by scanProcs.
type leftover struct {
	pid     int
	cmdline string
	lease   string // the LEASE_NAME in its environment, if any
	why     string
}

func (l leftover) String() string { return fmt.Sprintf("pid %d (%s): %s", l.pid, l.why, l.cmdline) }

// scanProcs lists the live processes (not zombies) whose command line holds one of
// cmdSubs or whose environment holds one of envs ("LEASE_NAME=<job>").
func scanProcs(cmdSubs []string, envs map[string]bool) []leftover {
	ents, _ := os.ReadDir("/proc")
	var out []leftover
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The state follows the parenthesized command name: Z is a zombie, already gone.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		l := leftover{pid: pid, cmdline: strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))}
		for _, s := range cmdSubs {
			if s != "" && strings.Contains(l.cmdline, s) {
				l.why = "command line holds " + s
				break
			}
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("LEASE_NAME=")); ok {
				l.lease = string(v)
				if l.why == "" && envs[string(kv)] {
					l.why = "environment holds " + string(kv)
				}
			}
		}
		if l.why != "" {
			out = append(out, l)
		}
	}
	return out
}

// storedEvent is one row of the coordinator's events table.
type storedEvent struct {
	seq     int64
	job     string
	kind    string
	payload string
}

// readEvents reads a supervisor's events from the coordinator's SQLite database, in
// sequence order. It opens the database read-only: the coordinator may still run (WAL).
func readEvents(ctx context.Context, dbPath, supervisor string) ([]storedEvent, error) {
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT seq, job_id, kind, payload FROM events WHERE supervisor_id = $1 ORDER BY seq`, supervisor)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var evs []storedEvent
	for rows.Next() {
		var e storedEvent
		if err := rows.Scan(&e.seq, &e.job, &e.kind, &e.payload); err != nil {
			return nil, err
		}
		evs = append(evs, e)
	}
	return evs, rows.Err()
}

// seqGaps describes the holes in a sequence of event numbers (it must start at 1).
func seqGaps(evs []storedEvent) []string {
	var gaps []string
	want := int64(1)
	for _, e := range evs {
		if e.seq != want {
			gaps = append(gaps, fmt.Sprintf("seq %d..%d missing", want, e.seq-1))
		}
		want = e.seq + 1
	}
	return gaps
}

// leaseTranscript is what the coordinator stored of one lease.
type leaseTranscript struct {
	transitions []string            // "FROM->TO"
	hookLines   map[string][]string // by log source name: the texts in sequence order
	offsets     map[string][]uint64
	errors      []string
}

func transcriptOf(evs []storedEvent, job string) (*leaseTranscript, error) {
	lt := &leaseTranscript{hookLines: map[string][]string{}, offsets: map[string][]uint64{}}
	short := func(p pb.LeasePhase) string { return strings.TrimPrefix(p.String(), "LEASE_PHASE_") }
	for _, e := range evs {
		if e.job != job {
			continue
		}
		switch e.kind {
		case "state_transition":
			var st pb.StateTransition
			if err := protojson.Unmarshal([]byte(e.payload), &st); err != nil {
				return nil, fmt.Errorf("event %d: %w", e.seq, err)
			}
			lt.transitions = append(lt.transitions, short(st.GetFrom())+"->"+short(st.GetTo()))
		case "hook_log":
			var h pb.HookLog
			if err := protojson.Unmarshal([]byte(e.payload), &h); err != nil {
				return nil, fmt.Errorf("event %d: %w", e.seq, err)
			}
			src := h.GetSource().String()
			lt.hookLines[src] = append(lt.hookLines[src], h.GetText())
			lt.offsets[src] = append(lt.offsets[src], h.GetOffset())
		case "error":
			lt.errors = append(lt.errors, fmt.Sprintf("seq %d: %s", e.seq, e.payload))
		}
	}
	return lt, nil
}

// recordCounts counts the lines of the hooks' record file.
func recordCounts(path string) (map[string]int, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	n := map[string]int{}
	for _, l := range strings.Split(string(b), "\n") {
		if l != "" {
			n[l]++
		}
	}
	return n, nil
}

// durations is a set of measured durations.
type durations struct {
	mu sync.Mutex
	ds []time.Duration
}

func (d *durations) add(v time.Duration) {
	d.mu.Lock()
	d.ds = append(d.ds, v)
	d.mu.Unlock()
}

func (d *durations) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.ds) == 0 {
		return "none"
	}
	lo, hi, sum := d.ds[0], d.ds[0], time.Duration(0)
	for _, v := range d.ds {
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	return fmt.Sprintf("n=%d min=%s mean=%s max=%s", len(d.ds), lo.Round(time.Millisecond), (sum / time.Duration(len(d.ds))).Round(time.Millisecond), hi.Round(time.Millisecond))
}

// journalView describes what the journal in stateDir holds for each live lease (its
// phase and the hook run it records): what a restart will resume from. The supervisor
// must not run.
func journalView(stateDir string) map[string]string {
	j, err := journal.Open(filepath.Join(stateDir, "journal.db"), journal.Options{LockTimeout: time.Second})
	if err != nil {
		return map[string]string{"": err.Error()}
	}
	defer j.Close()
	recs, _, err := j.LoadAll()
	if err != nil {
		return map[string]string{"": err.Error()}
	}
	out := map[string]string{}
	for _, rec := range recs {
		s := rec.State.Phase.String()
		if rec.State.EndRequested {
			s += " end-requested"
		}
		if k := rec.State.HookRunning; k != jobs.HookNone {
			s += " running " + k.String()
			if rec.Hook == nil || rec.Hook.Pid == 0 {
				s += " (no shim pid)"
			} else {
				s += fmt.Sprintf(" (shim %d, offset %d)", rec.Hook.Pid, rec.Hook.Offset)
			}
		}
		out[rec.Spec.JobID] = s
	}
	return out
}
