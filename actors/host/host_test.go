package host_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors"
	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/host"
	"github.com/boardvisor/boardvisor/actors/internal/actortest"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/google/uuid"
)

// These tests run the host actor under a probe, with its real outbox, boards and
// leases below it (no hooks, so no process runs); its events go to the probe's local
// connector. What they check is what the host decides: where it routes a request, what
// it refuses and how the refusal is heard, what it resumes and what it reports lost.

func config(p *actortest.Probe, boards ...string) host.Config {
	cfg := host.Config{Conn: p.Conn, Store: &actors.MemStore{}, StateDir: p.T().TempDir(), Logger: p.Logger.Named("host")}
	for _, b := range boards {
		cfg.Boards = append(cfg.Boards, board.Config{Name: b, LeaseDuration: time.Minute})
	}
	return cfg
}

func request(t *testing.T, p *actortest.Probe, m any) error {
	t.Helper()
	r, ok := p.Request(m).(*actors.JobReply)
	if !ok {
		t.Fatalf("%T: the host did not answer a JobReply", m)
	}
	return r.Err
}

func startJob(t *testing.T, p *actortest.Probe, job, board string) error {
	t.Helper()
	return request(t, p, &actors.StartJob{Req: connector.StartJobRequest{JobID: job, Board: board}})
}

func kind(err error) string {
	if k, ok := jobs.KindOf(err); ok {
		return k.String()
	}
	return fmt.Sprint(err)
}

// errorEvent waits for the Error event of job and returns its kind.
func errorEvent(p *actortest.Probe, job string) (string, string) {
	evs := p.WaitEvents("an error event of "+job, func(evs []connector.Event) bool {
		return actortest.Index(evs, func(ev connector.Event) bool { return ev.JobID == job && ev.Error != nil }) >= 0
	})
	ev := evs[actortest.Index(evs, func(ev connector.Event) bool { return ev.JobID == job && ev.Error != nil })]
	return ev.Error.Kind.String(), ev.Board
}

// The host routes a job to the board it names, and its StopJob to the board that has
// it; a request about a job that has ended is a no-op.
func TestHostRoutesJobsToTheirBoard(t *testing.T) {
	p := actortest.New(t)
	p.Spawn(host.Props(config(p, "a", "b")), "host")
	job := uuid.NewString()
	if err := startJob(t, p, job, "b"); err != nil {
		t.Fatal(err)
	}
	evs := p.WaitTransition(job, jobs.PhaseReady)
	for _, ev := range evs {
		if ev.JobID == job && ev.Board != "b" {
			t.Errorf("event of the job on board %q, want b: %s", ev.Board, ev)
		}
	}
	if err := request(t, p, &actors.StopJob{Req: connector.StopJobRequest{JobID: job}}); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(job, jobs.PhaseDone)
	if err := request(t, p, &actors.EndSession{Board: "b", JobID: job}); err != nil {
		t.Errorf("EndSession of an ended job: %v, want nil", err)
	}
}

// A StartJob the host refuses is answered with the refusal and reported as an Error
// event: over the coordinator link, events are how a refusal is heard.
func TestHostRefusalsAreErrorEvents(t *testing.T) {
	p := actortest.New(t)
	p.Spawn(host.Props(config(p, "a", "b")), "host")
	unknown := uuid.NewString()
	if err := startJob(t, p, unknown, "nope"); kind(err) != "InternalError" || !strings.Contains(err.Error(), `no board named "nope"`) {
		t.Errorf("StartJob on an unknown board: %v", err)
	}
	if k, b := errorEvent(p, unknown); k != "InternalError" || b != "nope" {
		t.Errorf("error event %s on board %q, want InternalError on nope", k, b)
	}
	twice := uuid.NewString()
	if err := startJob(t, p, twice, "a"); err != nil {
		t.Fatal(err)
	}
	if err := startJob(t, p, twice, "b"); kind(err) != "JobAlreadyExists" {
		t.Errorf("the same job on a second board: %v, want JobAlreadyExists", err)
	}
	if k, b := errorEvent(p, twice); k != "JobAlreadyExists" || b != "b" {
		t.Errorf("error event %s on board %q, want JobAlreadyExists on b", k, b)
	}
	// A refusal by the board itself is reported the same way.
	busy := uuid.NewString()
	if err := startJob(t, p, busy, "a"); kind(err) != "AlreadyRunning" {
		t.Errorf("a second job on a busy board: %v, want AlreadyRunning", err)
	}
	if k, _ := errorEvent(p, busy); k != "AlreadyRunning" {
		t.Errorf("error event %s, want AlreadyRunning", k)
	}
}

