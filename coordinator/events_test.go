package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// checkEvents checks that the events table holds exactly the events sent, once each, in
// sequence order.
func checkEvents(t *testing.T, c *Coordinator, sup string, sent []*pb.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	rows, err := c.db.QueryContext(ctx, `SELECT seq, at_ns, kind, payload FROM events WHERE supervisor_id = $1 ORDER BY seq`, sup)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var seq, at int64
		var kind, payload string
		if err := rows.Scan(&seq, &at, &kind, &payload); err != nil {
			t.Fatal(err)
		}
		if i >= len(sent) {
			t.Fatalf("%s: stored event %d was never sent", sup, seq)
		}
		want := sent[i]
		if uint64(seq) != want.GetSeq() {
			t.Fatalf("%s: stored event #%d has seq %d, want %d", sup, i, seq, want.GetSeq())
		}
		wantKind, _, _ := eventKind(want)
		body := proto.Clone(eventBody(want))
		proto.Reset(body)
		if err := protojson.Unmarshal([]byte(payload), body); err != nil {
			t.Fatalf("%s: event %d: payload: %v", sup, seq, err)
		}
		if kind != wantKind || !proto.Equal(body, eventBody(want)) || at != want.GetTime().AsTime().UnixNano() {
			t.Fatalf("%s: event %d stored as %s %v at %d, sent as %s %v", sup, seq, kind, body, at, wantKind, want)
		}
		i++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != len(sent) {
		t.Fatalf("%s: %d events stored, %d sent", sup, i, len(sent))
	}
}

func hookLine(f *fakeSup, job, text string) {
	f.event(&pb.Event{Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: job, Board: "r1",
		Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Severity: pb.Severity_SEVERITY_INFO, Text: text}}})
}

func TestEventsStoredOnceInOrderAcrossReplay(t *testing.T) {
	e := newEnv(t, "", Options{})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4")}
	f := e.dial("sup", boards, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	sj := f.expectStart()
	f.toReady(sj.GetJobId(), "r1")
	for i := range 5 {
		hookLine(f, l.GetId(), "line "+string(rune('a'+i)))
	}
	f.event(&pb.Event{Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{JobId: l.GetId(), Board: "r1",
		Source: jpb.LogSource_LOG_SOURCE_DRIVER, Data: []byte("login: \x00\xff")}}})
	f.event(&pb.Event{Body: &pb.Event_ConsoleGap{ConsoleGap: &pb.ConsoleGap{JobId: l.GetId(), Board: "r1", Bytes: 42}}})
	f.waitAcked()
	sent := f.sent
	// The link drops before the supervisor hears the newest acks: it replays from seq 4.
	f.close()
	f2 := e.dial("sup", boards, supOpts{
		live:      []*pb.LiveJob{{JobId: l.GetId(), Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY}},
		lastAcked: 3, seq: uint64(len(sent)), replay: sent[3:],
	})
	if got := f2.welcome.GetLastSeqSeen(); got != uint64(len(sent)) {
		t.Fatalf("Welcome.last_seq_seen = %d, want %d", got, len(sent))
	}
	f2.sent = append([]*pb.Event(nil), sent...)
	hookLine(f2, l.GetId(), "after reconnect")
	f2.toDone(l.GetId(), "r1")
	f2.waitAcked()
	checkEvents(t, e.c, "sup", f2.sent)
	if got := e.get(l.GetId()); got.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		t.Fatalf("lease %s, want DONE", got.GetPhase())
	}
}

