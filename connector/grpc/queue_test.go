package grpc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/internal/diskspace"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func hookEv(seq uint64, job string) *pb.Event {
	return &pb.Event{Seq: seq, Time: timestamppb.Now(), Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: job, Board: "b",
		Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Text: fmt.Sprintf("hook line %d", seq), Offset: seq * 20}}}
}

func consoleEv(seq uint64, board, job string, n int) *pb.Event {
	return &pb.Event{Seq: seq, Time: timestamppb.Now(), Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{JobId: job, Board: board,
		Data: bytes.Repeat([]byte{byte('a' + seq%26)}, n)}}}
}

func transitionEv(seq uint64, job string) *pb.Event {
	return &pb.Event{Seq: seq, Time: timestamppb.Now(), Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: job, Board: "b",
		From: pb.LeasePhase_LEASE_PHASE_READY, To: pb.LeasePhase_LEASE_PHASE_ENDING}}}
}

func openTestQueue(t *testing.T, path string, opts QueueOptions) *Queue {
	t.Helper()
	q, err := OpenQueue(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// all reads every committed event above seq.
func all(t *testing.T, q *Queue, seq uint64) []*pb.Event {
	t.Helper()
	var out []*pb.Event
	for {
		evs, _, err := q.After(seq, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return out
		}
		out = append(out, evs...)
		seq = evs[len(evs)-1].GetSeq()
	}
}

// checkContiguous fails unless evs are seq from..from+len-1.
func checkContiguous(t *testing.T, evs []*pb.Event, from uint64) {
	t.Helper()
	for i, ev := range evs {
		if ev.GetSeq() != from+uint64(i) {
			t.Fatalf("event #%d has seq %d, want %d: the outbox has a hole or a duplicate", i, ev.GetSeq(), from+uint64(i))
		}
	}
}

// A failed write is retried: the batch stays pending, no waiter is released before its
// events are on disk, nothing above the committed sequence is served, and the sequence
// has no hole once writes work again. (Write failures come from the queue's test hook
// here, to fail exactly the transactions wanted; TestQueueRidesOutAFullTmpfs uses a
// real full disk.)
func TestQueueRetriesFailedWritesWithoutHole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	q := openTestQueue(t, path, QueueOptions{NoSync: true})
	var failing atomic.Bool
	var attempts atomic.Int64
	q.failNext = func(int) error {
		if failing.Load() {
			attempts.Add(1)
			return errors.New("injected I/O error")
		}
		return nil
	}
	q.AppendBatch([]*pb.Event{hookEv(1, "j"), hookEv(2, "j")})
	waitClosed(t, "first events on disk", q.Synced())
	failing.Store(true)
	q.AppendBatch([]*pb.Event{hookEv(3, "j"), transitionEv(4, "j")})
	first := q.Synced()
	q.AppendBatch([]*pb.Event{hookEv(5, "j")})
	second := q.Append(hookEv(6, "j"))
	eventually(t, "three failed attempts", func() bool { return attempts.Load() >= 3 })
	if closed(first) || closed(second) || q.Durable() {
		t.Fatal("a waiter was released while its events were not on disk")
	}
	if evs := all(t, q, 0); len(evs) != 2 || q.LastSeq() != 2 {
		t.Fatalf("while writes fail: %d events served, last seq %d; want the 2 committed ones", len(evs), q.LastSeq())
	}
	if q.WriteError() == nil {
		t.Fatal("WriteError is nil while writes fail")
	}
	failing.Store(false)
	waitClosed(t, "the retried batch on disk", first)
	waitClosed(t, "the events behind it on disk", second)
	evs := all(t, q, 0)
	checkContiguous(t, evs, 1)
	if len(evs) != 6 || q.WriteError() != nil {
		t.Fatalf("after the retries: %d events, error %v; want 6 and none", len(evs), q.WriteError())
	}
	if q.HookOffset("j", int32(jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK)); q.retries.Load() < 3 {
		t.Fatalf("%d retries counted", q.retries.Load())
	}
	if off, _ := q.HookOffset("j", int32(jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK)); off != 6*20 {
		t.Fatalf("hook offset %d, want %d (written with the retried lines)", off, 6*20)
	}
	q.Close()
	q = openTestQueue(t, path, QueueOptions{NoSync: true})
	checkContiguous(t, all(t, q, 0), 1)
	if q.LastSeq() != 6 {
		t.Fatalf("reopened: last seq %d, want 6", q.LastSeq())
	}
}

// Acks are applied by the writer first in its own transactions: while appends keep it
// busy, and while appends fail, the acknowledged events still go.
func TestQueueAcksProgressWhileTheWriterIsBusy(t *testing.T) {
	q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true})
	var failing atomic.Bool
	q.failNext = func(events int) error {
		if failing.Load() && events > 0 {
			return errors.New("injected I/O error")
		}
		return nil
	}
	var seq atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			evs := make([]*pb.Event, 200)
			for i := range evs {
				evs[i] = consoleEv(seq.Add(1), "b", "j", 100)
			}
			q.AppendBatch(evs)
			<-q.Synced()
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for round := 0; round < 20; round++ {
		eventually(t, "more events", func() bool { return q.LastSeq() > 0 })
		up := q.LastSeq()
		if err := q.Ack(up); err != nil {
			t.Fatal(err)
		}
		eventually(t, fmt.Sprintf("events up to %d deleted while appends go on", up), func() bool {
			evs, _, _ := q.After(0, 1)
			return len(evs) == 0 || evs[0].GetSeq() > up
		})
	}
	// Appends fail from now on; acks go alone and still work.
	failing.Store(true)
	eventually(t, "a failing append", func() bool { return q.WriteError() != nil })
	up := q.LastSeq()
	q.Ack(up)
	eventually(t, "acks applied while appends fail", func() bool {
		evs, _, _ := q.After(0, 1)
		return len(evs) == 0 || evs[0].GetSeq() > up
	})
	failing.Store(false)
}

