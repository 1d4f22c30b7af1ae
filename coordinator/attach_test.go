package coordinator

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

const testGrace = 200 * time.Millisecond

// busyEnv is a coordinator with one board, held by a READY lease (of 24h: it does not
// end whatever the test does with the clock).
func busyEnv(t *testing.T, dir string, opts Options) (*env, *fakeSup) {
	t.Helper()
	if opts.AttachGrace == 0 {
		opts.AttachGrace = testGrace
	}
	e := newEnv(t, dir, opts)
	sup := e.dial("lab-1", []*pb.BoardInfo{board("rpi4-01", "device", "rpi4")}, supOpts{})
	holder := e.mustCreate("", "rpi4-01", 24*time.Hour)
	sup.expectStart()
	sup.toReady(holder.GetId(), "rpi4-01")
	return e, sup
}

func (e *env) createAttached(board string) *pb.Lease {
	e.t.Helper()
	r, err := e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Board: board, Duration: durationpb.New(time.Hour), ClientName: "waiter", Attached: true})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.GetLease()
}

// attach holds a lease until the returned function is called.
func (e *env) attach(id string) (detach func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := e.api.AttachLease(ctx, &pb.AttachLeaseRequest{Id: id})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil { // the stream is open at the coordinator
		e.t.Fatal(err)
	}
	return cancel
}

func (e *env) withdrawn(id string) {
	e.t.Helper()
	eventually(e.t, "lease "+id+" withdrawn", func() bool { return e.get(id).GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE })
	if l := e.get(id); !strings.Contains(l.GetStatusMessage(), "its client went away") || l.GetBoard() != "" {
		e.t.Errorf("withdrawn lease: %q on board %q", l.GetStatusMessage(), l.GetBoard())
	}
}

func TestAttachedLeaseWithdrawnWhenItsClientGoes(t *testing.T) {
	e, _ := busyEnv(t, "", Options{})
	l := e.createAttached("rpi4-01")
	detach := e.attach(l.GetId())
	time.Sleep(3 * testGrace) // held: stays queued
	if !e.get(l.GetId()).GetQueued() {
		t.Fatal("a held lease left the queue")
	}
	detach()
	e.withdrawn(l.GetId())
}

// A client killed between CreateLease and AttachLease leaves nothing behind.
func TestAttachedLeaseNeverAttachedIsWithdrawn(t *testing.T) {
	e, _ := busyEnv(t, "", Options{})
	l := e.createAttached("rpi4-01")
	e.withdrawn(l.GetId())
}

// A client that reattaches within the grace (a reconnect) keeps its lease.
func TestReattachWithinGraceKeepsTheLease(t *testing.T) {
	// A grace long next to a reattach in the same process, even on a loaded machine.
	grace := 3 * time.Second
	e, _ := busyEnv(t, "", Options{AttachGrace: grace})
	l := e.createAttached("rpi4-01")
	for i := 0; i < 5; i++ {
		detach := e.attach(l.GetId())
		time.Sleep(50 * time.Millisecond)
		detach()
	}
	detach := e.attach(l.GetId())
	defer detach()
	time.Sleep(grace + time.Second)
	if !e.get(l.GetId()).GetQueued() {
		t.Fatalf("a lease reattached within its grace was withdrawn: %v", e.get(l.GetId()))
	}
}

// An attached lease that got a board but is not READY is released (its supervisor
// stops it); one that is READY is its session's and stays.
func TestAttachedLeaseReleasedBeforeReadyKeptAfter(t *testing.T) {
	e := newEnv(t, "", Options{AttachGrace: testGrace})
	sup := e.dial("lab-1", []*pb.BoardInfo{board("rpi4-01"), board("rpi4-02")}, supOpts{})
	starting := e.createAttached("rpi4-01")
	sup.expectStart()
	if stop := sup.expectStop(); stop.GetJobId() != starting.GetId() || !strings.Contains(stop.GetReason(), "client went away") {
		t.Fatalf("StopJob %v, want one for %s", stop, starting.GetId())
	}
	ready := e.createAttached("rpi4-02")
	detach := e.attach(ready.GetId())
	sup.expectStart()
	sup.toReady(ready.GetId(), "rpi4-02")
	eventually(t, "READY", func() bool { return e.get(ready.GetId()).GetPhase() == pb.LeasePhase_LEASE_PHASE_READY })
	detach()
	sup.expectNothing(3 * testGrace)
	if e.get(ready.GetId()).GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatal("a READY lease was ended when its client let go")
	}
}