func TestReadyDuringOutageCountsFromTheEvent(t *testing.T) {
	clock := newFakeClock()
	e := newEnv(t, "", Options{Now: clock.Now})
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4")}
	f := e.dial("sup", boards, supOpts{})
	l := e.mustCreate("device=rpi4", "", time.Hour)
	f.expectStart()
	f.transition(l.GetId(), "r1", pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_STARTING, 0)
	f.waitAcked()
	f.close()
	clock.Advance(10 * time.Second)
	readyAt := clock.Now()
	// READY happens while the link is down; the supervisor comes back 30s later.
	ready := &pb.Event{Seq: 2, Time: timestamppb.New(readyAt), Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{
		JobId: l.GetId(), Board: "r1", From: pb.LeasePhase_LEASE_PHASE_STARTING, To: pb.LeasePhase_LEASE_PHASE_READY}}}
	clock.Advance(30 * time.Second)
	f2 := e.dial("sup", boards, supOpts{lastAcked: 1, seq: 2, replay: []*pb.Event{ready},
		live: []*pb.LiveJob{{JobId: l.GetId(), Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY}}})
	f2.sent = []*pb.Event{ready}
	eventually(t, "replayed READY applied", func() bool {
		g := e.get(l.GetId())
		return g.GetBeginsAt().AsTime().Equal(readyAt) && g.GetEndsAt().AsTime().Equal(readyAt.Add(time.Hour))
	})
}

func TestSupervisorAheadOfTheDatabase(t *testing.T) {
	e := newEnv(t, "", Options{})
	// The supervisor forgot events 1..5 (acknowledged by a coordinator whose database
	// was replaced): they cannot come back, so the coordinator takes it from 6.
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{lastAcked: 5, seq: 5})
	if f.welcome.GetLastSeqSeen() != 5 {
		t.Fatalf("Welcome %v", f.welcome)
	}
	hookLine(f, "", "six")
	f.waitAcked()
	checkEvents(t, e.c, "sup", f.sent)
}

func TestWatcherBufferIsBounded(t *testing.T) {
	w := &watcher{sig: make(chan struct{}, 1)}
	for i := range 3 * WatchBuffer {
		w.push(&pb.Lease{StatusMessage: string(rune('a' + i%26)), Phase: pb.LeasePhase(i)})
	}
	q := w.drain()
	if len(q) != WatchBuffer || q[len(q)-1].GetPhase() != pb.LeasePhase(3*WatchBuffer-1) {
		t.Fatalf("%d snapshots kept, last %v", len(q), q[len(q)-1])
	}
}

// A supervisor's events about boards it did not announce change nothing and are logged.
func TestEventsForUnannouncedBoardsAreRefused(t *testing.T) {
	e := newEnv(t, "", Options{})
	a := e.dial("lab-a", []*pb.BoardInfo{board("a1", "device", "rpi4")}, supOpts{})
	e.dial("lab-b", []*pb.BoardInfo{board("b1", "device", "rpi4")}, supOpts{})
	a.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "b1",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE, Health: pb.BoardHealth_BOARD_HEALTH_BAD}}})
	a.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "ghost",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_GOOD}}})
	a.waitAcked()
	bs := e.boards()
	if b := bs["b1"]; b.GetHealth() != pb.BoardHealth_BOARD_HEALTH_GOOD || b.GetSupervisorId() != "lab-b" {
		t.Fatalf("lab-a changed lab-b's board: %v", b)
	}
	if _, ok := bs["ghost"]; ok {
		t.Fatal("an unannounced board appeared")
	}
	for _, want := range []string{`about board \"b1\", which supervisor lab-a did not announce (served by \"lab-b\")`,
		`about board \"ghost\", which supervisor lab-a did not announce (served by \"\")`} {
		if !strings.Contains(e.logs.String(), want) {
			t.Fatalf("refusal not logged (%s):\n%s", want, e.logs.String())
		}
	}
}

