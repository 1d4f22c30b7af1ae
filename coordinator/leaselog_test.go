package coordinator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// logReader reads a LeaseLog stream in the background, so that a test can wait for
// entries with a bound.
type logFollower struct {
	t       *testing.T
	cancel  context.CancelFunc
	entries chan *pb.LeaseLogEntry
	err     chan error
}

func followLog(t *testing.T, api pb.LeaseServiceClient, ctx context.Context, req *pb.LeaseLogRequest) *logFollower {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	s, err := api.LeaseLog(ctx, req)
	if err != nil {
		cancel()
		t.Fatalf("LeaseLog: %v", err)
	}
	f := &logFollower{t: t, cancel: cancel, entries: make(chan *pb.LeaseLogEntry, 10000), err: make(chan error, 1)}
	go func() {
		for {
			e, err := s.Recv()
			if err != nil {
				f.err <- err
				close(f.entries)
				return
			}
			f.entries <- e
		}
	}()
	t.Cleanup(cancel)
	return f
}

// next returns the next entry; nil once the stream ended (its error in f.end()).
func (f *logFollower) next() *pb.LeaseLogEntry {
	f.t.Helper()
	select {
	case e := <-f.entries:
		return e
	case <-time.After(waitTimeout):
		f.t.Fatal("no lease log entry within the bound")
		return nil
	}
}

// nothing checks that no entry arrives for d.
func (f *logFollower) nothing(d time.Duration) {
	f.t.Helper()
	select {
	case e, ok := <-f.entries:
		if ok {
			f.t.Fatalf("want no entry yet, got %v", e)
		}
	case <-time.After(d):
	}
}

// rest reads every entry until the stream ends and returns them with its end (nil for
// a stream that ended normally).
func (f *logFollower) rest() ([]*pb.LeaseLogEntry, error) {
	f.t.Helper()
	var out []*pb.LeaseLogEntry
	for {
		select {
		case e, ok := <-f.entries:
			if !ok {
				err := <-f.err
				if errors.Is(err, io.EOF) {
					err = nil
				}
				return out, err
			}
			out = append(out, e)
		case <-time.After(waitTimeout):
			f.t.Fatalf("lease log did not end; got %d entries", len(out))
		}
	}
}

// describe renders an entry for comparisons: "phase READY", "line text", ...
func describe(e *pb.LeaseLogEntry) string {
	switch b := e.GetBody().(type) {
	case *pb.LeaseLogEntry_Phase:
		return "phase " + phaseName(b.Phase.GetTo())
	case *pb.LeaseLogEntry_HookLine:
		return "line " + b.HookLine.GetText()
	case *pb.LeaseLogEntry_Error:
		return "error " + b.Error.GetDescription()
	case *pb.LeaseLogEntry_Console:
		return "console " + string(b.Console)
	case *pb.LeaseLogEntry_ConsoleGap:
		return fmt.Sprintf("gap %d", b.ConsoleGap)
	case *pb.LeaseLogEntry_End:
		return "end " + phaseName(b.End.GetPhase()) + " by " + b.End.GetEndedBy() + ": " + b.End.GetReason()
	}
	return "?"
}

func describeAll(es []*pb.LeaseLogEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, describe(e))
	}
	return out
}

// A follower started mid-lease gets the stored entries once, then the later ones live
// (woken by the event path), then the end; one that reconnects with the last position
// it got misses and repeats nothing, and a replay of events by the supervisor doubles
// nothing either.
func TestLeaseLogFollowLiveAndResume(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	hookLine(f, l.GetId(), "early 1")
	hookLine(f, l.GetId(), "early 2")
	f.waitAcked()

	fl := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), Follow: true})
	var got []*pb.LeaseLogEntry
	for range 5 { // STARTING, BEFORE_LEASE, READY, 2 lines
		got = append(got, fl.next())
	}
	want := []string{"phase STARTING", "phase BEFORE_LEASE", "phase READY", "line early 1", "line early 2"}
	if d := describeAll(got); strings.Join(d, "|") != strings.Join(want, "|") {
		t.Fatalf("stored part: %q, want %q", d, want)
	}
	fl.nothing(100 * time.Millisecond)
	hookLine(f, l.GetId(), "live 1")
	if d := describe(fl.next()); d != "line live 1" {
		t.Fatalf("live entry %q, want line live 1", d)
	}
	last := got[len(got)-1].GetPosition()
	fl.cancel() // the reader goes away after "early 2" as far as it knows

	hookLine(f, l.GetId(), "live 2")
	// A replay of events already stored (a reconnecting supervisor) changes nothing.
	f.sendRaw(f.sent[len(f.sent)-2])
	f.waitAcked()
	again := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), After: last, Follow: true})
	for _, w := range []string{"line live 1", "line live 2"} {
		if d := describe(again.next()); d != w {
			t.Fatalf("after reconnecting: %q, want %q", d, w)
		}
	}
	f.toDone(l.GetId(), "r1")
	rest, err := again.rest()
	if err != nil {
		t.Fatalf("stream ended with %v, want its normal end", err)
	}
	want = []string{"phase ENDING", "phase AFTER_LEASE", "phase RELEASING", "phase DONE", "end DONE by supervisor: now DONE"}
	if d := describeAll(rest); strings.Join(d, "|") != strings.Join(want, "|") {
		t.Fatalf("end of the log: %q, want %q", d, want)
	}
	// The whole log, read at once after the end, is the same sequence with strictly
	// growing positions.
	all, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId()}).rest()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(all); n != 3+4+4+1 {
		t.Fatalf("whole log: %d entries %q", n, describeAll(all))
	}
	seen := map[string]bool{}
	for _, en := range all[:len(all)-1] {
		if seen[en.GetPosition()] || en.GetPosition() == "" {
			t.Fatalf("position %q repeated or empty", en.GetPosition())
		}
		seen[en.GetPosition()] = true
	}
	// From the last position: only the end.
	tail, _ := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), After: all[len(all)-2].GetPosition()}).rest()
	if d := describeAll(tail); len(d) != 1 || !strings.HasPrefix(d[0], "end DONE") {
		t.Fatalf("after the last position: %q, want only the end", d)
	}
}

