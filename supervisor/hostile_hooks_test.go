package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Hooks that misbehave (issue 10, part 2). In every case the daemon stays up, a lease on
// another board runs to its end meanwhile, the misbehaving lease follows its hook's
// onFailure policy, and no process the hook started survives the lease: each records
// "PID STARTTIME" of its processes in a file, checked against /proc at the end.

// procs is the file a hook records its processes in.
type procs string

func newProcs(t *testing.T) procs {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pids")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return procs(p)
}

// sh is the shell prelude of a hook: `rec PID` records a process, `await N` waits until
// N are recorded, and $RECORD is the command a detached `sh -c` uses to record itself.
func (p procs) sh() string {
	return fmt.Sprintf(`rec() { echo "$1 $(cut -d' ' -f22 /proc/$1/stat)" >> %[1]s; }
await() { while [ "$(wc -l < %[1]s)" -lt "$1" ]; do sleep 0.01; done; }
RECORD='echo "$$ $(cut -d" " -f22 /proc/$$/stat)" >> %[1]s'
`, p)
}

// count returns how many processes are recorded.
func (p procs) count(t *testing.T) int {
	b, err := os.ReadFile(string(p))
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Fields(string(b))) / 2
}

// assertGone fails the test if a recorded process still runs (same pid and start time,
// not a zombie), or if fewer than want were recorded.
func (p procs) assertGone(t *testing.T, want int) {
	t.Helper()
	b, err := os.ReadFile(string(p))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f)/2 < want {
		t.Fatalf("the hook recorded %d processes (%q), want %d", len(f)/2, b, want)
	}
	for i := 0; i+1 < len(f); i += 2 {
		pid, _ := strconv.Atoi(f[i])
		stat, err := os.ReadFile("/proc/" + f[i] + "/stat")
		if err != nil {
			continue
		}
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 19 && fields[19] == f[i+1] && fields[0] != "Z" {
			t.Errorf("process %d of the hook survived (state %s)", pid, fields[0])
		}
	}
}

// await waits until the hook has recorded n processes.
func (p procs) await(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for p.count(t) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the hook recorded %d processes, want %d", p.count(t), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// otherBoard is the well-behaved board whose lease runs while a hook misbehaves.
func otherBoard() board.Config {
	return board.Config{Name: "other",
		Before: hookCfg("echo 'JMP_INFO: other before'; sleep 0.05", jobs.PolicyEndLease, wait),
		After:  hookCfg("echo 'other after'", jobs.PolicyEndLease, wait)}
}

// runOther runs a whole lease on the other board and checks it went as usual.
func (h *harness) runOther(t *testing.T, job string) {
	t.Helper()
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	evs := h.waitPhase(job, jobs.PhaseDone)
	want := "CREATED>STARTING STARTING>BEFORE_LEASE BEFORE_LEASE>READY READY>ENDING ENDING>AFTER_LEASE AFTER_LEASE>RELEASING RELEASING>DONE"
	var got []string
	for _, tr := range transitions(evs, job) {
		got = append(got, tr[:strings.IndexByte(tr, '[')])
	}
	if strings.Join(got, " ") != want {
		t.Errorf("the other board's lease went %v", got)
	}
	if l := hookLines(evs, job, jobs.SourceBeforeLeaseHook); len(l) != 1 || l[0] != "INFO other before" {
		t.Errorf("the other board's hook lines: %q", l)
	}
}

// assertBoard checks that the daemon still answers for the board, and how it is.
func (h *harness) assertBoard(t *testing.T, name string, status jobs.ExporterStatus, health jobs.Health) {
	t.Helper()
	st, err := h.sup.Board(name)
	if err != nil {
		t.Fatalf("board %s: %v", name, err)
	}
	if st.Status != status || st.Health != health || st.Holder != "" {
		t.Errorf("board %s after the lease: %+v, want %s, health %s, no holder", name, st, status, health)
	}
}

func joined(evs []connector.Event, job string) string {
	return strings.Join(transitions(evs, job), " ")
}

// (a) 10 MB without a newline: one line reaches the coordinator, cut at 64 KiB and
// marked; the hook succeeds and the lease goes on.
func TestHostileHookHugeLine(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := start(t, board.Config{Name: "evil",
		Before: hookCfg(p.sh()+`rec $$; head -c 10485760 /dev/zero | tr '\0' x; exit 0`, jobs.PolicyEndLease, wait)}, otherBoard())
	job := h.startJob("evil")
	other := h.startJob("other")
	evs := h.waitPhase(job, jobs.PhaseReady)
	p.assertGone(t, 1)
	var cut []connector.HookLine
	for _, ev := range evs {
		if ev.JobID == job && ev.Hook != nil && ev.Hook.Source == jobs.SourceBeforeLeaseHook {
			cut = append(cut, *ev.Hook)
		}
	}
	if len(cut) != 1 || !cut[0].Cut || len(cut[0].Text) != jobs.MaxLineBytes+len(jobs.CutMark) || cut[0].Offset != 10485760 {
		t.Fatalf("want one cut line of 64 KiB at offset 10485760, got %d lines", len(cut))
	}
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}

// (b) Raw binary and invalid UTF-8, then a failure under onFailure: warn. Every line is
// valid UTF-8 on the way out, so the client's LogStream (protobuf strings must be
// UTF-8) carries all of it and ends cleanly with the lease.
func TestHostileHookBinaryOutput(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := startClientService(t, board.Config{Name: "evil",
		Before: hookCfg(p.sh()+`rec $$; head -c 200000 /dev/urandom; printf '\n\377\376 bad \300\200 end\n'; exit 3`, jobs.PolicyWarn, wait)}, otherBoard())
	job := h.startJob("evil", withToken("tok-evil"))
	stream, err := h.client.LogStream(callCtx(t, "evil", "tok-evil"), &emptypb.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		msgs []*jpb.LogStreamResponse
		err  error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		for {
			m, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				got <- r
				return
			}
			r.msgs = append(r.msgs, m)
		}
	}()
	other := h.startJob("other")
	evs := h.waitPhase(job, jobs.PhaseReady)
	p.assertGone(t, 1)
	if sys := hookLines(evs, job, jobs.SourceSystem); !strings.Contains(strings.Join(sys, "|"), "WARN beforeLease hook failed: exit status 3") {
		t.Errorf("system lines %q: want the warn policy's warning", sys)
	}
	for _, l := range hookLines(evs, job, jobs.SourceBeforeLeaseHook) {
		if !utf8.ValidString(l) {
			t.Fatalf("hook line is not valid UTF-8: %q", l)
		}
	}
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	var r result
	select {
	case r = <-got:
	case <-time.After(wait):
		t.Fatal("the log stream did not end with the lease")
	}
	if r.err != nil {
		t.Fatalf("log stream broke: %v", r.err)
	}
	last := ""
	for _, m := range r.msgs {
		if m.GetSource() == jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK {
			last = m.GetMessage()
		}
	}
	if last != "\uFFFD bad \uFFFD end" {
		t.Errorf("last hook line on the stream %q", last)
	}
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}

