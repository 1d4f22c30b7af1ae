package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func wantCode(t *testing.T, err error, code codes.Code, substr string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), substr) || strings.Contains(st.Message(), "\n") {
		t.Fatalf("want %s containing %q (one line), got %v", code, substr, err)
	}
}

func TestCreateLeaseValidationAndUnsatisfiable(t *testing.T) {
	e := newEnv(t, "", Options{MaxDuration: 2 * time.Hour})
	_, err := e.create("device=rpi4", "", time.Hour, "x")
	wantCode(t, err, codes.FailedPrecondition, "no board matches device=rpi4: the coordinator knows no boards yet")

	e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("q1", "device", "qemu", "arch", "x86")}, supOpts{})
	_, err = e.create("device=rpi9", "", time.Hour, "x")
	wantCode(t, err, codes.FailedPrecondition, "no board matches device=rpi9; known boards: q1 (arch=x86,device=qemu), r1 (device=rpi4)")
	_, err = e.create("", "nope", time.Hour, "x")
	wantCode(t, err, codes.FailedPrecondition, "no board named nope; known boards:")
	_, err = e.create("device", "", time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, `invalid selector "device": term 1: "device" is not key=value`)
	_, err = e.create("device=rpi4,", "", time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, "empty term")
	_, err = e.create("device=rpi4", "r1", time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, "not both")
	_, err = e.create("", "", time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, "needs a selector")
	_, err = e.create("device=rpi4", "", 0, "x")
	wantCode(t, err, codes.InvalidArgument, "duration must be positive")
	_, err = e.create("device=rpi4", "", 3*time.Hour, "x")
	wantCode(t, err, codes.InvalidArgument, "exceeds the maximum of 2h0m0s")
	_, err = e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: "device=rpi4"})
	wantCode(t, err, codes.InvalidArgument, "duration is required")
	_, err = e.api.GetLease(e.ctx(), &pb.GetLeaseRequest{Id: "nope"})
	wantCode(t, err, codes.NotFound, "lease nope not found")
	_, err = e.api.ListBoards(e.ctx(), &pb.ListBoardsRequest{Selector: "a=b=c"})
	wantCode(t, err, codes.InvalidArgument, "invalid selector")
	_, err = e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "nope", On: true})
	wantCode(t, err, codes.NotFound, "board nope not found")

	r, err := e.api.ListBoards(e.ctx(), &pb.ListBoardsRequest{Selector: "device!=rpi4"})
	if err != nil || len(r.GetBoards()) != 1 || r.GetBoards()[0].GetName() != "q1" {
		t.Fatalf("ListBoards(device!=rpi4) = %v, %v", r, err)
	}
}

