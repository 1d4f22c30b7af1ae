package board

import (
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/actors/internal/actortest"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

func consoleEvent(board string, off uint64, data string) connector.Event {
	return connector.Event{Board: board, Console: &connector.Console{Source: jobs.SourceDriver, Data: []byte(data), Offset: off}}
}

// A tick's batch is joined and sent outside the batch's lock: while it is being joined,
// another board's attended chunk goes to the outbox at once (the console reader that
// read it is not held), and a board whose earlier chunks are in the batch still sends
// its next ones after the batch.
func TestConsoleBatchJoinsOutsideItsLock(t *testing.T) {
	p := actortest.New(t)
	c := NewConsoleBatch(p.Sys.Root, p.Outbox, time.Hour) // ticks by hand only
	t.Cleanup(c.Close)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.joining = func() { once.Do(func() { close(entered); <-release }) }

	c.Add(consoleEvent("quiet", 0, "held "))
	c.Add(consoleEvent("quiet", 5, "in the batch"))
	ticked := make(chan struct{})
	go func() { defer close(ticked); c.tickOnce() }()
	select {
	case <-entered:
	case <-time.After(actortest.Wait):
		t.Fatal("the tick never started joining its batch")
	}

	// Another board's attended chunk, while the batch is held in its join.
	nowDone := make(chan struct{})
	go func() { defer close(nowDone); c.Now(consoleEvent("attended", 0, "echo")) }()
	select {
	case <-nowDone:
	case <-time.After(actortest.Wait):
		close(release)
		t.Fatalf("an attended chunk of another board waited %s for a tick's batch being joined", actortest.Wait)
	}
	p.WaitEvents("the attended chunk", func(evs []connector.Event) bool { return len(evs) == 1 })

	// The held board's next chunk, flushed (as at a release), goes after the batch.
	c.Add(consoleEvent("quiet", 17, " and after it"))
	flushed := make(chan struct{})
	go func() { defer close(flushed); c.Flush("quiet") }()
	// It must wait for the batch: give a flush that would not the time to return (a
	// correct one cannot return before the release, however long this takes).
	select {
	case <-flushed:
		t.Error("a flush returned while the batch holding the board's earlier chunks was still being joined")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	<-ticked
	select {
	case <-flushed:
	case <-time.After(actortest.Wait):
		t.Fatal("a flush never returned after the batch was sent")
	}
	evs := p.WaitEvents("the batch and the flush", func(evs []connector.Event) bool { return len(evs) == 3 })
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Board+":"+string(ev.Console.Data))
	}
	want := []string{"attended:echo", "quiet:held in the batch", "quiet: and after it"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events reached the outbox as %q, want %q", got, want)
		}
	}
}
