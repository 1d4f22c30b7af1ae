package web

// Tests of the dashboard's server side against a real coordinator (in process, SQLite in
// a temporary directory) and a supervisor speaking the real link protocol (a fake: the
// browser tests in tests/ run the real binaries). What a browser does is in
// tests/web_e2e_test.go.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/coordinator"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const testWait = 15 * time.Second

var testUsers = coordinator.ClientTokens{
	"tok-alice": {Name: "alice"},
	"tok-bob":   {Name: "bob"},
	"tok-root":  {Name: "root", Admin: true},
}

// recAudit records what the dashboard audits.
type recAudit struct {
	mu    sync.Mutex
	lines []string
}

func (a *recAudit) Refused(who, board, job, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lines = append(a.lines, fmt.Sprintf("refused who=%s board=%s job=%s %s", who, board, job, reason))
}

func (a *recAudit) Request(who, board, job, what, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lines = append(a.lines, fmt.Sprintf("request who=%s board=%s job=%s %s %s", who, board, job, what, reason))
}

func (a *recAudit) all() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return strings.Join(a.lines, "\n")
}

// rig is a coordinator with a supervisor link, and its dashboard on an httptest server.
type rig struct {
	t     testing.TB
	dir   string
	c     *coordinator.Coordinator
	srv   *grpc.Server
	addr  string
	web   *Server
	http  *httptest.Server
	audit *recAudit
	sup   *fakeSup
}

func newRig(t testing.TB, opts Options, tlsOn bool) *rig {
	t.Helper()
	dir := t.TempDir()
	c, err := coordinator.New(coordinator.Options{StateDir: dir, ClientTokens: testUsers, TickInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(c.ServerOptions()...)
	c.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = c.Run(ctx) }()
	r := &rig{t: t, dir: dir, c: c, srv: srv, addr: lis.Addr().String(), audit: &recAudit{}}
	opts.Coordinator, opts.Audit = c, r.audit
	if opts.StateDir == "" {
		opts.StateDir = dir
	}
	r.web, err = New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if tlsOn {
		r.http = httptest.NewTLSServer(r.web.Handler())
	} else {
		r.http = httptest.NewServer(r.web.Handler())
	}
	t.Cleanup(func() {
		r.http.CloseClientConnections()
		r.http.Close()
		r.web.Close()
		srv.Stop()
		cancel()
		<-runDone
		c.Close()
	})
	return r
}

// fakeSup is a supervisor on the real link: Hello, then numbered events.
type fakeSup struct {
	t      testing.TB
	stream pb.SupervisorLink_ConnectClient
	mu     sync.Mutex
	seq    uint64
	starts chan *pb.StartJob
}

func (r *rig) supervisor(id string, boards ...*pb.BoardInfo) *fakeSup {
	r.t.Helper()
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.t.Cleanup(func() { cancel(); conn.Close() })
	stream, err := pb.NewSupervisorLinkClient(conn).Connect(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: &pb.Hello{SupervisorId: id, Boards: boards, Version: "test"}}}); err != nil {
		r.t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		r.t.Fatalf("no Welcome: %v %v", m, err)
	}
	f := &fakeSup{t: r.t, stream: stream, starts: make(chan *pb.StartJob, 100)}
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if s := m.GetStartJob(); s != nil {
				f.starts <- s
			}
		}
	}()
	r.sup = f
	return f
}

func board(name string, labels ...string) *pb.BoardInfo {
	l := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		l[labels[i]] = labels[i+1]
	}
	return &pb.BoardInfo{Name: name, Labels: l, Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE,
		Health: pb.BoardHealth_BOARD_HEALTH_GOOD, ClientEndpoint: "127.0.0.1:1"}
}

func (f *fakeSup) event(ev *pb.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	ev.Seq, ev.Time = f.seq, timestamppb.Now()
	if err := f.stream.Send(&pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: ev}}); err != nil {
		f.t.Errorf("send event: %v", err)
	}
}

func (f *fakeSup) phase(job, b string, from, to pb.LeasePhase, st jpb.ExporterStatus) {
	f.event(&pb.Event{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: job, Board: b, From: from, To: to, ExporterStatus: st}}})
}

func (f *fakeSup) hookLine(job, b, text string) {
	f.event(&pb.Event{Body: &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: job, Board: b, Text: text,
		Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Severity: pb.Severity_SEVERITY_INFO}}})
}