// An extension made while the supervisor's link is down reaches the supervisor when it
// says Hello again: its own bound moves to the coordinator's ends_at.
func TestExtensionWhileDisconnectedReachesSupervisor(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4")}
	f := e.dial("sup", boards, supOpts{})
	l := e.mustCreate("", "r1", time.Minute)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	f.waitAcked()
	if x := f.expectExtend(); x.GetRemaining().AsDuration() != time.Minute {
		t.Fatalf("after READY: %v, want ExtendJob with 1m remaining", x)
	}
	f.close()
	if _, err := e.api.ExtendLease(e.ctx(), &pb.ExtendLeaseRequest{Id: l.GetId(), By: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Second)
	f2 := e.dial("sup", boards, supOpts{lastAcked: f.seq, seq: f.seq,
		live: []*pb.LiveJob{{JobId: l.GetId(), Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY}}})
	if x := f2.expectExtend(); x.GetJobId() != l.GetId() || x.GetRemaining().AsDuration() != 2*time.Minute-10*time.Second {
		t.Fatalf("after Hello: %v, want ExtendJob with 1m50s remaining", x)
	}
	f2.expectNothing(100 * time.Millisecond)
}

func TestLeaseExpirySendsStopJob(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, StartBound: 5 * time.Minute})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}, supOpts{})

	l := e.mustCreate("", "r1", time.Minute)
	if l.GetEndsAt() != nil {
		t.Fatalf("a lease not READY says when it ends: %v", l)
	}
	sj := f.expectStart()
	// The supervisor's own bound from the start: the start bound, then the duration.
	// It carries the token's hash, not the token (the coordinator does not keep it).
	if sj.GetJobId() != l.GetId() || sj.GetDuration().AsDuration() != 6*time.Minute || sj.GetToken() != "" ||
		sj.GetTokenSha256() != jobs.TokenHash(l.GetToken()) || l.GetToken() == "" {
		t.Fatalf("StartJob %v for lease %v", sj, l)
	}
	clock.Advance(10 * time.Second) // READY comes 10s after the assignment
	f.toReady(l.GetId(), "r1")
	f.waitAcked()
	got := e.get(l.GetId())
	if got.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || !got.GetEndsAt().AsTime().Equal(clock.Now().Add(time.Minute)) {
		t.Fatalf("lease after READY: %v", got)
	}
	// The supervisor's own bound counts from the start, 10s ago: READY moves it to ends_at.
	if x := f.expectExtend(); x.GetJobId() != l.GetId() || x.GetRemaining().AsDuration() != time.Minute ||
		!x.GetEndsAt().AsTime().Equal(got.GetEndsAt().AsTime()) {
		t.Fatalf("after READY the supervisor got %v, want ExtendJob with 1m remaining, ending at %v", x, got.GetEndsAt().AsTime())
	}
	clock.Advance(59 * time.Second)
	f.expectNothing(100 * time.Millisecond)
	x, err := e.api.ExtendLease(e.ctx(), &pb.ExtendLeaseRequest{Id: l.GetId(), By: durationpb.New(time.Minute)})
	if err != nil || !x.GetLease().GetEndsAt().AsTime().Equal(clock.Now().Add(time.Minute+time.Second)) {
		t.Fatalf("ExtendLease: %v, %v", x, err)
	}
	// The supervisor bounds the lease too: it hears of the extension.
	if x := f.expectExtend(); x.GetJobId() != l.GetId() || x.GetRemaining().AsDuration() != time.Minute+time.Second ||
		!x.GetEndsAt().AsTime().Equal(clock.Now().Add(time.Minute+time.Second)) {
		t.Fatalf("after ExtendLease the supervisor got %v, want ExtendJob with 1m1s remaining", x)
	}
	clock.Advance(time.Minute)
	f.expectNothing(100 * time.Millisecond)
	clock.Advance(2 * time.Second)
	stop := f.expectStop()
	if stop.GetJobId() != l.GetId() || stop.GetReason() != "lease expired" {
		t.Fatalf("StopJob %v", stop)
	}
	if got := e.get(l.GetId()); !strings.Contains(got.GetStatusMessage(), "time is up") {
		t.Fatalf("lease after expiry: %v", got)
	}
	_, err = e.api.ExtendLease(e.ctx(), &pb.ExtendLeaseRequest{Id: l.GetId(), By: durationpb.New(time.Minute)})
	wantCode(t, err, codes.FailedPrecondition, "already ending")
	f.toDone(l.GetId(), "r1")
	f.waitAcked()
	if got := e.get(l.GetId()); got.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		t.Fatalf("lease: %v", got)
	}
	f.expectNothing(50 * time.Millisecond) // expiry is asked once, not on every tick

	// A lease that never becomes READY ends by the start bound from its assignment,
	// not by its duration.
	l2 := e.mustCreate("", "r2", time.Minute)
	f.expectStart()
	clock.Advance(61 * time.Second)
	f.expectNothing(100 * time.Millisecond)
	clock.Advance(4 * time.Minute)
	if stop := f.expectStop(); stop.GetJobId() != l2.GetId() || stop.GetReason() != "not READY within 5m0s of its assignment" {
		t.Fatalf("StopJob %v, want %s", stop, l2.GetId())
	}
}

