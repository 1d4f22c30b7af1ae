package exporter

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/metadata"
)

// feed runs a lease through the real state machine (jobs.Lease) and feeds the service
// the events the supervisor would emit for it, in order: its SYSTEM log lines, its
// transitions, and the board's status after each (as the board actor reports it).
type feed struct {
	t     *testing.T
	s     *Service
	lease *jobs.Lease
	seq   uint64
}

func newFeed(t *testing.T, s *Service, job, token string, before, after jobs.Policy) *feed {
	spec := jobs.Spec{JobID: job, Board: "rpi", Duration: time.Hour,
		Before: &jobs.HookPolicy{Timeout: time.Minute, OnFailure: before},
		After:  &jobs.HookPolicy{Timeout: time.Minute, OnFailure: after}}
	if s.register(connector.StartJobRequest{JobID: job, Board: "rpi", Token: token}) == nil {
		t.Fatal("lease not registered")
	}
	f := &feed{t: t, s: s, lease: jobs.NewLease(spec)}
	f.step(jobs.Start())
	f.step(jobs.BoardAcquired())
	return f
}

func (f *feed) step(in jobs.Input) {
	f.t.Helper()
	d, err := f.lease.Step(in)
	if err != nil {
		f.t.Fatal(err)
	}
	job := f.lease.Spec.JobID
	for _, e := range d.Effects {
		f.seq++
		switch e.Kind {
		case jobs.EffLog:
			f.s.Sink(connector.Event{Seq: f.seq, Board: "rpi", JobID: job, Hook: &connector.HookLine{Source: jobs.SourceSystem, Severity: e.Severity, Text: e.Message}})
		case jobs.EffReport:
			f.s.Sink(connector.Event{Seq: f.seq, Board: "rpi", JobID: job, Transition: &jobs.Transition{From: e.From, To: e.To, Status: e.Status, Message: e.Message}})
			holder := job
			if e.To.Terminal() {
				holder = "" // released: the board's status is its own again
			}
			f.seq++
			f.s.Sink(connector.Event{Seq: f.seq, Board: "rpi", JobID: holder, BoardStatus: &connector.BoardStatus{Status: e.Status}})
		}
	}
}

func boardCtx(board string, kv ...string) context.Context {
	return metadata.NewIncomingContext(context.Background(), metadata.Pairs(append([]string{MDBoard, board}, kv...)...))
}