// After a coordinator restart, an attached lease whose client does not come back is
// withdrawn (after the restart grace), and one whose client reattaches is kept.
func TestHoldsSurviveARestart(t *testing.T) {
	old := restartGrace
	restartGrace = 3 * time.Second // long next to a restart and a reattach, even on a loaded machine
	defer func() { restartGrace = old }()
	dir := t.TempDir()
	e, sup := busyEnv(t, dir, Options{})
	gone := e.createAttached("rpi4-01")
	back := e.createAttached("rpi4-01")
	detach := e.attach(gone.GetId())
	detachBack := e.attach(back.GetId())
	sup.close()
	e.stop()
	detach()
	detachBack()

	e2 := newEnv(t, dir, Options{AttachGrace: testGrace})
	defer e2.attach(back.GetId())()
	e2.withdrawn(gone.GetId())
	time.Sleep(restartGrace)
	if !e2.get(back.GetId()).GetQueued() {
		t.Fatalf("the reattached lease was withdrawn after the restart: %v", e2.get(back.GetId()))
	}
}

func TestDetachedLeaseBoundedByItsMaxWait(t *testing.T) {
	clock := newFakeClock()
	e, _ := busyEnv(t, "", Options{Now: clock.Now})
	r, err := e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Board: "rpi4-01", Duration: durationpb.New(time.Hour), MaxWait: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetLease().GetId()
	clock.Advance(59 * time.Minute)
	e.c.ops.holds.poke()
	time.Sleep(100 * time.Millisecond) // the holds' loop runs
	if !e.get(id).GetQueued() {
		t.Fatal("withdrawn before its max wait")
	}
	clock.Advance(2 * time.Minute)
	e.c.ops.holds.poke()
	eventually(t, "withdrawn after its max wait", func() bool { return e.get(id).GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE })
	if !strings.Contains(e.get(id).GetStatusMessage(), "maximum wait") {
		t.Errorf("status %q", e.get(id).GetStatusMessage())
	}
}

func TestTokensAddedRevokedAndReloaded(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "client-tokens")
	if err := os.WriteFile(file, []byte("# users\nroot tok-root admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := ReadClientTokens(file)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, "", Options{ClientTokens: users, ClientTokensFile: file})
	r, err := e.api.AddClientToken(e.ctx(), &pb.AddClientTokenRequest{User: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	tok := r.GetToken().GetToken()
	if u, ok := e.c.clientTokens().lookup(tok); !ok || u.Name != "bob" || u.Admin {
		t.Fatalf("bob's new token is not in force: %v %v", u, ok)
	}
	b, _ := os.ReadFile(file)
	if !strings.HasPrefix(string(b), "# users\nroot tok-root admin\nbob "+tok+"\n") {
		t.Fatalf("tokens file:\n%s", b)
	}
	list, err := e.api.ListClientTokens(e.ctx(), &pb.ListClientTokensRequest{})
	if err != nil || len(list.GetTokens()) != 2 || list.GetTokens()[0].GetUser() != "bob" || list.GetTokens()[0].GetToken() != "" ||
		list.GetTokens()[0].GetFingerprint() != Fingerprint(tok) {
		t.Fatalf("list: %v %v", list, err)
	}
	if _, err := e.api.RevokeClientToken(e.ctx(), &pb.RevokeClientTokenRequest{User: "root"}); err == nil {
		t.Fatal("the last admin's token was revoked")
	}
	if _, err := e.api.RevokeClientToken(e.ctx(), &pb.RevokeClientTokenRequest{User: "bob"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.c.clientTokens().lookup(tok); ok {
		t.Fatal("bob's revoked token is still in force")
	}
	// Edited by hand: reloaded; broken: the tokens in force stay.
	os.WriteFile(file, []byte("root tok-root admin\ncarol tok-carol\n"), 0o600)
	eventually(t, "the edited file in force", func() bool { _, ok := e.c.clientTokens().lookup("tok-carol"); return ok })
	os.WriteFile(file, []byte("root tok-root admin\ncarol\n"), 0o600)
	time.Sleep(1500 * time.Millisecond)
	if _, ok := e.c.clientTokens().lookup("tok-carol"); !ok || !strings.Contains(e.logs.String(), "does not read") {
		t.Fatal("a broken tokens file replaced the tokens in force, or was not reported")
	}
}
