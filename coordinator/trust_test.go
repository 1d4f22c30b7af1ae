package coordinator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// auditRecorder is an Auditor that keeps what it is told.
type auditRecorder struct {
	mu      sync.Mutex
	entries []string
}

func (a *auditRecorder) Refused(who, board, job, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.entries = append(a.entries, fmt.Sprintf("who=%s board=%s job=%s reason=%s", who, board, job, reason))
}

// has reports whether an entry contains every one of subs.
func (a *auditRecorder) has(subs ...string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, e := range a.entries {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(e, s)
		}
		if ok {
			return true
		}
	}
	return false
}

func (a *auditRecorder) String() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.entries, "\n")
}

var supTokens = map[string]string{"tok-a": "lab-a", "tok-evil": "evil"}

// TestHostileSupervisorCannotTakeLeases: a supervisor with a valid token lists a queued
// lease as live on its own free board, and on another supervisor's board, and reports
// transitions of another supervisor's lease: nothing is adopted or applied, each is
// audited, and it is told to stop the jobs. A lease really offered to a supervisor for a
// board (its StartJob looked refused) is still adopted there.
func TestHostileSupervisorCannotTakeLeases(t *testing.T) {
	audit := &auditRecorder{}
	e := newEnv(t, "", Options{SupervisorAuth: link.StaticTokens(supTokens), Audit: audit, RefusalHold: time.Hour})
	a := e.dial("lab-a", []*pb.BoardInfo{board("a1", "device", "rpi4"), board("a2", "device", "rpi4")}, supOpts{token: "tok-a"})
	held := e.mustCreate("", "a1", time.Hour)
	a.expectStart()
	a.toReady(held.GetId(), "a1")
	// A lease offered on a2, refused there as busy: queued again, a2 held off.
	offered := e.mustCreate("", "a2", time.Hour)
	a.expectStart()
	jobError(a, offered.GetId(), pb.JobErrorKind_JOB_ERROR_KIND_ALREADY_RUNNING, "busy")
	a.waitAcked()
	queued := e.mustCreate("device=rpi4", "", time.Hour)
	if !e.get(queued.GetId()).GetQueued() || !e.get(offered.GetId()).GetQueued() {
		t.Fatalf("want both leases queued: %v, %v", e.get(queued.GetId()), e.get(offered.GetId()))
	}

	// evil's e2 matches the queued lease, but says it is busy (so it is not assigned).
	e2 := board("e2", "device", "rpi4")
	e2.Status = jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY
	evil := e.dial("evil", []*pb.BoardInfo{board("e1", "device", "other"), e2}, supOpts{token: "tok-evil", live: []*pb.LiveJob{
		{JobId: queued.GetId(), Board: "e2", Phase: pb.LeasePhase_LEASE_PHASE_READY},
		{JobId: offered.GetId(), Board: "a2", Phase: pb.LeasePhase_LEASE_PHASE_READY},
		{JobId: held.GetId(), Board: "e1", Phase: pb.LeasePhase_LEASE_PHASE_READY},
	}})
	stops := map[string]bool{}
	for range 3 {
		stops[evil.expectStop().GetJobId()] = true
	}
	if !stops[queued.GetId()] || !stops[offered.GetId()] || !stops[held.GetId()] {
		t.Fatalf("the hostile supervisor was told to stop %v", stops)
	}
	evil.transition(held.GetId(), "a1", pb.LeasePhase_LEASE_PHASE_READY, pb.LeasePhase_LEASE_PHASE_DONE, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	evil.transition(held.GetId(), "e1", pb.LeasePhase_LEASE_PHASE_READY, pb.LeasePhase_LEASE_PHASE_DONE, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	evil.transition(queued.GetId(), "e2", pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, pb.LeasePhase_LEASE_PHASE_READY, jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY)
	evil.waitAcked()
	if g := e.get(queued.GetId()); !g.GetQueued() || g.GetBoard() != "" {
		t.Fatalf("the queued lease went to the hostile supervisor: %v", g)
	}
	if g := e.get(held.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetBoard() != "a1" {
		t.Fatalf("the hostile supervisor changed lab-a's lease: %v", g)
	}
	for _, want := range [][]string{
		{"who=evil", "queued lease " + queued.GetId(), `board "e2"`, "not offered to supervisor evil", "not adopted"},
		{"who=evil", "queued lease " + offered.GetId(), `board "a2"`, "not adopted"},
		{"who=evil", "lease " + held.GetId() + ", which supervisor lab-a holds"},
		{"who=evil", `about board "a1", which supervisor evil did not announce (served by "lab-a")`},
		{"who=evil", "event about lease " + held.GetId() + ", whose supervisor is lab-a"},
		{"who=evil", "event about lease " + queued.GetId() + ", whose supervisor is none (it is queued)"},
	} {
		if !audit.has(want...) {
			t.Errorf("not audited: %q\naudit:\n%s", want, audit)
		}
	}
	// lab-a, which was offered the lease on a2, runs it after all: adopted.
	seq := a.seq
	a.close()
	a2 := e.dial("lab-a", []*pb.BoardInfo{board("a1", "device", "rpi4"), board("a2", "device", "rpi4")}, supOpts{token: "tok-a",
		seq: seq, lastAcked: seq, live: []*pb.LiveJob{
			{JobId: held.GetId(), Board: "a1", Phase: pb.LeasePhase_LEASE_PHASE_READY},
			{JobId: offered.GetId(), Board: "a2", Phase: pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE},
		}})
	a2.expectNothing(100 * time.Millisecond)
	if g := e.get(offered.GetId()); g.GetQueued() || g.GetBoard() != "a2" {
		t.Fatalf("the lease offered on a2 was not adopted there: %v", g)
	}
	e.c.mustMatchStore(t)
}

// TestBoardNameSquattingRefused: while a board's supervisor restarts, another
// supervisor (with a valid token) announces the same board name: it is refused and
// audited, the board stays its owner's, and the next lease for it waits for the owner.
// An admin may move the name.
func TestBoardNameSquattingRefused(t *testing.T) {
	audit := &auditRecorder{}
	e := newEnv(t, "", Options{SupervisorAuth: link.StaticTokens(supTokens), Audit: audit})
	a := e.dial("lab-a", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{token: "tok-a"})
	a.close() // lab-a restarts
	eventually(t, "lab-a gone", func() bool { return !e.c.isConnected(t, "lab-a") })
	evil := e.dial("evil", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("e1", "device", "other")}, supOpts{token: "tok-evil"})
	if !audit.has("who=evil", "board=r1", "belongs to supervisor lab-a") {
		t.Fatalf("squatting not audited:\n%s", audit)
	}
	if b := e.boards()["r1"]; b.GetSupervisorId() != "lab-a" {
		t.Fatalf("r1 after the squat: %v", b)
	}
	l := e.mustCreate("", "r1", time.Hour)
	evil.expectNothing(100 * time.Millisecond)
	a2 := e.dial("lab-a", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{token: "tok-a"})
	if sj := a2.expectStart(); sj.GetJobId() != l.GetId() {
		t.Fatalf("StartJob %v, want the lease on r1 to reach its owner", sj)
	}
	// Moved by an admin (while it holds no lease), it is the other's.
	a2.toReady(l.GetId(), "r1")
	a2.toDone(l.GetId(), "r1")
	a2.waitAcked()
	if _, err := e.api.MoveBoard(e.ctx(), &pb.MoveBoardRequest{Board: "r1", ToSupervisorId: "evil"}); err != nil {
		t.Fatal(err)
	}
	evil.close()
	e.dial("evil", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{token: "tok-evil"})
	if b := e.boards()["r1"]; b.GetSupervisorId() != "evil" {
		t.Fatalf("r1 after MoveBoard: %v", b)
	}
	e.c.mustMatchStore(t)
}

// TestDuplicateSupervisorIDRefused: a second connection with the ID of a live
// supervisor is refused with AlreadyExists, naming both peers; the live one keeps its
// boards and its leases. A reconnect from the same run (same instance) replaces it.
func TestDuplicateSupervisorIDRefused(t *testing.T) {
	audit := &auditRecorder{}
	e := newEnv(t, "", Options{Audit: audit})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}
	live := e.dial("lab-a", boards, supOpts{instance: "run-1"})
	_, err := e.tryDial("lab-a", []*pb.BoardInfo{board("x9", "device", "qemu")}, supOpts{instance: "run-2"})
	st, _ := status.FromError(err)
	if st.Code() != codes.AlreadyExists || !strings.Contains(st.Message(), `supervisor ID "lab-a" is already connected from 127.0.0.1:`) ||
		!strings.Contains(st.Message(), "refused the connection from 127.0.0.1:") || !strings.Contains(st.Message(), "coordinator.supervisorId") {
		t.Fatalf("duplicate ID: %v", err)
	}
	if !audit.has("as supervisor lab-a, which is connected from") {
		t.Fatalf("not audited:\n%s", audit)
	}
	bs := e.boards()
	if len(bs) != 2 || bs["r1"].GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE || bs["x9"] != nil {
		t.Fatalf("boards after the refused duplicate: %v", bs)
	}
	l := e.mustCreate("device=rpi4", "", time.Hour)
	if sj := live.expectStart(); sj.GetJobId() != l.GetId() {
		t.Fatalf("the live supervisor did not get the lease: %v", sj)
	}
	// The same run reconnecting before the coordinator noticed: it takes over.
	again := e.dial("lab-a", boards, supOpts{instance: "run-1", live: []*pb.LiveJob{{JobId: l.GetId(), Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_STARTING}}})
	again.expectNothing(50 * time.Millisecond)
	if !e.c.isConnected(t, "lab-a") {
		t.Fatal("the reconnect of the same run was refused")
	}
}

// TestClientInputValidated: control characters in a client name, a job parameter or a
// reason are refused at the API edge with a clear error (and audited); the board takes
// no job from them.
func TestClientInputValidated(t *testing.T) {
	audit := &auditRecorder{}
	e := newEnv(t, "", Options{Audit: audit})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	_, err := e.create("device=rpi4", "", time.Hour, "al\x00ice")
	wantCode(t, err, codes.InvalidArgument, `client_name "al\x00ice" has the control character U+0000 at byte 2`)
	_, err = e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: "device=rpi4", Duration: durationpb.New(time.Hour),
		Parameters: map[string]string{"image": "x\x1b]0;owned\x07"}})
	wantCode(t, err, codes.InvalidArgument, "job parameter image")
	_, err = e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: "device=rpi4", Duration: durationpb.New(time.Hour),
		Parameters: map[string]string{"bad name": "x"}})
	wantCode(t, err, codes.InvalidArgument, `job parameter name "bad name" is not valid`)
	_, err = e.create("", "r\x1b1", time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, "not valid")
	f.expectNothing(100 * time.Millisecond)
	if !audit.has(`client_name "al\x00ice"`) {
		t.Fatalf("not audited:\n%s", audit)
	}
	l, err := e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: "device=rpi4", Duration: durationpb.New(time.Hour),
		ClientName: "alice", Parameters: map[string]string{"image": "debian-12.img"}})
	if err != nil {
		t.Fatal(err)
	}
	if sj := f.expectStart(); sj.GetParameters()["image"] != "debian-12.img" || sj.GetClientName() != "alice" {
		t.Fatalf("StartJob %v", sj)
	}
	_, err = e.api.ReleaseLease(e.ctx(), &pb.ReleaseLeaseRequest{Id: l.GetLease().GetId(), Reason: "done\r\nFAKE LINE"})
	wantCode(t, err, codes.InvalidArgument, "reason")
}