func TestOfflineAfterGraceAndBack(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, Grace: 30 * time.Second})
	a := e.dial("sup-a", []*pb.BoardInfo{board("a1", "device", "rpi4")}, supOpts{})
	b := e.dial("sup-b", []*pb.BoardInfo{board("b1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	sj := a.expectStart()
	if sj.GetBoard() != "a1" {
		t.Fatalf("StartJob on %s, want a1 (both idle: by name)", sj.GetBoard())
	}
	a.toReady(l.GetId(), "a1")
	a.waitAcked()
	a.close()
	eventually(t, "disconnect recorded", func() bool { return !e.c.isConnected(t, "sup-a") })
	clock.Advance(20 * time.Second)
	if st := e.boards()["a1"].GetStatus(); st != jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY {
		t.Fatalf("a1 within grace: %s", st)
	}
	clock.Advance(11 * time.Second)
	bs := e.boards()
	if bs["a1"].GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE || bs["b1"].GetStatus() != jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE {
		t.Fatalf("after grace: a1 %s, b1 %s", bs["a1"].GetStatus(), bs["b1"].GetStatus())
	}
	eventually(t, "gone logged", func() bool { return strings.Contains(e.logs.String(), "gone longer than the grace period") })
	// Not reassigned behind the user's back.
	b.expectNothing(100 * time.Millisecond)
	if got := e.get(l.GetId()); got.GetBoard() != "a1" || got.GetQueued() || got.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease while its supervisor is gone: %v", got)
	}
	// A new lease goes to the board that is there.
	l2 := e.mustCreate("device=rpi4", "", time.Hour)
	if sj := b.expectStart(); sj.GetJobId() != l2.GetId() || sj.GetBoard() != "b1" {
		t.Fatalf("StartJob %v", sj)
	}
	// Back: the board shows what its supervisor says, the lease goes on.
	back := board("a1", "device", "rpi4")
	back.Status = jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY
	a2 := e.dial("sup-a", []*pb.BoardInfo{back}, supOpts{
		live: []*pb.LiveJob{{JobId: l.GetId(), Board: "a1", Phase: pb.LeasePhase_LEASE_PHASE_READY}}, lastAcked: 3, seq: 3})
	if a2.welcome.GetLastSeqSeen() != 3 {
		t.Fatalf("Welcome %v", a2.welcome)
	}
	if st := e.boards()["a1"].GetStatus(); st != jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY {
		t.Fatalf("a1 after reconnect: %s", st)
	}
	a2.expectNothing(100 * time.Millisecond)
	if got := e.get(l.GetId()); got.GetBoard() != "a1" || got.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease after reconnect: %v", got)
	}
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	e1 := newEnv(t, dir, Options{})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4"), board("q1", "device", "qemu")}
	f := e1.dial("sup", boards, supOpts{})
	l1 := e1.mustCreate("device=rpi4", "", time.Hour)
	f.expectStart()
	f.toReady(l1.GetId(), "r1")
	l2 := e1.mustCreate("device=rpi4", "", time.Hour) // queued behind l1
	l3 := e1.mustCreate("device=qemu", "", time.Hour)
	f.expectStart() // l3: accepted, no phase reported yet
	hookLine(f, l1.GetId(), "before restart")
	f.waitAcked()
	if _, err := e1.api.SetBoardMaintenance(e1.ctx(), &pb.SetBoardMaintenanceRequest{Board: "q1", On: true, Reason: "x"}); err != nil {
		t.Fatal(err)
	}
	sent := f.sent
	f.close()
	e1.stop()

	e2 := newEnv(t, dir, Options{})
	bs := e2.boards()
	if len(bs) != 2 || bs["q1"].GetHealth() != pb.BoardHealth_BOARD_HEALTH_MAINTENANCE || bs["r1"].GetCurrentLeaseId() != l1.GetId() {
		t.Fatalf("boards after restart: %v", bs)
	}
	if g := e2.get(l1.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetBoard() != "r1" {
		t.Fatalf("l1 after restart: %v", g)
	}
	if g := e2.get(l2.GetId()); !g.GetQueued() {
		t.Fatalf("l2 after restart: %v", g)
	}
	if g := e2.get(l3.GetId()); g.GetBoard() != "q1" || g.GetQueued() {
		t.Fatalf("l3 after restart: %v", g)
	}
	f2 := e2.dial("sup", boards, supOpts{lastAcked: uint64(len(sent)), seq: uint64(len(sent)), live: []*pb.LiveJob{
		{JobId: l1.GetId(), Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY},
		{JobId: l3.GetId(), Board: "q1", Phase: pb.LeasePhase_LEASE_PHASE_CREATED},
	}})
	if got := f2.welcome.GetLastSeqSeen(); got != uint64(len(sent)) {
		t.Fatalf("Welcome.last_seq_seen = %d, want %d", got, len(sent))
	}
	f2.sent = append([]*pb.Event(nil), sent...)
	f2.toDone(l1.GetId(), "r1")
	if sj := f2.expectStart(); sj.GetJobId() != l2.GetId() || sj.GetBoard() != "r1" {
		t.Fatalf("after l1 ended: %v, want StartJob of %s", sj, l2.GetId())
	}
	f2.waitAcked()
	checkEvents(t, e2.c, "sup", f2.sent)
	e2.c.mustMatchStore(t)
}

func TestReconcileOnHello(t *testing.T) {
	e := newEnv(t, "", Options{})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4"), board("r3", "device", "rpi4")}
	f := e.dial("sup", boards, supOpts{})
	lost := e.mustCreate("", "r1", time.Hour)
	f.expectStart() // the supervisor never got it, say
	ended := e.mustCreate("", "r2", time.Hour)
	f.expectStart()
	f.toReady(ended.GetId(), "r2")
	vanished := e.mustCreate("", "r3", time.Hour)
	f.expectStart()
	f.toReady(vanished.GetId(), "r3")
	f.waitAcked()
	seq := uint64(len(f.sent))
	f.close()

	const unknown = "11111111-2222-3333-4444-555555555555"
	f2 := e.dial("sup", boards, supOpts{lastAcked: seq, seq: seq, live: []*pb.LiveJob{
		{JobId: ended.GetId(), Board: "r2", Phase: pb.LeasePhase_LEASE_PHASE_DONE, Ended: true},
		{JobId: unknown, Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY},
	}})
	got := map[string]*pb.CoordinatorMessage{}
	for range 2 {
		m := f2.next()
		got[m.GetStartJob().GetJobId()+m.GetStopJob().GetJobId()] = m
	}
	if m := got[lost.GetId()]; m.GetStartJob() == nil || m.GetStartJob().GetTokenSha256() != jobs.TokenHash(lost.GetToken()) {
		t.Fatalf("want StartJob re-sent for %s, got %v", lost.GetId(), got)
	}
	if m := got[unknown]; m.GetStopJob() == nil {
		t.Fatalf("want StopJob for the unknown job, got %v", got)
	}
	if g := e.get(ended.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		t.Fatalf("lease that ended during the outage: %v", g)
	}
	if g := e.get(vanished.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_FAILED || !strings.Contains(g.GetStatusMessage(), "no longer holds") {
		t.Fatalf("lease its supervisor lost: %v", g)
	}
	f2.expectNothing(50 * time.Millisecond)

	// A transition of a job the coordinator never gave is answered with StopJob at once.
	f2.transition("99999999-2222-3333-4444-555555555555", "r2", pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_STARTING, 0)
	if s := f2.expectStop(); s.GetJobId() != "99999999-2222-3333-4444-555555555555" {
		t.Fatalf("StopJob %v", s)
	}
}

func TestPeriodicReconcile(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, ReconcileInterval: time.Minute})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}, supOpts{})
	quiet := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	stopping := e.mustCreate("", "r2", time.Hour)
	f.expectStart()
	f.toReady(stopping.GetId(), "r2")
	f.waitAcked()
	if _, err := e.api.ReleaseLease(e.ctx(), &pb.ReleaseLeaseRequest{Id: stopping.GetId()}); err != nil {
		t.Fatal(err)
	}
	if s := f.expectStop(); s.GetJobId() != stopping.GetId() || s.GetReason() != "released by the client" {
		t.Fatalf("StopJob %v", s)
	}
	clock.Advance(61 * time.Second)
	got := map[string]*pb.CoordinatorMessage{}
	for range 2 {
		m := f.next()
		got[m.GetStartJob().GetJobId()+m.GetStopJob().GetJobId()] = m
	}
	if got[quiet.GetId()].GetStartJob() == nil || got[stopping.GetId()].GetStopJob() == nil {
		t.Fatalf("periodic reconciliation sent %v", got)
	}
	// JobAlreadyExists for the repeated StartJob changes nothing.
	f.event(&pb.Event{Body: &pb.Event_Error{Error: &pb.JobErrorEvent{JobId: quiet.GetId(),
		Error: &pb.JobError{Kind: pb.JobErrorKind_JOB_ERROR_KIND_JOB_ALREADY_EXISTS, Description: "exists"}}}})
	f.waitAcked()
	if g := e.get(quiet.GetId()); g.GetBoard() != "r1" || g.GetQueued() || terminal(g.GetPhase()) {
		t.Fatalf("lease after JobAlreadyExists: %v", g)
	}
}