// (c) An afterLease hook that ignores SIGTERM, under onFailure: exit. The timeout
// ladder ends it with SIGKILL (its children, which inherit the ignored SIGTERM, too);
// the board is taken out of service, the rest of the host goes on.
func TestHostileHookIgnoresSIGTERM(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := start(t, board.Config{Name: "evil",
		After: hookCfg(p.sh()+`trap '' TERM; rec $$; sleep 1000 & rec $!; echo 'JMP_INFO: stuck'; while :; do sleep 0.05; done`,
			jobs.PolicyExit, 300*time.Millisecond)}, otherBoard())
	job := h.startJob("evil")
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	p.await(t, 2)
	other := h.startJob("other") // while the hook is stuck
	evs := h.waitPhase(job, jobs.PhaseFailed)
	p.assertGone(t, 2)
	if tr := joined(evs, job); !strings.Contains(tr, "AFTER_LEASE>RELEASING[AFTER_LEASE_HOOK_FAILED]") || !strings.HasSuffix(tr, ">FAILED[OFFLINE]") {
		t.Errorf("transitions %s: want the exit policy applied", tr)
	}
	out := strings.Join(hookLines(evs, job, jobs.SourceAfterLeaseHook), "\n")
	for _, want := range []string{"INFO stuck", "ERROR boardvisor: hook timed out after 300ms, sending SIGTERM", "ERROR boardvisor: hook still running 200ms after SIGTERM, sent SIGKILL"} {
		if !strings.Contains(out, want) {
			t.Errorf("afterLease lines lack %q:\n%s", want, out)
		}
	}
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusOffline, jobs.HealthBad)
}

// (d) A hook that closes its stdout and stderr but keeps running, under onFailure: warn.
// It runs into its timeout; the lease goes on with a warning.
func TestHostileHookClosesStdout(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := start(t, board.Config{Name: "evil",
		Before: hookCfg(p.sh()+`echo 'JMP_INFO: closing'; exec >&- 2>&-; rec $$; sleep 1000 & rec $!; wait`, jobs.PolicyWarn, 300*time.Millisecond)}, otherBoard())
	job := h.startJob("evil")
	p.await(t, 2)
	other := h.startJob("other")
	evs := h.waitPhase(job, jobs.PhaseReady)
	p.assertGone(t, 2)
	if sys := strings.Join(hookLines(evs, job, jobs.SourceSystem), "|"); !strings.Contains(sys, "WARN beforeLease hook failed: timed out") {
		t.Errorf("system lines %q: want the warn policy's warning", sys)
	}
	if out := hookLines(evs, job, jobs.SourceBeforeLeaseHook); len(out) < 2 || out[0] != "INFO closing" || !strings.Contains(out[1], "hook timed out") {
		t.Errorf("hook lines %q", out)
	}
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}

