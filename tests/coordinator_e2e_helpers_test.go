package tests

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, to read the coordinator's database
)

// ceLabConfig writes the config of one supervisor in its own directory under root (its
// state directory is root/id/state) and returns the file's path.
func ceLabConfig(t *testing.T, root, id, coordAddr, before, after string, boards ...boardSpec) string {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return supervisorConfig(t, dir, id, coordAddr, before, after, boards...)
}

// ceWithTokenFile adds coordinator.tokenFile to a supervisor config written by
// supervisorConfig.
func ceWithTokenFile(t *testing.T, config, tokenFile string) {
	t.Helper()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "supervisorId:")
	if i < 0 {
		t.Fatalf("no supervisorId in %s", config)
	}
	s = s[:i] + fmt.Sprintf("tokenFile: %q, ", tokenFile) + s[i:]
	if err := os.WriteFile(config, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ceEventually polls cond until it holds, within the harness's bound.
func ceEventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ceWaitLine waits until the process has printed a line holding every one of subs.
func (p *proc) ceWaitLine(subs ...string) string {
	p.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if l := p.ceFindLine(subs...); l != "" {
			return l
		}
		select {
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before printing a line with %q:\n%s", p.name, p.err, subs, p.output())
		default:
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s printed no line with %q:\n%s", p.name, subs, p.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ceFindLine returns the first line of the output holding every one of subs, or "".
func (p *proc) ceFindLine(subs ...string) string {
next:
	for _, l := range strings.Split(p.output(), "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		return l
	}
	return ""
}

// ceCountLines counts the lines of the output holding every one of subs.
func (p *proc) ceCountLines(subs ...string) int {
	n := 0
next:
	for _, l := range strings.Split(p.output(), "\n") {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		n++
	}
	return n
}

// ceTerminate stops the process with SIGTERM and waits (bounded) for it to exit.
func (p *proc) ceTerminate() {
	p.t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(wait):
		p.t.Fatalf("%s did not exit after SIGTERM:\n%s", p.name, p.output())
	}
}

// ceCreateLease creates a lease by selector (or by board name when board is set).
func ceCreateLease(ctx context.Context, c pb.LeaseServiceClient, selector, board string, d time.Duration, client string) (*pb.Lease, error) {
	r, err := c.CreateLease(ctx, &pb.CreateLeaseRequest{Selector: selector, Board: board, Duration: durationpb.New(d), ClientName: client})
	if err != nil {
		return nil, err
	}
	if r.GetLease().GetId() == "" || r.GetLease().GetToken() == "" {
		return nil, fmt.Errorf("CreateLease answered a lease without ID or token: %v", r.GetLease())
	}
	return r.GetLease(), nil
}

// ceLeaseWatch follows one lease through WatchLease.
type ceLeaseWatch struct {
	id     string
	stream pb.LeaseService_WatchLeaseClient
	last   *pb.Lease
	seen   []pb.LeasePhase
}

func ceWatchLease(ctx context.Context, c pb.LeaseServiceClient, id string) (*ceLeaseWatch, error) {
	s, err := c.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return &ceLeaseWatch{id: id, stream: s}, nil
}

func ceEnded(l *pb.Lease) bool {
	return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE || l.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED
}

// until reads the stream until a message satisfies ok. A lease that ends first, or a
// stream that ends first, is an error.
func (w *ceLeaseWatch) until(what string, ok func(*pb.Lease) bool) (*pb.Lease, error) {
	if w.last != nil && ok(w.last) {
		return w.last, nil
	}
	for {
		if w.last != nil && ceEnded(w.last) {
			return nil, fmt.Errorf("lease %s ended (%s: %q) before it was %s", w.id, w.last.GetPhase(), w.last.GetStatusMessage(), what)
		}
		l, err := w.stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("stream ended")
			}
			return nil, fmt.Errorf("watching lease %s for %s: %w (last: %v)", w.id, what, err, w.last)
		}
		w.last = l
		if len(w.seen) == 0 || w.seen[len(w.seen)-1] != l.GetPhase() {
			w.seen = append(w.seen, l.GetPhase())
		}
		if ok(l) {
			return l, nil
		}
	}
}

func (w *ceLeaseWatch) ready() (*pb.Lease, error) {
	return w.until("READY", func(l *pb.Lease) bool { return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_READY })
}

// done reads the stream until the lease ends, and fails unless it ends DONE.
func (w *ceLeaseWatch) done() (*pb.Lease, error) {
	l, err := w.until("ended", ceEnded)
	if err != nil {
		return nil, err
	}
	if l.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		return l, fmt.Errorf("lease %s ended %s (%q), want DONE; phases seen: %v", w.id, l.GetPhase(), l.GetStatusMessage(), w.seen)
	}
	return l, nil
}