// At start-up the host first sends the transitions the outbox never durably held, then
// reports every lease it cannot resume (its board is gone, or the journal could not give
// it back) as CannotResume, forgetting its record, and resumes the others on their
// boards.
func TestHostReemitsAndReportsWhatItCannotResume(t *testing.T) {
	p := actortest.New(t)
	cfg := config(p, "a")
	kept, gone, unreadable := uuid.NewString(), uuid.NewString(), uuid.NewString()
	save := func(job, board string, phase jobs.Phase) jobs.Record {
		spec := jobs.Spec{JobID: job, Board: board, Duration: time.Minute}
		if err := cfg.Store.SaveLease(spec, jobs.State{Phase: phase, Acquired: true}, nil); err != nil {
			t.Fatal(err)
		}
		rec, _, _ := cfg.Store.Load(job)
		return rec
	}
	cfg.Restore = []jobs.Record{save(kept, "a", jobs.PhaseReady), save(gone, "removed", jobs.PhaseReady)}
	cfg.CannotResume = []host.Unresumable{{JobID: unreadable, Board: "a", Reason: "journal record unreadable"}}
	cfg.Reemit = []connector.Event{{Board: "a", JobID: kept, Transition: &connector.Transition{From: jobs.PhaseBeforeLease, To: jobs.PhaseReady, Step: 3}}}
	p.Spawn(host.Props(cfg), "host")

	evs := p.WaitEvents("the two CannotResume errors and the board's status", func(evs []connector.Event) bool {
		n, status := 0, false
		for _, ev := range evs {
			if ev.Error != nil && ev.Error.Kind == jobs.KindCannotResume {
				n++
			}
			status = status || ev.BoardStatus != nil
		}
		return n == 2 && status
	})
	if evs[0].Seq != 1 || evs[0].Transition == nil || evs[0].JobID != kept || evs[0].Transition.Step != 3 {
		t.Errorf("first event %s, want the re-emitted transition of %s as #1", evs[0], kept)
	}
	var lost []string
	for _, ev := range evs {
		if ev.Error != nil {
			lost = append(lost, ev.JobID)
		}
		if ev.BoardStatus != nil && len(lost) < 2 {
			t.Errorf("the board's status (%s) came before the CannotResume reports", ev)
		}
	}
	if !slices.Contains(lost, gone) || !slices.Contains(lost, unreadable) {
		t.Errorf("CannotResume for %v, want %s and %s", lost, gone, unreadable)
	}
	if _, ok, _ := cfg.Store.Load(gone); ok {
		t.Error("the record of a lease on a removed board was kept")
	}
	// The resumed lease is the host's: it routes its StopJob to its board.
	if err := request(t, p, &actors.StopJob{Req: connector.StopJobRequest{JobID: kept}}); err != nil {
		t.Fatal(err)
	}
	p.WaitTransition(kept, jobs.PhaseDone)
}

// The host answers GetBoard with its boards' names in config order, and forwards a
// BoardRequest to the board, which answers the asker.
func TestHostAnswersForItsBoards(t *testing.T) {
	p := actortest.New(t)
	p.Spawn(host.Props(config(p, "z", "a", "m")), "host")
	if names, ok := p.Request(&actors.GetBoard{}).(host.Boards); !ok || !slices.Equal(names, host.Boards{"z", "a", "m"}) {
		t.Errorf("GetBoard: %v, want [z a m]", names)
	}
	st, ok := p.Request(&host.BoardRequest{Board: "a", Msg: &actors.GetBoard{}}).(*actors.BoardState)
	if !ok || st.Name != "a" || st.Status != jobs.StatusAvailable {
		t.Errorf("BoardRequest to a: %+v", st)
	}
	if err, ok := p.Request(&host.BoardRequest{Board: "x", Msg: &actors.GetBoard{}}).(error); !ok || !strings.Contains(err.Error(), `no board named "x"`) {
		t.Errorf("BoardRequest to an unknown board: %v", err)
	}
}