func (f *fakeSup) expectStart() *pb.StartJob {
	f.t.Helper()
	select {
	case s := <-f.starts:
		return s
	case <-time.After(testWait):
		f.t.Fatal("no StartJob")
		return nil
	}
}

// lease creates a lease for a user through the coordinator's API.
func (r *rig) lease(token, b string) string {
	r.t.Helper()
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
	resp, err := pb.NewLeaseServiceClient(conn).CreateLease(ctx, &pb.CreateLeaseRequest{Board: b, Duration: durationpb.New(time.Hour)})
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.GetLease().GetId()
}

// client is a browser-like HTTP client with a cookie jar, logged in with token.
func (r *rig) client(token string) *http.Client {
	r.t.Helper()
	jar, _ := cookiejar.New(nil)
	c := new(http.Client)
	*c = *r.http.Client() // a copy: httptest's client is shared
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if token != "" {
		resp, err := c.PostForm(r.http.URL+"/login", url.Values{"token": {token}, "next": {"/"}})
		if err != nil {
			r.t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
			r.t.Fatalf("login: %s to %q", resp.Status, resp.Header.Get("Location"))
		}
	}
	return c
}

// csrf is a logged-in client's CSRF token.
func (r *rig) csrf(c *http.Client) string {
	r.t.Helper()
	var me struct{ CSRF string }
	r.getJSON(c, "/api/me", &me)
	return me.CSRF
}

func (r *rig) getJSON(c *http.Client, path string, out any) int {
	r.t.Helper()
	resp, err := c.Get(r.http.URL + path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// sse is an open event stream.
type sse struct {
	resp   *http.Response
	events chan sseMsg
	cancel context.CancelFunc
}

type sseMsg struct{ id, event, data string }

func (r *rig) stream(c *http.Client, path, lastID string) *sse {
	r.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.http.URL+path, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		r.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		r.t.Fatalf("stream %s: %s %s", path, resp.Status, b)
	}
	s := &sse{resp: resp, events: make(chan sseMsg, 10000), cancel: cancel}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var m sseMsg
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.event != "" {
					s.events <- m
				}
				m = sseMsg{}
			case strings.HasPrefix(line, "id: "):
				m.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				m.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				m.data = line[6:]
			}
		}
	}()
	r.t.Cleanup(s.close)
	return s
}

func (s *sse) close() {
	s.cancel()
	s.resp.Body.Close()
}

// until reads events until ok says so.
func (s *sse) until(t *testing.T, what string, ok func(sseMsg) bool) []sseMsg {
	t.Helper()
	var seen []sseMsg
	timer := time.NewTimer(testWait)
	defer timer.Stop()
	for {
		select {
		case m, open := <-s.events:
			if !open {
				t.Fatalf("stream ended before %s; got %v", what, seen)
			}
			seen = append(seen, m)
			if ok(m) {
				return seen
			}
		case <-timer.C:
			t.Fatalf("no %s within %s; got %v", what, testWait, seen)
		}
	}
}

func rowIs(kind, key string, field, value string) func(sseMsg) bool {
	return func(m sseMsg) bool {
		if m.event != "row" {
			return false
		}
		var v map[string]any
		_ = json.Unmarshal([]byte(m.data), &v)
		return v["kind"] == kind && v["key"] == key && (field == "" || fmt.Sprint(v[field]) == value)
	}
}

// ---- tests ----