// ceSelectorMatches evaluates a "k=v,k!=v" selector against labels.
func ceSelectorMatches(sel string, labels map[string]string) bool {
	for _, term := range strings.Split(sel, ",") {
		if k, v, ok := strings.Cut(term, "!="); ok {
			if got, has := labels[strings.TrimSpace(k)]; has && got == strings.TrimSpace(v) {
				return false
			}
			continue
		}
		k, v, _ := strings.Cut(term, "=")
		if labels[strings.TrimSpace(k)] != strings.TrimSpace(v) {
			return false
		}
	}
	return true
}

// ceBoardStatuses lists the coordinator's boards: name -> status.
func ceBoardStatuses(t *testing.T, c pb.LeaseServiceClient) map[string]string {
	t.Helper()
	r, err := c.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil {
		t.Fatalf("ListBoards: %v", err)
	}
	out := map[string]string{}
	for _, b := range r.GetBoards() {
		out[b.GetName()] = strings.TrimPrefix(b.GetStatus().String(), "EXPORTER_STATUS_")
	}
	return out
}

// ceOpenCoordinatorDB opens the coordinator's SQLite database in its state directory.
func ceOpenCoordinatorDB(t *testing.T, stateDir string) *sql.DB {
	t.Helper()
	path := filepath.Join(stateDir, "coordinator.db")
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// ceStoredEvent is one row of the coordinator's events table.
type ceStoredEvent struct {
	supervisor string
	seq        int64
	at         time.Time
	job, board string
	kind       string
	payload    string
}

// ceStoredEvents reads every event, per supervisor in the order the coordinator stored
// them (SQLite's rowid grows with each insert).
func ceStoredEvents(t *testing.T, db *sql.DB) map[string][]ceStoredEvent {
	t.Helper()
	rows, err := db.QueryContext(ctxT(t), `SELECT supervisor_id, seq, at_ns, job_id, board, kind, payload FROM events ORDER BY rowid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]ceStoredEvent{}
	for rows.Next() {
		var e ceStoredEvent
		var at int64
		if err := rows.Scan(&e.supervisor, &e.seq, &at, &e.job, &e.board, &e.kind, &e.payload); err != nil {
			t.Fatal(err)
		}
		e.at = time.Unix(0, at)
		out[e.supervisor] = append(out[e.supervisor], e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ceCheckContiguous fails unless a supervisor's events were stored as seq 1..N, in that
// order, each once.
func ceCheckContiguous(t *testing.T, sup string, evs []ceStoredEvent) {
	t.Helper()
	if len(evs) == 0 {
		t.Errorf("supervisor %s: no events stored", sup)
		return
	}
	for i, e := range evs {
		if e.seq != int64(i+1) {
			t.Errorf("supervisor %s: stored event #%d has seq %d, want %d (seqs must be 1..N, stored in order, each once)", sup, i+1, e.seq, i+1)
			return
		}
	}
}

// ceHookLines decodes the hook_log events of a list: their texts, in stored order.
func ceHookLines(t *testing.T, evs []ceStoredEvent) []string {
	t.Helper()
	var out []string
	for _, e := range evs {
		if e.kind != "hook_log" {
			continue
		}
		var h pb.HookLog
		if err := protojson.Unmarshal([]byte(e.payload), &h); err != nil {
			t.Fatalf("hook_log event %s/%d: %v", e.supervisor, e.seq, err)
		}
		out = append(out, h.GetText())
	}
	return out
}

// ceReadyPeriods tells, per job, how long it was READY by its supervisor's clock: from
// its transition to READY to the next one.
func ceReadyPeriods(t *testing.T, events map[string][]ceStoredEvent) map[string]time.Duration {
	t.Helper()
	readyAt := map[string]time.Time{}
	out := map[string]time.Duration{}
	for _, evs := range events {
		for _, e := range evs {
			if e.kind != "state_transition" {
				continue
			}
			st := &pb.StateTransition{}
			if err := protojson.Unmarshal([]byte(e.payload), st); err != nil {
				t.Fatalf("state_transition event %s/%d: %v", e.supervisor, e.seq, err)
			}
			job := st.GetJobId()
			if st.GetTo() == pb.LeasePhase_LEASE_PHASE_READY {
				readyAt[job] = e.at
			} else if at, ok := readyAt[job]; ok {
				if _, done := out[job]; !done {
					out[job] = e.at.Sub(at)
				}
			}
		}
	}
	return out
}

// ceInterval is when a job held its board, by its supervisor's clock: from its first state
// transition to its terminal one.
type ceInterval struct {
	job        string
	start, end time.Time
}

// ceBoardIntervals derives each job's interval per board from the stored transitions.
func ceBoardIntervals(t *testing.T, events map[string][]ceStoredEvent) (map[string][]ceInterval, map[string]string) {
	t.Helper()
	type span struct {
		board      string
		start, end time.Time
	}
	spans := map[string]*span{}
	for _, evs := range events {
		for _, e := range evs {
			if e.kind != "state_transition" {
				continue
			}
			st := &pb.StateTransition{}
			if err := protojson.Unmarshal([]byte(e.payload), st); err != nil {
				t.Fatalf("state_transition event %s/%d: %v", e.supervisor, e.seq, err)
			}
			s := spans[st.GetJobId()]
			if s == nil {
				s = &span{board: st.GetBoard(), start: e.at}
				spans[st.GetJobId()] = s
			}
			if s.board != st.GetBoard() {
				t.Errorf("job %s reported on boards %s and %s", st.GetJobId(), s.board, st.GetBoard())
			}
			if e.at.Before(s.start) {
				s.start = e.at
			}
			if to := st.GetTo(); to == pb.LeasePhase_LEASE_PHASE_DONE || to == pb.LeasePhase_LEASE_PHASE_FAILED {
				s.end = e.at
			}
		}
	}
	out := map[string][]ceInterval{}
	boardOf := map[string]string{}
	for job, s := range spans {
		boardOf[job] = s.board
		out[s.board] = append(out[s.board], ceInterval{job: job, start: s.start, end: s.end})
	}
	for _, ivs := range out {
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start.Before(ivs[j].start) })
	}
	return out, boardOf
}

// ceReadLines reads a file's lines; a missing file has none.
func ceReadLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// ceVirtualBoards makes every board of a config written by supervisorConfig a simulated
// one (drivers: {virtual: {}}).
func ceVirtualBoards(t *testing.T, config string) {
	t.Helper()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		out = append(out, l)
		if strings.HasPrefix(l, "    labels: {") {
			out = append(out, "    drivers: {virtual: {}}")
		}
	}
	if err := os.WriteFile(config, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}

// cePowerCycler power-cycles a leased board with `boardvisor power cycle`, over and over.
type cePowerCycler struct {
	t      *testing.T
	quit   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	cycles int
	err    error
}

func ceStartPowerCycling(t *testing.T, exporter, board, token string) *cePowerCycler {
	t.Helper()
	if exporter == "" || token == "" {
		t.Fatalf("lease of %s has no exporter endpoint or token", board)
	}
	p := &cePowerCycler{t: t, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			select {
			case <-p.quit:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			out, err := exec.CommandContext(ctx, binary, "power", "cycle", "--exporter", exporter, "--board", board, "--token", token).CombinedOutput()
			cancel()
			p.mu.Lock()
			if err != nil {
				p.err = fmt.Errorf("power cycle: %v: %s", err, out)
				p.mu.Unlock()
				return
			}
			p.cycles++
			p.mu.Unlock()
			time.Sleep(300 * time.Millisecond) // the boot log takes ~0.15s: let it finish
		}
	}()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *cePowerCycler) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cycles
}

// waitCycles waits until n power cycles are done.
func (p *cePowerCycler) waitCycles(n int) {
	p.t.Helper()
	ceEventually(p.t, fmt.Sprintf("%d power cycles", n), func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.err != nil {
			p.t.Fatal(p.err)
		}
		return p.cycles >= n
	})
}

// stop ends the cycling and returns how many cycles were done.
func (p *cePowerCycler) stop() int {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		p.t.Error(p.err)
	}
	return p.cycles
}

// ceConsoleBytes joins a job's console_log events, in stored order. (ConsoleLog.offset is
// not checked: the supervisor leaves it 0.)
func ceConsoleBytes(t *testing.T, evs []ceStoredEvent, job string) []byte {
	t.Helper()
	var data []byte
	for _, e := range evs {
		if e.kind == "console_gap" && e.job == job {
			t.Errorf("console gap stored for job %s: %s", job, e.payload)
		}
		if e.kind != "console_log" || e.job != job {
			continue
		}
		var cl pb.ConsoleLog
		if err := protojson.Unmarshal([]byte(e.payload), &cl); err != nil {
			t.Fatalf("console_log event %s/%d: %v", e.supervisor, e.seq, err)
		}
		data = append(data, cl.GetData()...)
	}
	return data
}