func TestMaintenanceBlocksAssignment(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	r, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "r1", On: true, Reason: "recabling"})
	if err != nil || r.GetBoard().GetHealth() != pb.BoardHealth_BOARD_HEALTH_MAINTENANCE {
		t.Fatalf("SetBoardMaintenance: %v, %v", r, err)
	}
	l := e.mustCreate("device=rpi4", "", time.Hour) // satisfiable later, so queued
	if !l.GetQueued() {
		t.Fatalf("lease on a board in maintenance: %v", l)
	}
	f.expectNothing(100 * time.Millisecond)
	if _, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "r1", On: false}); err != nil {
		t.Fatal(err)
	}
	if sj := f.expectStart(); sj.GetJobId() != l.GetId() {
		t.Fatalf("StartJob %v", sj)
	}
	f.toReady(l.GetId(), "r1")
	f.waitAcked()
	// A running lease goes on when its board goes into maintenance.
	if _, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "r1", On: true}); err != nil {
		t.Fatal(err)
	}
	f.expectNothing(100 * time.Millisecond)
	if g := e.get(l.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease: %v", g)
	}
	// An unhealthy board takes no lease either.
	f.toDone(l.GetId(), "r1")
	f.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "r1",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_BAD}}})
	f.waitAcked()
	if _, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "r1", On: false}); err != nil {
		t.Fatal(err)
	}
	l2 := e.mustCreate("device=rpi4", "", time.Hour)
	f.expectNothing(100 * time.Millisecond)
	f.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "r1",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_GOOD}}})
	if sj := f.expectStart(); sj.GetJobId() != l2.GetId() {
		t.Fatalf("StartJob %v", sj)
	}
}