// Console bytes come only when asked for; an event about another board, sent by the
// lease's supervisor, is never part of the log.
func TestLeaseLogConsoleOnRequestAndForeignEventsLeftOut(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	f.event(&pb.Event{Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{JobId: l.GetId(), Board: "r1", Data: []byte("boot\x00\xff")}}})
	f.event(&pb.Event{Body: &pb.Event_ConsoleGap{ConsoleGap: &pb.ConsoleGap{JobId: l.GetId(), Board: "r1", Bytes: 7}}})
	f.event(&pb.Event{Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: l.GetId(), Board: "r2", Text: "forged"}}})
	f.toDone(l.GetId(), "r1")
	f.waitAcked()
	plain, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId()}).rest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range describeAll(plain) {
		if strings.HasPrefix(d, "console") || strings.HasPrefix(d, "gap") || strings.Contains(d, "forged") {
			t.Fatalf("log without console holds %q", d)
		}
	}
	con, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), Console: true}).rest()
	if err != nil {
		t.Fatal(err)
	}
	d := strings.Join(describeAll(con), "|")
	if !strings.Contains(d, "phase READY|console boot\x00\xff|gap 7|phase ENDING") || strings.Contains(d, "forged") {
		t.Fatalf("log with console: %q", d)
	}
}

// recordingAudit records refusals.
type recordingAudit struct {
	mu   sync.Mutex
	seen []string
}

func (a *recordingAudit) Refused(who, board, job, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, fmt.Sprintf("%s|%s|%s|%s", who, board, job, reason))
}

func (a *recordingAudit) all() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.seen, "\n")
}

// authAPI serves e's coordinator a second time with its client authentication (the
// interceptors of ServerOptions) and returns a client of that server.
func authAPI(t *testing.T, e *env) pb.LeaseServiceClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(e.c.ServerOptions()...)
	pb.RegisterLeaseServiceServer(srv, e.c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewLeaseServiceClient(conn)
}