// One watcher reads the farm for every open tab, started by the first, stopped after
// the last; a change costs one read whatever the number of tabs, and nothing is read
// while no tab is open.
func TestOneSharedWatcherForAllTabs(t *testing.T) {
	r := newRig(t, Options{Coalesce: 10 * time.Millisecond}, false)
	sup := r.supervisor("lab-1", board("b1", "device", "rpi4"), board("b2", "device", "qemu"))
	if r.web.farm.running.Load() {
		t.Fatal("a watcher runs before any tab is open")
	}
	c := r.client("tok-alice")
	var tabs []*sse
	for range 20 {
		s := r.stream(c, "/api/events/farm", "")
		s.until(t, "ready", func(m sseMsg) bool { return m.event == "ready" })
		tabs = append(tabs, s)
	}
	if !r.web.farm.running.Load() {
		t.Fatal("no watcher with 20 tabs open")
	}
	before := r.web.farm.loads.Load()
	sup.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "b2",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_BAD}}})
	for _, s := range tabs {
		s.until(t, "b2 BAD", rowIs("board", "b2", "health", "BAD"))
	}
	if n := r.web.farm.loads.Load() - before; n < 1 || n > 3 {
		t.Fatalf("the change cost %d reads of the coordinator for 20 tabs, want 1 (at most 3: changes may come in more than one commit)", n)
	}
	for _, s := range tabs {
		s.close()
	}
	deadline := time.Now().Add(testWait)
	for r.web.farm.running.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the watcher still runs after the last tab closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	idle := r.web.farm.loads.Load()
	sup.event(&pb.Event{Body: &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: "b2",
		Status: jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, Health: pb.BoardHealth_BOARD_HEALTH_GOOD}}})
	time.Sleep(200 * time.Millisecond)
	if n := r.web.farm.loads.Load() - idle; n != 0 {
		t.Fatalf("%d reads of the coordinator with no tab open", n)
	}
	// A tab opened later starts from a fresh read, with the change it missed.
	s := r.stream(c, "/api/events/farm", "")
	s.until(t, "b2 GOOD", rowIs("board", "b2", "health", "GOOD"))
}

// A tab that stops reading holds at most one pending version of each row (newer ones
// replace older ones); the watcher and the other tabs never wait for it.
func TestSlowTabHoldsOneVersionPerRow(t *testing.T) {
	tb := newTable("test", time.Millisecond, nil, nil, nil)
	s := &tabSub{filter: func(*row) bool { return true }, sig: make(chan struct{}, 1), pending: map[string][]byte{}, sent: map[string]bool{}}
	tb.subs[s] = struct{}{}
	tb.gen = 1
	for i := range 1000 {
		tb.publish(1, []*row{{kind: "board", key: "b1", event: []byte(fmt.Sprint("v", i))}, {kind: "board", key: "b2", event: []byte("same")}})
	}
	got := s.drain()
	if len(got) != 2 {
		t.Fatalf("%d events pending after 1000 versions of 2 rows, want 2", len(got))
	}
	for _, ev := range got {
		if string(ev) != "v999" && string(ev) != "same" {
			t.Fatalf("pending %q, want the newest version", ev)
		}
	}
	// A row gone is removed from the tab that has it, and only from it.
	tb.publish(1, []*row{{kind: "board", key: "b2", event: []byte("same")}})
	got = s.drain()
	if len(got) != 1 || !strings.Contains(string(got[0]), `"key":"b1"`) || !strings.HasPrefix(string(got[0]), "event: remove") {
		t.Fatalf("after b1 went: %q", got)
	}
}

// The boards stream is filtered by the URL's label selector, and a user gets only their
// own leases (an admin everyone's); another user's lease page and log are refused.
func TestUsersSeeTheirOwnLeasesAndFilteredBoards(t *testing.T) {
	r := newRig(t, Options{Coalesce: 10 * time.Millisecond}, false)
	sup := r.supervisor("lab-1", board("rpi-1", "device", "rpi4"), board("qemu-1", "device", "qemu"))
	id := r.lease("tok-alice", "rpi-1")
	sup.expectStart()
	bob, alice, root := r.client("tok-bob"), r.client("tok-alice"), r.client("tok-root")

	got := func(c *http.Client, path string) map[string]bool {
		s := r.stream(c, path, "")
		seen := s.until(t, "ready", func(m sseMsg) bool { return m.event == "ready" })
		s.close()
		out := map[string]bool{}
		for _, m := range seen {
			var v struct{ Kind, Key, Holder string }
			if m.event == "row" && json.Unmarshal([]byte(m.data), &v) == nil {
				out[v.Kind+"/"+v.Key] = true
				if v.Holder != "" {
					out["holder:"+v.Holder] = true
				}
			}
		}
		return out
	}
	b := got(bob, "/api/events/farm?selector=device%3Drpi4")
	if !b["board/rpi-1"] || b["board/qemu-1"] || b["lease/"+id] || !b["holder:alice"] {
		t.Fatalf("bob's filtered farm: %v (want rpi-1 with its holder, no qemu-1, no lease of alice's)", b)
	}
	if a := got(alice, "/api/events/farm"); !a["lease/"+id] || !a["board/qemu-1"] {
		t.Fatalf("alice's farm: %v", a)
	}
	if a := got(root, "/api/events/farm"); !a["lease/"+id] {
		t.Fatalf("root's farm lacks alice's lease: %v", a)
	}
	var e struct{ Error string }
	if code := r.getJSON(bob, "/api/lease/"+id, &e); code != 403 || !strings.Contains(e.Error, "another user") {
		t.Fatalf("bob reads alice's lease: %d %q", code, e.Error)
	}
	resp, err := bob.Get(r.http.URL + "/api/events/lease/" + id)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("bob streams alice's lease: %s", resp.Status)
	}
	if code := r.getJSON(root, "/api/lease/"+id, nil); code != 200 {
		t.Fatalf("root reads alice's lease: %d", code)
	}
	if !strings.Contains(r.audit.all(), "dashboard: view a lease held by alice") {
		t.Fatalf("bob's refusal not audited:\n%s", r.audit.all())
	}
	// A bad selector is said on the stream, once.
	s := r.stream(bob, "/api/events/farm?selector=%3D%3D", "")
	s.until(t, "a problem", func(m sseMsg) bool { return m.event == "problem" && strings.Contains(m.data, "label filter") })
}