// Shedding visits one stored event per event shed, whether the outbox holds a thousand
// events or a hundred thousand (the index, no rescan).
func TestQueueSheddingIsO1PerEvent(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 100,000 events")
	}
	visits := map[int]float64{}
	for _, stored := range []int{1000, 100000} {
		q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true})
		size := int64(len(mustMarshal(consoleEv(1, "b", "j", 100))))
		q.maxBytes = max(int64(stored)*size, MinQueueBytes)
		var seq uint64
		for seq < uint64(stored) {
			evs := make([]*pb.Event, 0, 1000)
			for range 1000 {
				seq++
				evs = append(evs, consoleEv(seq, "b", "j", 100))
			}
			q.AppendBatch(evs)
		}
		waitClosed(t, "stored", q.Synced())
		before := q.shedVisits.Load()
		const shed = 2000
		for i := 0; i < shed; i += 100 {
			evs := make([]*pb.Event, 0, 100)
			for range 100 {
				seq++
				evs = append(evs, consoleEv(seq, "b", "j", 100))
			}
			q.AppendBatch(evs)
			<-q.Synced()
		}
		visits[stored] = float64(q.shedVisits.Load()-before) / shed
		if st, _, _ := q.Stats(); st > q.maxBytes {
			t.Errorf("%d stored: %d bytes on disk, bound %d", stored, st, q.maxBytes)
		}
		q.Close()
	}
	t.Logf("events visited per event shed: %v", visits)
	for n, v := range visits {
		if v < 0.5 || v > 2 {
			t.Errorf("with %d stored, %.2f events visited per event shed; want about 1", n, v)
		}
	}
	if a, b := visits[1000], visits[100000]; b > a*1.5 || a > b*1.5 {
		t.Errorf("visits per shed event differ with the outbox's size: %.2f at 1,000 vs %.2f at 100,000", a, b)
	}
}

func mustMarshal(ev *pb.Event) []byte {
	b, err := proto.Marshal(ev)
	if err != nil {
		panic(err)
	}
	return b
}