// TestEventsAppliedFromTheStore checks the event path's promise: what is stored is
// applied, also when the state loop did not get the events in memory (it fell behind
// by more than its backlog, or the coordinator stopped between storing and applying).
func TestEventsAppliedFromTheStore(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, Options{})
	e.c.applyQ.mu.Lock()
	e.c.applyQ.limit = 1 // every batch of more than one state event is read back from the store
	e.c.applyQ.mu.Unlock()
	boards := []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "rpi4")}
	f := e.dial("sup", boards, supOpts{})
	l1 := e.mustCreate("", "r1", time.Hour)
	f.expectStart()
	f.toReady(l1.GetId(), "r1")
	f.waitAcked()
	if g := e.get(l1.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease applied from the store: %v", g)
	}
	e.c.mustMatchStore(t)

	// A stop between storing and applying: the events are in the store, the lease and
	// the cursor are not past them.
	l2 := e.mustCreate("", "r2", time.Hour)
	f.expectStart()
	f.toReady(l2.GetId(), "r2")
	f.waitAcked()
	sent := f.sent
	f.close()
	e.stop()
	db := openTestDB(t, dir)
	if _, err := db.Exec(`UPDATE leases SET state = $1, phase = $2, begins_at = 0 WHERE id = $3`, stateAssigned,
		int32(pb.LeasePhase_LEASE_PHASE_CREATED), l2.GetId()); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE supervisors SET applied_seq = $1`, int64(len(sent)-3)); err != nil {
		t.Fatal(err)
	}
	db.Close()
	e2 := newEnv(t, dir, Options{})
	eventually(t, "READY applied after the restart", func() bool {
		return e2.get(l2.GetId()).GetPhase() == pb.LeasePhase_LEASE_PHASE_READY
	})
	if g := e2.get(l1.GetId()); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY {
		t.Fatalf("lease applied before the restart: %v", g)
	}
	e2.c.mustMatchStore(t)
}

// The link may have several batches of a session being stored at once (SubmitEvents).
// The writer stores them in order and never above a hole: a batch that does not follow
// what is stored of its supervisor is refused, so that the supervisor's last stored seq,
// where its replay starts, never skips an event.
func TestPipelinedBatchesNeverStoredAboveAHole(t *testing.T) {
	e := newEnv(t, "", Options{})
	f := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4")}, supOpts{})
	hookLine(f, "", "one")
	f.waitAcked()
	var sess *link.Session
	e.c.do(e.ctx(), func(context.Context, *sql.Tx, *effects) error { sess = e.c.sessions["sup"]; return nil })
	line := func(seq uint64) *pb.Event {
		return &pb.Event{Seq: seq, Time: timestamppb.New(time.Unix(1_700_000_000, int64(seq))), Body: &pb.Event_HookLog{HookLog: &pb.HookLog{
			Board: "r1", Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Severity: pb.Severity_SEVERITY_INFO, Text: fmt.Sprint("line ", seq)}}}
	}
	// 2 and 3 are missing: 4..5 is refused, and so is 6..7, which follows it.
	hole := e.c.SubmitEvents(e.ctx(), sess, []*pb.Event{line(4), line(5)})
	after := e.c.SubmitEvents(e.ctx(), sess, []*pb.Event{line(6), line(7)})
	if err := hole(); !errors.Is(err, errAboveHole) {
		t.Fatalf("events 4..5 above the hole at 2: %v, want it refused", err)
	}
	if err := after(); !errors.Is(err, errAboveHole) {
		t.Fatalf("events 6..7 after the refused 4..5: %v, want them refused", err)
	}
	// In order, several at once: all stored, with a replay of 1 in the first.
	sent := []*pb.Event{f.sent[0]}
	var waits []func() error
	for first := uint64(2); first < 12; first += 2 {
		evs := []*pb.Event{line(first), line(first + 1)}
		if first == 2 {
			evs = append([]*pb.Event{f.sent[0]}, evs...)
		}
		waits = append(waits, e.c.SubmitEvents(e.ctx(), sess, evs))
		sent = append(sent, line(first), line(first+1))
	}
	for i, w := range waits {
		if err := w(); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	checkEvents(t, e.c, "sup", sent)
	var last int64
	if err := e.c.db.QueryRowContext(e.ctx(), `SELECT last_seq FROM supervisors WHERE id = $1`, "sup").Scan(&last); err != nil || last != 11 {
		t.Fatalf("last_seq %d (%v), want 11", last, err)
	}
}