// A lease's stream gives each log entry its LeaseLog position as its event ID; a
// stream opened again with the last ID it got (Last-Event-ID) goes on after it: nothing
// missed, nothing twice.
func TestLeaseStreamResumesFromLastEventID(t *testing.T) {
	r := newRig(t, Options{}, false)
	sup := r.supervisor("lab-1", board("b1"))
	id := r.lease("tok-alice", "b1")
	sup.expectStart()
	sup.phase(id, "b1", pb.LeasePhase_LEASE_PHASE_CREATED, pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK)
	for i := 1; i <= 30; i++ {
		sup.hookLine(id, "b1", fmt.Sprintf("line %d", i))
	}
	c := r.client("tok-alice")
	lines := func(ms []sseMsg) (out []string, last string) {
		for _, m := range ms {
			if m.event != "log" {
				continue
			}
			if m.id == "" {
				t.Fatalf("a log entry without an ID: %v", m)
			}
			last = m.id
			var e struct{ Kind, Text string }
			_ = json.Unmarshal([]byte(m.data), &e)
			if e.Kind == "hook" {
				out = append(out, e.Text)
			}
		}
		return out, last
	}
	s := r.stream(c, "/api/events/lease/"+id, "")
	first, last := lines(s.until(t, "line 15", func(m sseMsg) bool { return strings.Contains(m.data, `"line 15"`) }))
	s.close()
	for i := 31; i <= 40; i++ {
		sup.hookLine(id, "b1", fmt.Sprintf("line %d", i))
	}
	s = r.stream(c, "/api/events/lease/"+id, last)
	rest, _ := lines(s.until(t, "line 40", func(m sseMsg) bool { return strings.Contains(m.data, `"line 40"`) }))
	all := append(first, rest...)
	if len(all) != 40 {
		t.Fatalf("%d lines over two streams, want 40: %q", len(all), all)
	}
	for i, l := range all {
		if l != fmt.Sprintf("line %d", i+1) {
			t.Fatalf("line #%d is %q: %q", i+1, l, all)
		}
	}
	// The lease ends: the stream says so after its last entry, and ends.
	sup.phase(id, "b1", pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, pb.LeasePhase_LEASE_PHASE_FAILED, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE)
	s.until(t, "end", func(m sseMsg) bool { return m.event == "end" })
	s.until(t, "the final state", func(m sseMsg) bool { return m.event == "lease" && strings.Contains(m.data, `"phase":"FAILED"`) })
}