// (e) A hook that starts a daemon the classic way (fork, setsid, fork again, close its
// descriptors) and exits 0. The daemon escaped the process group and was re-parented,
// but not out of the shim's reach: it is gone before the lease is READY.
func TestHostileHookSetsidDaemon(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := start(t, board.Config{Name: "evil",
		Before: hookCfg(p.sh()+`rec $$
( setsid sh -c "$RECORD; exec sleep 1000" </dev/null >/dev/null 2>&1 & )
await 2
echo 'JMP_INFO: daemon started'
exit 0`, jobs.PolicyEndLease, wait)}, otherBoard())
	job := h.startJob("evil")
	other := h.startJob("other")
	evs := h.waitPhase(job, jobs.PhaseReady)
	p.assertGone(t, 2)
	out := hookLines(evs, job, jobs.SourceBeforeLeaseHook)
	if len(out) != 2 || out[0] != "INFO daemon started" || !strings.HasPrefix(out[1], "WARN boardvisor: hook left ") {
		t.Errorf("hook lines %q: want the hook's line, then the shim's warning about what it left", out)
	}
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}

// (f) A hook that writes without end, to fill its spool's disk, under onFailure: warn.
// The shim keeps the first MaxOutput bytes, marks the truncation once, and drains the
// rest, so the hook is never blocked: it runs until its timeout. The spool stays within
// the bound.
func TestHostileHookFillsSpool(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	const bound = 32 << 10
	before := hookCfg(p.sh()+`rec $$; yes 'JMP_INFO: flood' & rec $!; wait`, jobs.PolicyWarn, 500*time.Millisecond)
	before.Spec.MaxOutput = bound
	h := start(t, board.Config{Name: "evil", Before: before}, otherBoard())
	job := h.startJob("evil")
	p.await(t, 2)
	other := h.startJob("other")
	evs := h.waitPhase(job, jobs.PhaseReady)
	p.assertGone(t, 2)
	var marks, kept int
	for _, l := range hookLines(evs, job, jobs.SourceBeforeLeaseHook) {
		switch {
		case l == "INFO flood":
			kept++
		case strings.Contains(l, "output truncated"):
			marks++
			if !strings.HasPrefix(l, fmt.Sprintf("WARN boardvisor: output truncated after %d bytes (the hook's output limit): ", bound)) ||
				!strings.HasSuffix(l, " lines dropped") {
				t.Errorf("marker %q", l)
			}
		}
	}
	if marks != 1 || kept < bound/len("JMP_INFO: flood\n")-1 {
		t.Errorf("%d marker lines and %d lines kept: want 1 marker after the bound's worth", marks, kept)
	}
	if sys := strings.Join(hookLines(evs, job, jobs.SourceSystem), "|"); !strings.Contains(sys, "WARN beforeLease hook failed: timed out") {
		t.Errorf("system lines %q", sys)
	}
	fi, err := os.Stat(filepath.Join(h.dir, "hooks", job, "beforeLease", "output"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > bound+1024 {
		t.Errorf("the spool holds %d bytes, bound %d", fi.Size(), bound)
	}
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}

// (g) A hook that exits 0 and leaves children behind in its process group, one of them
// holding its stdout: they are killed before the lease goes on, with a warning.
func TestHostileHookLeavesChildren(t *testing.T) {
	t.Parallel()
	p := newProcs(t)
	h := start(t, board.Config{Name: "evil",
		After: hookCfg(p.sh()+`rec $$; sleep 1000 & rec $!; sleep 1000 >/dev/null 2>&1 & rec $!; echo 'JMP_INFO: bye'; exit 0`, jobs.PolicyEndLease, wait)},
		otherBoard())
	job := h.startJob("evil")
	h.waitPhase(job, jobs.PhaseReady)
	other := h.startJob("other")
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	evs := h.waitPhase(job, jobs.PhaseDone)
	p.assertGone(t, 3)
	out := hookLines(evs, job, jobs.SourceAfterLeaseHook)
	if len(out) != 2 || out[0] != "INFO bye" || !strings.HasPrefix(out[1], "WARN boardvisor: hook left 2 process(es) behind") {
		t.Errorf("afterLease lines %q", out)
	}
	if tr := joined(evs, job); !strings.HasSuffix(tr, "AFTER_LEASE>RELEASING[AVAILABLE] RELEASING>DONE[AVAILABLE]") {
		t.Errorf("transitions %s: the hook succeeded", tr)
	}
	h.runOther(t, other)
	h.assertBoard(t, "evil", jobs.StatusAvailable, jobs.HealthGood)
}