func getStatus(t *testing.T, s *Service, ctx context.Context) *jpb.GetStatusResponse {
	t.Helper()
	r, err := s.GetStatus(ctx, &jpb.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Upstream's exporter (exporter/hooks.py run_before_lease_hook / run_after_lease_hook)
// reports a failed hook's status and sleeps a second before it releases the lease,
// so that a client polling every 0.3 s (client/status_monitor.py) sees it. Here the
// state machine goes on at once; what clients are shown holds the failure.
func TestFailedHookStatusIsHeldForPollers(t *testing.T) {
	for _, k := range []jobs.HookKind{jobs.HookBefore, jobs.HookAfter} {
		t.Run(k.String(), func(t *testing.T) {
			s := New(map[string]map[string]string{"rpi": nil}, nil, nil)
			s.FailedStatusHold = 3 * time.Second
			f := newFeed(t, s, "j1", "tok", jobs.PolicyEndLease, jobs.PolicyEndLease)
			if k == jobs.HookAfter {
				f.step(jobs.HookExited(jobs.HookBefore, true, ""))
				f.step(jobs.EndRequested(jobs.EndClient))
			}
			f.step(jobs.HookExited(k, false, "exit status 3"))
			f.step(jobs.Released())
			if !f.lease.Phase().Terminal() {
				t.Fatalf("lease in %s, want it over", f.lease.Phase())
			}
			want, msg := jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, "beforeLease hook failed (on_failure=endLease): exit status 3"
			if k == jobs.HookAfter {
				want, msg = jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED, "afterLease hook failed (on_failure=endLease): exit status 3"
			}
			// A poller with no token (the board's view): the lease is over, the board
			// AVAILABLE, and yet the failure is what it is shown.
			r := getStatus(t, s, boardCtx("rpi"))
			if r.GetStatus() != want || r.GetMessage() != msg {
				t.Fatalf("right after the failure: %v %q, want %v %q", r.GetStatus(), r.GetMessage(), want, msg)
			}
			// Then the board's next status, with its own version and the failure before it.
			deadline := time.Now().Add(30 * time.Second)
			for r.GetStatus() == want && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
				r = getStatus(t, s, boardCtx("rpi"))
			}
			if r.GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE || r.GetPreviousStatus() != want || r.GetMessage() != "Available for new lease" {
				t.Fatalf("after the hold: %v", r)
			}
			// The lease's token still reads its final status: the failure.
			if r := getStatus(t, s, boardCtx("rpi", "authorization", "Bearer tok")); r.GetStatus() != want || r.GetMessage() != msg {
				t.Fatalf("the ended lease's final status: %v", r)
			}
		})
	}
}

// The status messages are upstream's wording (exporter/hooks.py), a warn-policy
// failure included (HOOK_WARNING_PREFIX, which upstream's jmp shell prints).
func TestStatusMessagesInUpstreamWords(t *testing.T) {
	s := New(map[string]map[string]string{"rpi": nil}, nil, nil)
	f := newFeed(t, s, "j1", "tok", jobs.PolicyWarn, jobs.PolicyWarn)
	if m := getStatus(t, s, boardCtx("rpi")).GetMessage(); m != "Running beforeLease hook" {
		t.Fatalf("during beforeLease: %q", m)
	}
	f.step(jobs.HookExited(jobs.HookBefore, false, "exit status 2"))
	if m := getStatus(t, s, boardCtx("rpi")).GetMessage(); m != "[HOOK_WARNING] beforeLease hook warning: exit status 2" {
		t.Fatalf("ready after a warning: %q", m)
	}
	f.step(jobs.EndRequested(jobs.EndClient))
	if m := getStatus(t, s, boardCtx("rpi")).GetMessage(); m != "Running afterLease hooks" {
		t.Fatalf("during afterLease: %q", m)
	}
	f.step(jobs.HookExited(jobs.HookAfter, false, "timed out"))
	f.step(jobs.Released())
	if m := getStatus(t, s, boardCtx("rpi")).GetMessage(); m != "[HOOK_WARNING] afterLease hook warning: timed out" {
		t.Fatalf("available after a warning: %q", m)
	}
}

// An ended lease's log is readable with its token for the grace period, then not;
// and the ended leases kept are bounded in number, the oldest forgotten first.
func TestEndedLeaseGraceAndBounds(t *testing.T) {
	s := New(map[string]map[string]string{"rpi": nil}, nil, nil)
	s.Limits.MaxEndedLeases = 2
	for _, job := range []string{"j1", "j2", "j3"} {
		f := newFeed(t, s, job, "tok-"+job, jobs.PolicyEndLease, jobs.PolicyEndLease)
		f.step(jobs.HookExited(jobs.HookBefore, true, ""))
		f.step(jobs.EndRequested(jobs.EndClient))
		f.step(jobs.HookExited(jobs.HookAfter, true, ""))
		f.step(jobs.Released())
	}
	readable := func(job string) bool {
		l, err := s.lease(boardCtx("rpi", "authorization", "Bearer tok-"+job), true)
		return err == nil && l.job == job
	}
	if readable("j1") || !readable("j2") || !readable("j3") {
		t.Fatalf("kept: j1 %v j2 %v j3 %v, want the two last", readable("j1"), readable("j2"), readable("j3"))
	}
	if _, err := s.lease(boardCtx("rpi", "authorization", "Bearer tok-j3"), false); err == nil {
		t.Fatal("an ended lease's token acts as a live lease's")
	}
	s.LogGrace = time.Nanosecond
	time.Sleep(time.Millisecond)
	if readable("j3") {
		t.Fatal("readable past its grace period")
	}
}

// The driver tree's UUIDs are derived: fixed values for a board and driver, in every
// process (a restart keeps them), and different across boards and drivers.
func TestDriverUUIDsAreStable(t *testing.T) {
	// Fixed values: a change here breaks every upstream client's cached tree and script.
	if got := DriverUUID("rpi4-01", "power"); got != "142b04f0-36b5-51fe-b57f-b28f5ee15292" {
		t.Fatalf("DriverUUID(rpi4-01, power) = %s: the derivation changed", got)
	}
	seen := map[string]bool{}
	for _, b := range []string{"rpi", "rpi4-01", "a"} {
		for _, id := range []string{BoardUUID(b), DriverUUID(b, "root"), DriverUUID(b, "power"), DriverUUID(b, "console")} {
			if seen[id] {
				t.Fatalf("UUID %s twice", id)
			}
			seen[id] = true
		}
	}
}

// What a hook leaves at $JMP_MOTD_FILE is untrusted: a FIFO never blocks the service, a
// symbolic link is not followed, and a huge file is cut.
func TestMotdFromAHostileHook(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := readMotd(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reading a FIFO motd blocked")
	}
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("the daemon's secret"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(secret, link)
	if m, err := readMotd(link); err == nil || m != "" {
		t.Fatalf("symbolic link followed: %q %v", m, err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, []byte(strings.Repeat("x", 10*MaxMotdBytes)), 0o600)
	if m, err := readMotd(big); err != nil || len(m) != MaxMotdBytes {
		t.Fatalf("big motd: %d bytes, %v", len(m), err)
	}
	if m, err := readMotd(filepath.Join(dir, "absent")); m != "" || err != nil {
		t.Fatalf("absent motd: %q %v", m, err)
	}
}

// The GetReport tree: a composite root, then its children naming it as parent, each
// naming upstream's client class and its name in the tree.
func TestReportIsUpstreamsTree(t *testing.T) {
	s := New(map[string]map[string]string{"rpi": {"device": "rpi4"}}, nil, nil)
	r, err := s.GetReport(boardCtx("rpi"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.GetUuid() != BoardUUID("rpi") || r.GetLabels()["device"] != "rpi4" || len(r.GetReports()) != 3 {
		t.Fatalf("report: %v", r)
	}
	root := r.GetReports()[0]
	if root.ParentUuid != nil || root.GetLabels()[LabelClient] != ClientComposite {
		t.Fatalf("root: %v", root)
	}
	names := map[string]string{}
	for _, c := range r.GetReports()[1:] {
		if c.GetParentUuid() != root.GetUuid() {
			t.Fatalf("child %v does not name the root as parent", c)
		}
		names[c.GetLabels()[LabelName]] = c.GetLabels()[LabelClient]
	}
	if names[TreePower] != ClientPower || names[TreeSerial] != ClientSerial {
		t.Fatalf("children: %v", names)
	}
}

func TestParseVerdict(t *testing.T) {
	for in, want := range map[string]string{
		"beforeLease hook failed: exit status 3 (onFailure: endLease)":          "beforeLease|exit status 3|endLease",
		"afterLease hook failed: x (y) (onFailure: warn, going on)":             "afterLease|x (y)|warn",
		"beforeLease hook failed: exit status 3":                                "",
		"lease READY: ready":                                                    "",
		"afterLease hook failed: (onFailure: exit)":                             "",
		"afterLease hook failed: timed out (onFailure: exit) (onFailure: exit)": "afterLease|timed out (onFailure: exit)|exit",
	} {
		v, ok := parseVerdict(in)
		got := ""
		if ok {
			got = v.kind.String() + "|" + v.reason + "|" + v.policy
		}
		if got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