// With the coordinator away and consoles flooding, the outbox stays within its bound
// plus one batch, for every bound from 64 KiB up; every event keeps its sequence number,
// and console bytes are either delivered or counted in gaps, exactly, per board.
func TestQueueBoundHoldsUnderAConsoleFlood(t *testing.T) {
	for _, bound := range []int64{64 << 10, 200_000, 1 << 20} {
		t.Run(fmt.Sprint(bound), func(t *testing.T) {
			q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true, MaxBytes: bound})
			sent := map[string]uint64{}
			var seq uint64
			var transitions []uint64
			worst := int64(0)
			for round := 0; round < 300; round++ {
				var evs []*pb.Event
				batchBytes := int64(0)
				for b := 0; b < 20; b++ {
					seq++
					board := fmt.Sprintf("board-%02d", b)
					n := 200 + (round*37+b*101)%3000
					ev := consoleEv(seq, board, "job-"+board, n)
					sent[board] += uint64(n)
					evs = append(evs, ev)
					batchBytes += int64(len(mustMarshal(ev)))
				}
				if round%50 == 49 {
					seq++
					evs = append(evs, transitionEv(seq, "job-board-00"))
					transitions = append(transitions, seq)
				}
				q.AppendBatch(evs)
				<-q.Synced()
				st, _, _ := q.Stats()
				worst = max(worst, st)
				if st > bound+batchBytes {
					t.Fatalf("round %d: %d bytes on disk, over the bound %d plus one batch (%d)", round, st, bound, batchBytes)
				}
			}
			t.Logf("bound %d: at most %d bytes on disk, %d console bytes shed", bound, worst, q.ShedBytes())
			evs := all(t, q, 0)
			checkContiguous(t, evs, 1)
			if uint64(len(evs)) != seq {
				t.Fatalf("%d events read back, %d appended", len(evs), seq)
			}
			got := map[string]uint64{}
			var gaps uint64
			var seen []uint64
			for _, ev := range evs {
				if cl := ev.GetConsoleLog(); cl != nil {
					got[cl.GetBoard()] += uint64(len(cl.GetData()))
				}
				if g := ev.GetConsoleGap(); g != nil {
					got[g.GetBoard()] += g.GetBytes()
					gaps += g.GetBytes()
					if g.GetJobId() != "job-"+g.GetBoard() {
						t.Fatalf("gap %v names the wrong job", g)
					}
				}
				if ev.GetStateTransition() != nil {
					seen = append(seen, ev.GetSeq())
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(sent) {
				t.Fatalf("console bytes delivered or counted in gaps, per board:\n got %v\nwant %v", got, sent)
			}
			if gaps != q.ShedBytes() || gaps == 0 {
				t.Fatalf("gaps count %d bytes, the queue says it shed %d", gaps, q.ShedBytes())
			}
			if fmt.Sprint(seen) != fmt.Sprint(transitions) {
				t.Fatalf("transitions %v, want all of %v (never shed)", seen, transitions)
			}
		})
	}
}

// Acknowledging part of a run of gaps keeps the rest as the same events: what the
// coordinator already has and what it gets after the ack add up exactly.
func TestQueueAckInsideAGapRun(t *testing.T) {
	q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true, MaxBytes: MinQueueBytes})
	var evs []*pb.Event
	var seq uint64
	for i := 0; i < 400; i++ {
		seq++
		evs = append(evs, consoleEv(seq, fmt.Sprintf("b%d", i%3), "j", 1000))
	}
	q.AppendBatch(evs)
	waitClosed(t, "flood stored", q.Synced())
	before := all(t, q, 0)
	checkContiguous(t, before, 1)
	// Read what a sender would, ack part of it, and read on: each event is unchanged.
	for _, up := range []uint64{5, 17, 150, 151} {
		if err := q.Ack(up); err != nil {
			t.Fatal(err)
		}
		eventually(t, "ack applied", func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.ackDone == up })
		after := all(t, q, up)
		checkContiguous(t, after, up+1)
		for i, ev := range after {
			if want := before[up+uint64(i)]; fmt.Sprint(ev.GetBody()) != fmt.Sprint(want.GetBody()) {
				t.Fatalf("after ack %d, event %d is %v, was %v", up, ev.GetSeq(), ev.GetBody(), want.GetBody())
			}
		}
	}
}