func asUser(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// Only the lease's holder and admins read its log; a refusal is audited. The end says
// which user released the lease. Streams are capped per user and in all.
func TestLeaseLogAccessAndCaps(t *testing.T) {
	audit := &recordingAudit{}
	users := ClientTokens{"tok-alice": {Name: "alice"}, "tok-bob": {Name: "bob"}, "tok-root": {Name: "root", Admin: true}}
	e := newEnv(t, "", Options{ClientTokens: users, Audit: audit, LeaseLogs: LeaseLogOptions{MaxStreamsPerUser: 2, MaxStreams: 3}})
	api := authAPI(t, e)
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	r, err := api.CreateLease(asUser(e.ctx(), "tok-alice"), &pb.CreateLeaseRequest{Board: "r1", Duration: durationProto(int64(time.Hour))})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetLease().GetId()
	f.expectStart()
	f.toReady(id, "r1")
	f.waitAcked()

	s, err := api.LeaseLog(asUser(e.ctx(), "tok-bob"), &pb.LeaseLogRequest{LeaseId: id})
	if err == nil {
		_, err = s.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "only its holder or an admin may read its log")
	if a := audit.all(); !strings.Contains(a, "bob at ") || !strings.Contains(a, "|r1|"+id+"|read the log of a lease held by alice (LeaseLog)") {
		t.Fatalf("refusal not audited: %q", a)
	}
	_, err = api.LeaseLog(asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id, After: "not-a-position"})
	if err == nil {
		s, _ := api.LeaseLog(asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id, After: "not-a-position"})
		_, err = s.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "not a position of a lease log")

	// Caps: alice may follow twice; a third is refused; the admin's stream makes the
	// total 3; then nobody gets one, until one goes.
	a1 := followLog(t, api, asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id, Follow: true})
	a2 := followLog(t, api, asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id, Follow: true})
	a1.next()
	a2.next()
	_, err = followLog(t, api, asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id, Follow: true}).rest()
	wantCode(t, err, codes.ResourceExhausted, "alice already reads 2 lease logs")
	root := followLog(t, api, asUser(e.ctx(), "tok-root"), &pb.LeaseLogRequest{LeaseId: id, Follow: true})
	if d := describe(root.next()); d != "phase STARTING" {
		t.Fatalf("admin's log starts with %q", d)
	}
	_, err = followLog(t, api, asUser(e.ctx(), "tok-root"), &pb.LeaseLogRequest{LeaseId: id, Follow: true}).rest()
	wantCode(t, err, codes.ResourceExhausted, "serves 3 lease logs at once")
	a1.cancel()
	eventually(t, "a stream freed", func() bool {
		s, err := api.LeaseLog(asUser(e.ctx(), "tok-alice"), &pb.LeaseLogRequest{LeaseId: id})
		if err != nil {
			return false
		}
		_, err = s.Recv()
		return err == nil
	})
	if !strings.Contains(audit.all(), "already reads 2 lease logs") {
		t.Fatalf("cap refusal not audited: %q", audit.all())
	}

	// The admin releases alice's lease: the end says so.
	if _, err := api.ReleaseLease(asUser(e.ctx(), "tok-root"), &pb.ReleaseLeaseRequest{Id: id, Reason: "cable swap"}); err != nil {
		t.Fatal(err)
	}
	f.expectStop()
	f.toDone(id, "r1")
	rest, err := root.rest()
	if err != nil || len(rest) == 0 || describe(rest[len(rest)-1]) != "end DONE by root: cable swap" {
		t.Fatalf("admin's stream ended with %q, %v", describeAll(rest), err)
	}
}

// How a lease ended, as its log's end says it.
func TestLeaseLogEndSaysWhoEndedIt(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	ended := func(id string) string {
		t.Helper()
		es, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: id, Follow: true}).rest()
		if err != nil || len(es) == 0 {
			t.Fatalf("log of %s: %q %v", id, describeAll(es), err)
		}
		return describe(es[len(es)-1])
	}
	// Released without client authentication.
	l := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	e.api.ReleaseLease(e.ctx(), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "released by alice"})
	f.expectStop()
	f.toDone(l.GetId(), "r1")
	if got := ended(l.GetId()); got != "end DONE by client: released by alice" {
		t.Fatalf("released lease: %q", got)
	}
	// Ended by its holder at the supervisor (EndSession).
	l = e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	f.event(&pb.Event{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: l.GetId(), Board: "r1",
		From: pb.LeasePhase_LEASE_PHASE_READY, To: pb.LeasePhase_LEASE_PHASE_ENDING, StatusMessage: "lease ending: requested by the client"}}})
	f.transition(l.GetId(), "r1", pb.LeasePhase_LEASE_PHASE_ENDING, pb.LeasePhase_LEASE_PHASE_DONE, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	if got := ended(l.GetId()); got != "end DONE by tester: ended the session at the board's supervisor" {
		t.Fatalf("session ended: %q", got)
	}
	// Failed at the supervisor.
	l = e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	f.event(&pb.Event{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: l.GetId(), Board: "r1",
		From: pb.LeasePhase_LEASE_PHASE_READY, To: pb.LeasePhase_LEASE_PHASE_ENDING, StatusMessage: "lease ending: console driver failed"}}})
	f.transition(l.GetId(), "r1", pb.LeasePhase_LEASE_PHASE_ENDING, pb.LeasePhase_LEASE_PHASE_FAILED, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	if got := ended(l.GetId()); got != "end FAILED by supervisor: console driver failed" {
		t.Fatalf("failed lease: %q", got)
	}
	// A queued lease released before a board was assigned: an end and nothing else.
	e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	q := e.mustCreate("", "r1", time.Hour)
	if _, err := e.api.ReleaseLease(e.ctx(), &pb.ReleaseLeaseRequest{Id: q.GetId(), Reason: "changed my mind"}); err != nil {
		t.Fatal(err)
	}
	if got := ended(q.GetId()); got != "end DONE by client: cancelled before a board was assigned: changed my mind" {
		t.Fatalf("cancelled queued lease: %q", got)
	}
}