// Sessions survive a restart (a reconnecting browser goes on), hold no token in the
// file (it is sealed under a key only the cookie gives), and expire.
func TestSessionsSurviveARestartSealed(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	s, _, err := openSessions(dir, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	sid, sess, err := s.create("tok-secret-123")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, sessionFile))
	if strings.Contains(string(b), "tok-secret-123") || strings.Contains(string(b), sid) || strings.Contains(string(b), sess.csrf) {
		t.Fatalf("the sessions file holds the token, the session ID or the CSRF token:\n%s", b)
	}
	if fi, err := os.Stat(filepath.Join(dir, sessionFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sessions file mode: %v %v", fi.Mode(), err)
	}
	s2, _, err := openSessions(dir, time.Hour, clock)
	if err != nil {
		t.Fatal(err)
	}
	got := s2.get(sid)
	if got == nil || got.token != "tok-secret-123" || got.csrf != sess.csrf {
		t.Fatalf("after a restart: %+v", got)
	}
	forged := []byte(sid)
	forged[3] ^= 1
	if s2.get(string(forged)) != nil || s2.get("") != nil || s2.get("not base64!") != nil {
		t.Fatal("a forged session ID is accepted")
	}
	now = now.Add(2 * time.Hour)
	if s2.get(sid) != nil {
		t.Fatal("an expired session is accepted")
	}
	s3, _, _ := openSessions(dir, time.Hour, clock)
	if s3.get(sid) != nil {
		t.Fatal("an expired session is read back")
	}
	// A damaged file is moved aside: users log in again.
	if err := os.WriteFile(filepath.Join(dir, sessionFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, warn, err := openSessions(dir, time.Hour, clock)
	if err != nil || len(warn) != 1 {
		t.Fatalf("damaged file: %v %v", warn, err)
	}
	if _, err := os.Stat(filepath.Join(dir, sessionFile+".damaged")); err != nil {
		t.Fatal(err)
	}
}

// A login whose session cannot be written (the state directory refuses the file) fails
// with a sentence, sets no cookie, and keeps nothing; once the file can be written, the
// login works.
func TestLoginFailsClearlyWhenTheSessionCannotBeKept(t *testing.T) {
	r := newRig(t, Options{}, false)
	block := filepath.Join(r.dir, sessionFile+".tmp")
	if err := os.Mkdir(block, 0o700); err != nil { // the new file cannot be created
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(block, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c := r.client("")
	resp, err := c.PostForm(r.http.URL+"/login", url.Values{"token": {"tok-alice"}})
	if err != nil {
		t.Fatal(err)
	}
	var e struct{ Error string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(e.Error, "could not keep your session") || len(resp.Cookies()) != 0 {
		t.Fatalf("login with an unwritable sessions file: %s %q cookies %v", resp.Status, e.Error, resp.Cookies())
	}
	if n := len(r.web.sessions.byID); n != 0 {
		t.Fatalf("%d sessions kept after a failed login", n)
	}
	if err := os.RemoveAll(block); err != nil {
		t.Fatal(err)
	}
	r.client("tok-alice") // logs in
}

// The session cookie is HttpOnly and SameSite=Strict, and Secure under TLS; every answer
// carries the strict CSP.
func TestCookieAndSecurityHeaders(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		r := newRig(t, Options{}, tlsOn)
		c := new(http.Client)
		*c = *r.http.Client()
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := c.PostForm(r.http.URL+"/login", url.Values{"token": {"tok-alice"}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		ck := resp.Cookies()
		if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || ck[0].Secure != tlsOn || ck[0].Path != "/" {
			t.Fatalf("TLS %v: cookie %+v", tlsOn, ck)
		}
		if strings.Contains(ck[0].Value, "tok-alice") {
			t.Fatal("the cookie holds the token")
		}
		for _, p := range []string{"/", "/static/boards.js", "/api/me", "/login", "/lease/x"} {
			resp, err := c.Get(r.http.URL + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.Header.Get("Content-Security-Policy") != csp || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("%s: headers %v", p, resp.Header)
			}
			if tlsOn && resp.Header.Get("Strict-Transport-Security") == "" {
				t.Fatalf("%s over TLS without HSTS", p)
			}
		}
		if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Fatalf("CSP %q", csp)
		}
	}
	_ = tls.VersionTLS12
}

// A state-changing request needs the session's CSRF token and must not come from
// another site; an unknown token does not log in, and guessing is slowed down.
func TestStateChangesNeedCSRFAndTheDashboardsOrigin(t *testing.T) {
	r := newRig(t, Options{}, false)
	r.supervisor("lab-1", board("b1"))
	root := r.client("tok-root")
	tok := r.csrf(root)
	post := func(csrfTok string, hdr map[string]string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, r.http.URL+"/api/boards/b1/maintenance", strings.NewReader(`{"on":true,"reason":"cable swap"}`))
		req.Header.Set("Content-Type", "application/json")
		if csrfTok != "" {
			req.Header.Set("X-CSRF-Token", csrfTok)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := root.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e.Error
	}
	if code, msg := post("", nil); code != 403 || !strings.Contains(msg, "CSRF") {
		t.Fatalf("without a CSRF token: %d %q", code, msg)
	}
	if code, msg := post(tok+"x", nil); code != 403 {
		t.Fatalf("with a wrong CSRF token: %d %q", code, msg)
	}
	if code, msg := post(tok, map[string]string{"Sec-Fetch-Site": "cross-site"}); code != 403 || !strings.Contains(msg, "another site") {
		t.Fatalf("from another site: %d %q", code, msg)
	}
	if code, msg := post(tok, map[string]string{"Origin": "http://evil.example"}); code != 403 || !strings.Contains(msg, "another origin") {
		t.Fatalf("from another origin: %d %q", code, msg)
	}
	if code, msg := post(tok, map[string]string{"Sec-Fetch-Site": "same-origin"}); code != 200 {
		t.Fatalf("root with the CSRF token: %d %q", code, msg)
	}
	if !strings.Contains(r.audit.all(), "request who=root (dashboard") || !strings.Contains(r.audit.all(), "missing or wrong CSRF token") {
		t.Fatalf("audit:\n%s", r.audit.all())
	}
	// bob, with his own CSRF token: refused, by the dashboard and (had it asked) by the
	// coordinator.
	bob := r.client("tok-bob")
	req, _ := http.NewRequest(http.MethodPost, r.http.URL+"/api/boards/b1/maintenance", strings.NewReader(`{"on":false}`))
	req.Header.Set("X-CSRF-Token", r.csrf(bob))
	resp, err := bob.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("bob sets maintenance: %s", resp.Status)
	}
	// Logging out needs the CSRF token too, and ends the session.
	req, _ = http.NewRequest(http.MethodPost, r.http.URL+"/logout", nil)
	req.Header.Set("X-CSRF-Token", r.csrf(bob))
	resp, err = bob.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if code := r.getJSON(bob, "/api/me", nil); resp.StatusCode != 200 || code != 401 {
		t.Fatalf("logout %s, then /api/me %d", resp.Status, code)
	}
	// Unknown tokens: refused (audited), and after ten within a minute the address waits.
	anon := r.client("")
	for i := range 12 {
		resp, err := anon.PostForm(r.http.URL+"/login", url.Values{"token": {fmt.Sprint("guess-", i)}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := http.StatusSeeOther
		if i >= 10 {
			want = http.StatusTooManyRequests
		}
		if resp.StatusCode != want || (want == http.StatusSeeOther && !strings.Contains(resp.Header.Get("Location"), "error=token")) {
			t.Fatalf("guess %d: %s %q", i, resp.Status, resp.Header.Get("Location"))
		}
	}
	if !strings.Contains(r.audit.all(), "a client token the coordinator does not know") {
		t.Fatalf("unknown tokens not audited:\n%s", r.audit.all())
	}
}

// A login's next page stays on the dashboard.
func TestLoginRedirectStaysLocal(t *testing.T) {
	for in, want := range map[string]string{"/lease/x?y=1": "/lease/x?y=1", "": "/", "//evil.example/": "/",
		"https://evil.example/": "/", "/\\evil.example": "/", "lease": "/", "/ok\r\nSet-Cookie: x": "/"} {
		if got := localPath(in); got != want {
			t.Errorf("localPath(%q) = %q, want %q", in, got, want)
		}
	}
}

// The dashboard refuses to start without client tokens: there would be no one to log in.
func TestNeedsClientTokens(t *testing.T) {
	c, err := coordinator.New(coordinator.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := New(Options{Coordinator: c}); err == nil || !strings.Contains(err.Error(), "--client-tokens") {
		t.Fatalf("New without client tokens: %v", err)
	}
}

// The shared watcher's duty cycle is bounded: a slow read makes it wait longer.
func TestWatcherWaitsInProportionToItsReads(t *testing.T) {
	for _, c := range []struct{ coalesce, took, want time.Duration }{
		{250 * time.Millisecond, time.Millisecond, 250 * time.Millisecond},
		{250 * time.Millisecond, 20 * time.Millisecond, 380 * time.Millisecond},
		{250 * time.Millisecond, 5 * time.Second, 10 * time.Second},
	} {
		if got := gap(c.coalesce, c.took); got != c.want {
			t.Errorf("gap(%s, %s) = %s, want %s", c.coalesce, c.took, got, c.want)
		}
		if d := float64(c.took) / float64(c.took+gap(c.coalesce, c.took)); d > maxDuty+1e-9 && c.took < 500*time.Millisecond {
			t.Errorf("duty %.3f for a read of %s", d, c.took)
		}
	}
}