// What the sender has read never changes, even while gaps are merged around it: a gap
// stays the same gap, and a console event it read, if shed later, becomes a gap of
// exactly its own bytes (the coordinator keeps the first of the two it gets).
func TestQueueClaimedEventsNeverChange(t *testing.T) {
	q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true, MaxBytes: MinQueueBytes})
	var seq uint64
	flood := func(n int) {
		var evs []*pb.Event
		for range n {
			seq++
			evs = append(evs, consoleEv(seq, "b", "j", 2000))
		}
		q.AppendBatch(evs)
		waitClosed(t, "flood stored", q.Synced())
	}
	flood(200)
	read, _, err := q.afterRaw(0, 100000, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	flood(200)
	again, _, err := q.afterRaw(0, len(read), nil, false)
	if err != nil {
		t.Fatal(err)
	}
	gaps := 0
	for i := range read {
		if again[i].seq != read[i].seq {
			t.Fatalf("event #%d is seq %d, was %d", i, again[i].seq, read[i].seq)
		}
		if bytes.Equal(again[i].data, read[i].data) {
			continue
		}
		var was, now pb.Event
		if proto.Unmarshal(read[i].data, &was) != nil || proto.Unmarshal(again[i].data, &now) != nil {
			t.Fatal("undecodable event")
		}
		cl, g := was.GetConsoleLog(), now.GetConsoleGap()
		if cl == nil || g == nil || g.GetBytes() != uint64(len(cl.GetData())) || g.GetBoard() != cl.GetBoard() || g.GetJobId() != cl.GetJobId() {
			t.Fatalf("event %d changed after the sender read it: was %v, now %v", read[i].seq, was.GetBody(), now.GetBody())
		}
		gaps++
	}
	if gaps == 0 {
		t.Fatal("no console event read by the sender was shed: the test shows nothing")
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory, or skips the test where
// that is not permitted (it fails under CI=true).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size))
	if err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs to fill (%v): run as root, or in a container with CAP_SYS_ADMIN", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a ballast file until the file system is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("ballast-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !diskspace.IsFull(err) {
				t.Fatal(err)
			}
			break
		}
	}
	// Small writes fill the last blocks too.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
	return path
}

// The outbox on a real full disk: writes fail with ENOSPC and are retried, the waiters
// stay blocked, console events become gaps while the disk is full (counted exactly), and
// once space returns everything is written, in order, without a restart. Then the same
// with a restart while the disk is full: the outbox opens without writing.
func TestQueueRidesOutAFullTmpfs(t *testing.T) {
	dir := mountTmpfs(t, 4<<20)
	path := filepath.Join(dir, "outbox.db")
	q := openTestQueue(t, path, QueueOptions{})
	var seq uint64
	appendHooks := func(n int) <-chan struct{} {
		evs := make([]*pb.Event, n)
		for i := range evs {
			seq++
			evs[i] = hookEv(seq, "j")
		}
		q.AppendBatch(evs)
		return q.Synced()
	}
	waitClosed(t, "first lines on disk", appendHooks(100))
	ballast := fill(t, dir)
	var blocked <-chan struct{}
	for blocked == nil || closed(blocked) {
		blocked = appendHooks(2000)
		time.Sleep(20 * time.Millisecond)
		if seq > 1_000_000 {
			t.Fatal("a million lines fit on a full 4 MiB tmpfs?")
		}
	}
	eventually(t, "a write failing with ENOSPC", func() bool { return diskspace.IsFull(q.WriteError()) })
	committed := q.LastSeq()
	var consoleSent uint64
	for i := 0; i < 50; i++ {
		seq++
		q.AppendBatch([]*pb.Event{consoleEv(seq, "b", "j", 3000)})
		consoleSent += 3000
	}
	last := q.Synced()
	time.Sleep(300 * time.Millisecond) // retries go on meanwhile
	if closed(blocked) || closed(last) {
		t.Fatal("a waiter was released while the disk was full")
	}
	if evs := all(t, q, 0); uint64(len(evs)) != committed || q.LastSeq() != committed {
		t.Fatalf("while full: %d events served, last %d; want the %d committed", len(evs), q.LastSeq(), committed)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, "the backlog written once space returned", last)
	evs := all(t, q, 0)
	checkContiguous(t, evs, 1)
	var gaps uint64
	for _, ev := range evs {
		if ev.GetConsoleLog() != nil {
			t.Fatalf("console event %d stored while the disk was full", ev.GetSeq())
		}
		gaps += ev.GetConsoleGap().GetBytes()
	}
	if uint64(len(evs)) != seq || gaps != consoleSent {
		t.Fatalf("%d events (want %d), gaps of %d bytes (want %d)", len(evs), seq, gaps, consoleSent)
	}

	// A restart while the disk is full.
	q.Close()
	ballast = fill(t, dir)
	q = openTestQueue(t, path, QueueOptions{})
	if q.LastSeq() != seq {
		t.Fatalf("reopened on a full disk: last %d, want %d", q.LastSeq(), seq)
	}
	done := appendHooks(3000)
	eventually(t, "a write failing with ENOSPC", func() bool { return diskspace.IsFull(q.WriteError()) })
	if closed(done) {
		t.Fatal("released while the disk is full")
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, "written once space returned", done)
	checkContiguous(t, all(t, q, 0), 1)
}