// A follower of a lease whose events are stored is woken by the event path only: with
// the notification removed it would wait for ever (this test would fail), since
// nothing polls.
func TestLeaseLogWokenByTheEventPathOnly(t *testing.T) {
	e := newEnv(t, "", Options{LeaseLogs: LeaseLogOptions{Coalesce: time.Millisecond}})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l.GetId(), "r1")
	f.waitAcked()
	fl := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), Follow: true})
	for range 3 {
		fl.next()
	}
	// A flood: every line reaches the follower once, in order, in far fewer reads than
	// lines (ReadBatch and Coalesce).
	const n = 500
	for i := range n {
		hookLine(f, l.GetId(), fmt.Sprintf("flood %d", i))
	}
	for i := range n {
		if d, w := describe(fl.next()), fmt.Sprintf("line flood %d", i); d != w {
			t.Fatalf("entry %d: %q, want %q", i, d, w)
		}
	}
}

func FuzzDecodeLogPos(f *testing.F) {
	for _, p := range []logPos{{sup: "lab-1", seq: 1}, {sup: "lab-1", seq: 1 << 40}, {sup: "ü", seq: 127}} {
		f.Add(p.encode())
	}
	f.Add("")
	f.Add("AQE")
	f.Add("AYCAgICAgICAgIABbGFi")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := decodeLogPos(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q", s)
			}
			return
		}
		if got := p.encode(); got != s {
			t.Fatalf("decode(%q) = %+v, which encodes as %q: two encodings of one position", s, p, got)
		}
		if s != "" && (p.seq <= 0 || p.sup == "") {
			t.Fatalf("decode(%q) = %+v: not a position", s, p)
		}
		again, err := decodeLogPos(p.encode())
		if err != nil || again != p {
			t.Fatalf("round trip of %+v: %+v, %v", p, again, err)
		}
	})
}

func TestLogPosRoundTrip(t *testing.T) {
	for _, p := range []logPos{{sup: "a", seq: 1}, {sup: "lab-1", seq: 1<<63 - 1}, {sup: strings.Repeat("x", maxPosSupervisor), seq: 9}} {
		got, err := decodeLogPos(p.encode())
		if err != nil || got != p {
			t.Errorf("round trip of %+v: %+v, %v", p, got, err)
		}
	}
	for _, s := range []string{"=", "AA", "AQA", "AgFh", "AQFh=", strings.Repeat("A", 5000), logPos{sup: "\xff", seq: 1}.encode()} {
		if _, err := decodeLogPos(s); err == nil {
			t.Errorf("decodeLogPos(%q) accepted", s)
		}
	}
	if p, err := decodeLogPos(""); err != nil || p != (logPos{}) {
		t.Errorf("empty position refused: %v", err)
	}
}

// A lease refused as busy by one supervisor goes to another: its follower goes on with
// the second supervisor's log, and a reader resuming from a position taken on the first
// gets the second's log from its start (its seq numbers are its own), missing none of
// it. (The first supervisor's refusal is in the log only for a reader that read it
// before the lease moved; the lease's status message says it.)
func TestLeaseLogFollowsALeaseThatMoved(t *testing.T) {
	e := newEnv(t, "", Options{RefusalHold: time.Hour})
	a := e.dial("sup-a", []*pb.BoardInfo{board("a1", "device", "rpi4")}, supOpts{seq: 1000, lastAcked: 1000})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	a.expectStart()
	fl := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), Follow: true})
	a.event(&pb.Event{Body: &pb.Event_Error{Error: &pb.JobErrorEvent{JobId: l.GetId(),
		Error: &pb.JobError{Kind: pb.JobErrorKind_JOB_ERROR_KIND_MAX_CONCURRENT_JOBS, Description: "board busy"}}}})
	a.waitAcked()
	b := e.dial("sup-b", []*pb.BoardInfo{board("b1", "device", "rpi4")}, supOpts{})
	b.expectStart()
	b.toReady(l.GetId(), "b1")
	got := fl.next()
	if describe(got) == "error board busy" {
		got = fl.next() // read before the lease moved: it may show the refusal
	}
	for _, w := range []string{"phase STARTING", "phase BEFORE_LEASE", "phase READY"} {
		if d := describe(got); d != w {
			t.Fatalf("follower after the move: %q, want %q", d, w)
		}
		if w != "phase READY" {
			got = fl.next()
		}
	}
	onA := logPos{sup: "sup-a", seq: 1001}.encode()
	again, err := followLog(t, e.api, e.ctx(), &pb.LeaseLogRequest{LeaseId: l.GetId(), After: onA}).rest()
	if d := describeAll(again); err != nil || strings.Join(d, "|") != "phase STARTING|phase BEFORE_LEASE|phase READY" {
		t.Fatalf("resumed from the first supervisor's position: %q %v", d, err)
	}
}