func TestRefusalsAndJobErrors(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	if sj := f.expectStart(); sj.GetBoard() != "r1" {
		t.Fatalf("StartJob %v", sj)
	}
	jobError(f, l.GetId(), pb.JobErrorKind_JOB_ERROR_KIND_MAX_CONCURRENT_JOBS, "board r1 is busy")
	// Queued again; r1 holds off for a while, so r2 gets it.
	if sj := f.expectStart(); sj.GetJobId() != l.GetId() || sj.GetBoard() != "r2" {
		t.Fatalf("StartJob %v", sj)
	}
	jobError(f, l.GetId(), pb.JobErrorKind_JOB_ERROR_KIND_IMAGE_NOT_FOUND, "no image foo")
	if s := f.expectStop(); s.GetJobId() != l.GetId() {
		t.Fatalf("StopJob %v", s)
	}
	f.waitAcked()
	g := e.get(l.GetId())
	if g.GetPhase() != pb.LeasePhase_LEASE_PHASE_FAILED || !strings.Contains(g.GetStatusMessage(), "ImageNotFound: no image foo") {
		t.Fatalf("lease after a job error: %v", g)
	}
	// Releasing a queued lease cancels it; releasing again changes nothing.
	if _, err := e.api.SetBoardMaintenance(e.ctx(), &pb.SetBoardMaintenanceRequest{Board: "r2", On: true}); err != nil {
		t.Fatal(err)
	}
	q := e.mustCreate("", "r2", time.Hour)
	for range 2 {
		r, err := e.api.ReleaseLease(e.ctx(), &pb.ReleaseLeaseRequest{Id: q.GetId()})
		if err != nil || r.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE || r.GetLease().GetQueued() {
			t.Fatalf("ReleaseLease of a queued lease: %v, %v", r, err)
		}
	}
	f.expectNothing(50 * time.Millisecond)
	ls, err := e.api.ListLeases(e.ctx(), &pb.ListLeasesRequest{})
	if err != nil || len(ls.GetLeases()) != 0 {
		t.Fatalf("ListLeases without ended: %v, %v", ls, err)
	}
	ls, err = e.api.ListLeases(e.ctx(), &pb.ListLeasesRequest{IncludeEnded: true, Board: "r2"})
	if err != nil || len(ls.GetLeases()) != 2 {
		t.Fatalf("ListLeases of r2: %v, %v", ls, err)
	}
	for _, l := range ls.GetLeases() {
		if l.GetToken() != "" {
			t.Fatalf("ListLeases shows a token: %v", l)
		}
	}
}