// A new outbox on a full disk: the monitor releases its reserve and the file is created.
func TestQueueCreatedOnAFullDiskUsesTheReserve(t *testing.T) {
	dir := mountTmpfs(t, 2<<20)
	var logs bufLog
	disk, err := diskspace.Open(diskspace.Options{Dir: dir, ReserveBytes: 256 << 10, Poll: 50 * time.Millisecond, Logger: logger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	fill(t, dir)
	q, err := OpenQueue(filepath.Join(dir, "outbox.db"), QueueOptions{Disk: disk})
	if err != nil {
		t.Fatalf("open on a full disk with a reserve: %v", err)
	}
	defer q.Close()
	waitClosed(t, "an event on disk", q.Append(hookEv(1, "j")))
	if !disk.Full() || !strings.Contains(logs.String(), "state directory full") {
		t.Fatalf("monitor full %v, log:\n%s", disk.Full(), logs.String())
	}
}

// An ack of every stored event and a gap placed in the same write transaction (the disk
// is full, so the console event is kept as its gap): bbolt's Cursor.Last never returned
// on the emptied bucket, and the outbox's writer spun for good (every lease of the
// supervisor stopped; found by TestFullStateDirRestartWhileFull).
func TestQueueGapAfterAnAckOfEverything(t *testing.T) {
	// Not openTestQueue: on a failure here, closing the queue would wait for the write
	// for good.
	q, err := OpenQueue(filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*pb.Event
	for seq := uint64(1); seq <= 2000; seq++ {
		evs = append(evs, hookEv(seq, "j")) // enough for a bucket of many pages
	}
	q.AppendBatch(evs)
	waitClosed(t, "events stored", q.Synced())
	done := make(chan error, 1)
	go func() { done <- writeFull(q, 2000, consoleEv(2001, "b", "j", 100)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write that acks everything and stores a gap did not return within 10s")
	}
	defer q.Close()
	got := all(t, q, 2000)
	if len(got) != 1 || got[0].GetConsoleGap().GetBytes() != 100 {
		t.Fatalf("after the write, the outbox holds %v, want the gap of event 2001 (100 bytes)", got)
	}
}

// writeFull writes ev as the queue's writer would with the disk full (a console event
// is kept as its gap), acknowledging up to ackTo in the same transaction, between two
// of the writer's transactions (txMu).
func writeFull(q *Queue, ackTo uint64, ev *pb.Event) error {
	batch := []rec{{seq: ev.GetSeq(), data: mustMarshal(ev), console: ev.GetConsoleLog(), ev: ev}}
	// Not while the writer writes: woken by a kick left over, it would take the event
	// appended below and write it too, at the same time.
	q.txMu.Lock()
	defer q.txMu.Unlock()
	q.mu.Lock()
	q.pending = append(q.pending, batch...)
	q.pendBytes += int64(len(batch[0].data))
	stored := q.stored
	q.mu.Unlock()
	return q.write(ackTo, nil, batch, true, stored)
}

// What a process before this one may have sent never changes: after a restart, a gap
// is not merged into the gaps on disk (the coordinator may hold them already and
// would drop the bytes added to them as a duplicate).
func TestQueueGapsOnDiskAfterARestartNeverChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "outbox.db")
	q, err := OpenQueue(path, QueueOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeFull(q, 0, consoleEv(1, "b", "j", 100)); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openTestQueue(t, path, QueueOptions{NoSync: true})
	if err := writeFull(q, 0, consoleEv(2, "b", "j", 300)); err != nil {
		t.Fatal(err)
	}
	got := all(t, q, 0)
	checkContiguous(t, got, 1)
	for i, want := range []uint64{100, 300} {
		if b := got[i].GetConsoleGap().GetBytes(); b != want {
			t.Errorf("after the restart, event %d is a gap of %d bytes, want %d", i+1, b, want)
		}
	}
}

// The sender is served the last committed records from memory (Queue.recent), and what
// it is served is what the file holds, byte for byte: under a bound that sheds console
// bytes into gaps now and then, with acks behind the sender, every read from memory is
// checked against a read of the file.
func TestQueueServesFromMemoryWhatIsOnDisk(t *testing.T) {
	q := openTestQueue(t, filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true, MaxBytes: 200_000})
	var seq, cursor uint64
	hits, misses := 0, 0
	for round := range 400 {
		var evs []*pb.Event
		for b := range 1 + round%7 {
			seq++
			evs = append(evs, consoleEv(seq, fmt.Sprint("board-", b), "job", 100+(round*53+b*97)%4000))
		}
		if round%9 == 0 {
			seq++
			evs = append(evs, transitionEv(seq, "job"))
		}
		q.AppendBatch(evs)
		<-q.Synced()
		if round%40 < 30 {
			continue // the sender falls behind (sheds take what it has not read), then catches up
		}
		for {
			q.mu.Lock()
			cached := len(q.recent) > 0 && q.recent[0].seq <= cursor+1 && cursor+1 <= q.recent[len(q.recent)-1].seq
			q.mu.Unlock()
			got, _, err := q.afterRaw(cursor, 5, nil, true)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 {
				break
			}
			if cached {
				hits++
			} else {
				misses++
			}
			want, err := q.readFile(cursor, len(got), nil, q.LastSeq())
			if err != nil {
				t.Fatal(err)
			}
			if len(want) != len(got) {
				t.Fatalf("round %d: %d records served after %d, the file has %d", round, len(got), cursor, len(want))
			}
			for i := range got {
				if got[i].seq != want[i].seq || !bytes.Equal(got[i].data, want[i].data) {
					t.Fatalf("round %d: record %d served (cached %v) is not the file's record %d (%d bytes, want %d)",
						round, got[i].seq, cached, want[i].seq, len(got[i].data), len(want[i].data))
				}
			}
			cursor = got[len(got)-1].seq
		}
		if round%25 == 0 && cursor > 30 {
			if err := q.Ack(cursor - 30); err != nil {
				t.Fatal(err)
			}
		}
	}
	if cursor != seq {
		t.Fatalf("the sender read up to %d of %d", cursor, seq)
	}
	if hits == 0 || misses == 0 || q.ShedBytes() == 0 {
		t.Fatalf("%d reads from memory, %d from the file, %d bytes shed: the test did not exercise both paths under shedding", hits, misses, q.ShedBytes())
	}
	t.Logf("%d reads from memory, %d from the file, %d bytes shed", hits, misses, q.ShedBytes())
}