// TestCaps: queued leases per user, watch streams per user and in all, and only a
// lease's holder or an admin may watch it; every refusal audited, with a clear error.
func TestCaps(t *testing.T) {
	audit := &auditRecorder{}
	users := ClientTokens{"t-alice": {Name: "alice"}, "t-bob": {Name: "bob"}, "t-root": {Name: "root", Admin: true}}
	e := newEnv(t, "", Options{Audit: audit, ClientTokens: users, MaxQueuedPerUser: 3, MaxWatchesPerUser: 4, MaxWatches: 6})
	e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(e.ctx(), "authorization", "Bearer "+tok)
	}
	create := func(tok string) (*pb.Lease, error) {
		r, err := e.api.CreateLease(as(tok), &pb.CreateLeaseRequest{Selector: "device=rpi4", Duration: durationpb.New(time.Hour)})
		return r.GetLease(), err
	}
	first, err := create("t-alice") // takes r1
	if err != nil || first.GetQueued() {
		t.Fatalf("first lease: %v, %v", first, err)
	}
	for i := range 3 {
		if l, err := create("t-alice"); err != nil || !l.GetQueued() {
			t.Fatalf("queued lease %d: %v, %v", i, l, err)
		}
	}
	_, err = create("t-alice")
	wantCode(t, err, codes.ResourceExhausted, "alice already has 3 leases waiting in the queue, the most allowed")
	if _, err := create("t-bob"); err != nil {
		t.Fatalf("another user's lease: %v", err)
	}

	watch := func(tok, id string) error {
		s, err := e.api.WatchLease(as(tok), &pb.WatchLeaseRequest{Id: id})
		if err == nil {
			_, err = s.Recv()
		}
		return err
	}
	wantCode(t, watch("t-bob", first.GetId()), codes.PermissionDenied, "the lease belongs to alice; only its holder or an admin may watch it")
	ctx, cancel := context.WithCancel(as("t-alice"))
	defer cancel()
	for i := range 4 {
		s, err := e.api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: first.GetId()})
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			t.Fatalf("watch %d: %v", i, err)
		}
	}
	wantCode(t, watch("t-alice", first.GetId()), codes.ResourceExhausted, "user alice has 4 lease watches open, the most allowed per user")
	// root may watch alice's lease; the total cap (6) is reached at the second.
	rctx, rcancel := context.WithCancel(as("t-root"))
	defer rcancel()
	for i := range 2 {
		s, err := e.api.WatchLease(rctx, &pb.WatchLeaseRequest{Id: first.GetId()})
		if err == nil {
			_, err = s.Recv()
		}
		if err != nil {
			t.Fatalf("admin watch %d: %v", i, err)
		}
	}
	wantCode(t, watch("t-root", first.GetId()), codes.ResourceExhausted, "the coordinator serves 6 lease watches, its limit")
	cancel() // alice's watches end: room again
	eventually(t, "watches released", func() bool { return e.c.watchCount() <= 2 })
	wctx, wcancel := context.WithCancel(as("t-alice"))
	defer wcancel()
	if s, err := e.api.WatchLease(wctx, &pb.WatchLeaseRequest{Id: first.GetId()}); err != nil {
		t.Fatal(err)
	} else if _, err := s.Recv(); err != nil {
		t.Fatalf("a watch after the others closed: %v", err)
	}
	for _, want := range []string{"watch lease " + first.GetId() + " of alice", "alice has 3 leases queued", "has 4 lease watches open"} {
		if !audit.has(want) {
			t.Errorf("not audited: %q\n%s", want, audit)
		}
	}
}