func jobError(f *fakeSup, job string, kind pb.JobErrorKind, desc string) {
	f.event(&pb.Event{Body: &pb.Event_Error{Error: &pb.JobErrorEvent{JobId: job, Error: &pb.JobError{Kind: kind, Description: desc}}}})
}

func TestTokenNeverLogged(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now, ReconcileInterval: time.Minute})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	if len(l.GetToken()) != 64 {
		t.Fatalf("token %q: want 32 random bytes in hex", l.GetToken())
	}
	if g := e.get(l.GetId()); g.GetToken() != "" {
		t.Fatalf("GetLease shows the token")
	}
	f.expectStart()
	clock.Advance(61 * time.Second)
	f.expectStart() // periodic reconciliation sends it again
	f.close()
	f2 := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	f2.expectStart() // so does the reconciliation on Hello
	f2.transition(l.GetId(), "r1", pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_FAILED, 0)
	f2.waitAcked()
	logs := e.logs.String()
	if !strings.Contains(logs, l.GetId()) {
		t.Fatalf("the logs do not even name the lease:\n%s", logs)
	}
	if strings.Contains(logs, l.GetToken()) {
		t.Fatalf("the lease token is in the logs:\n%s", logs)
	}
}

func TestWatchLeaseEndsWithClientAndCoordinator(t *testing.T) {
	e := newEnv(t, "", Options{})
	e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := e.api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: l.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if first, err := stream.Recv(); err != nil || first.GetId() != l.GetId() || first.GetToken() != "" {
		t.Fatalf("first message %v, %v", first, err)
	}
	cancel()
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
	eventually(t, "watcher removed", func() bool {
		e.c.watchMu.Lock()
		defer e.c.watchMu.Unlock()
		return len(e.c.watchers) == 0
	})
	s, err := e.api.WatchLease(e.ctx(), &pb.WatchLeaseRequest{Id: "nope"})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.NotFound, "not found")

	stream, err = e.api.WatchLease(e.ctx(), &pb.WatchLeaseRequest{Id: l.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.Unavailable, "shutting down")
}

func TestSupervisorAuth(t *testing.T) {
	e := newEnv(t, "", Options{SupervisorAuth: link.StaticTokens(map[string]string{"s3cret": "sup"})})
	try := func(token string) error {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token), waitTimeout)
		defer cancel()
		s, err := pb.NewSupervisorLinkClient(e.conn).Connect(ctx)
		if err != nil {
			return err
		}
		// A refused stream may end before the Hello is sent (Send then says io.EOF):
		// its status comes with Recv.
		_ = s.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: &pb.Hello{SupervisorId: "sup"}}})
		_, err = s.Recv()
		return err
	}
	wantCode(t, try("wrong"), codes.Unauthenticated, "token not accepted")
	if err := try("s3cret"); err != nil {
		t.Fatalf("good token: %v", err)
	}
}
