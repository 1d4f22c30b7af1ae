package tests

// An upstream Jumpstarter client, mirrored call by call in Go (upstream's Python client
// cannot be installed here: STACK.md). Each piece names the upstream code it follows
// (github.com/jumpstarter-dev/jumpstarter, python/packages/...). Nothing of upstream's
// code is copied: this is what it does on the wire.

import (
	"context"
	"encoding/json"
	"io"
	"path"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// upstreamClient is what jumpstarter/client/client.py client_from_path builds.
type upstreamClient struct {
	t    *testing.T
	conn *grpc.ClientConn
	ex   jpb.ExporterServiceClient
	rt   jpb.RouterServiceClient
	root *driverClient
}

// driverClient is one node of upstream's driver tree (client/base.py DriverClient).
type driverClient struct {
	uuid, class, description string
	labels, methods          map[string]string
	children                 map[string]*driverClient
}

// dialUpstream mirrors client.py client_from_path: a JUMPSTARTER_HOST that is not
// host:port is a Unix socket, reached with local credentials and no call metadata at
// all (the passphrase interceptors are for TCP only). Then client_from_channel.
func dialUpstream(t *testing.T, ctx context.Context, host string, allow []string) *upstreamClient {
	t.Helper()
	if _, port, ok := strings.Cut(host, ":"); ok {
		if _, err := strconv.Atoi(port); err == nil {
			t.Fatalf("JUMPSTARTER_HOST %q is a TCP address; the shell's is a Unix socket", host)
		}
	}
	conn, err := grpc.NewClient("unix://"+host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &upstreamClient{t: t, conn: conn, ex: jpb.NewExporterServiceClient(conn), rt: jpb.NewRouterServiceClient(conn)}
	c.root = c.buildTree(ctx, allow)
	return c
}

// Upstream's client classes that exist (the packages a Jumpstarter user has).
var upstreamClasses = map[string]bool{
	"jumpstarter_driver_composite.client.CompositeClient": true,
	"jumpstarter_driver_power.client.PowerClient":         true,
	"jumpstarter_driver_pyserial.client.PySerialClient":   true,
}

// buildTree mirrors client.py client_from_channel: GetReport; each report's parent must
// have come before it (last_seen[parent_uuid], a KeyError otherwise); the client class
// comes from the jumpstarter.dev/client label and must match the allow list
// (common/importlib.py import_class, fnmatch); children are named by their
// jumpstarter.dev/name label; the root is the last node in topological order.
func (c *upstreamClient) buildTree(ctx context.Context, allow []string) *driverClient {
	c.t.Helper()
	rep, err := c.ex.GetReport(ctx, &emptypb.Empty{})
	if err != nil {
		c.t.Fatalf("GetReport: %v", err)
	}
	if len(rep.GetReports()) == 0 {
		c.t.Fatal("GetReport has no driver reports: upstream's client fails (dictionary is empty)")
	}
	byUUID := map[string]*driverClient{}
	var order []*driverClient
	hasParent := map[*driverClient]bool{}
	for _, r := range rep.GetReports() {
		class := r.GetLabels()["jumpstarter.dev/client"]
		allowed := false
		for _, pat := range allow {
			if ok, _ := path.Match(pat, class); ok {
				allowed = true
			}
		}
		if !upstreamClasses[class] || !allowed {
			c.t.Fatalf("driver %s: client class %q is not one upstream has or not allowed by %v", r.GetUuid(), class, allow)
		}
		d := &driverClient{uuid: r.GetUuid(), class: class, description: r.GetDescription(), labels: r.GetLabels(),
			methods: r.GetMethodsDescription(), children: map[string]*driverClient{}}
		if p := r.GetParentUuid(); p != "" {
			parent, ok := byUUID[p]
			if !ok {
				c.t.Fatalf("driver %s names parent %s before it was reported (upstream: KeyError)", r.GetUuid(), p)
			}
			parent.children[r.GetLabels()["jumpstarter.dev/name"]] = d
			hasParent[d] = true
		}
		byUUID[d.uuid] = d
		order = append(order, d)
	}
	var root *driverClient
	for _, d := range order {
		if !hasParent[d] {
			if root != nil {
				c.t.Fatal("two roots in the driver tree")
			}
			root = d
		}
	}
	return root
}

// call mirrors client/core.py call_async: DriverCall by the driver's UUID, arguments as
// google.protobuf.Value (common/serde.py encode_value), the result decoded likewise.
func (c *upstreamClient) call(ctx context.Context, d *driverClient, method string, args ...*structpb.Value) (*structpb.Value, error) {
	r, err := c.ex.DriverCall(ctx, &jpb.DriverCallRequest{Uuid: d.uuid, Method: method, Args: args})
	if err != nil {
		return nil, err
	}
	return r.GetResult(), nil
}

// statusMonitor mirrors client/status_monitor.py StatusMonitor: a background poll of
// GetStatus (5 s timeout per call) every 0.3 s, every 0.1 s while someone waits, every
// 5 s while idle in LEASE_READY; it remembers the status, its message and version, and
// every status it saw.
type statusMonitor struct {
	c       *upstreamClient
	mu      sync.Mutex
	cur     jpb.ExporterStatus
	msg     string
	version uint64
	seen    []string // "STATUS: message", each change once
	waiters int
	changed chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func (c *upstreamClient) monitor(ctx context.Context) *statusMonitor {
	m := &statusMonitor{c: c, changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go m.loop(ctx)
	c.t.Cleanup(m.close)
	return m
}

func (m *statusMonitor) close() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

func (m *statusMonitor) loop(ctx context.Context) {
	defer close(m.done)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		r, err := m.c.ex.GetStatus(pctx, &jpb.GetStatusRequest{})
		cancel()
		m.mu.Lock()
		if err == nil {
			if r.GetStatus() != m.cur || m.version == 0 {
				m.seen = append(m.seen, strings.TrimPrefix(r.GetStatus().String(), "EXPORTER_STATUS_")+": "+r.GetMessage())
				close(m.changed)
				m.changed = make(chan struct{})
			}
			m.cur, m.msg, m.version = r.GetStatus(), r.GetMessage(), r.GetStatusVersion()
		}
		interval := 300 * time.Millisecond
		switch {
		case m.waiters > 0:
			interval = 100 * time.Millisecond
		case m.cur == jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY:
			interval = 5 * time.Second
		}
		m.mu.Unlock()
		// Upstream sleeps in chunks and polls at once when a waiter appears.
		t := time.NewTimer(interval)
		select {
		case <-t.C:
		case <-m.stop:
			t.Stop()
			return
		}
	}
}

// waitForAnyOf mirrors StatusMonitor.wait_for_any_of: the first of targets the poller
// sees, or UNSPECIFIED on timeout.
func (m *statusMonitor) waitForAnyOf(timeout time.Duration, targets ...jpb.ExporterStatus) (jpb.ExporterStatus, string) {
	m.mu.Lock()
	m.waiters++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.waiters--
		m.mu.Unlock()
	}()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		m.mu.Lock()
		cur, msg, changed := m.cur, m.msg, m.changed
		m.mu.Unlock()
		for _, t := range targets {
			if cur == t {
				return cur, msg
			}
		}
		select {
		case <-changed:
		case <-deadline.C:
			return jpb.ExporterStatus_EXPORTER_STATUS_UNSPECIFIED, ""
		}
	}
}

func (m *statusMonitor) history() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.seen...)
}

// logReader mirrors client/core.py log_stream_async: LogStream; a line without a
// source, or with one upstream does not know, is SYSTEM; hook lines are always kept,
// the others only with show_all_logs; each goes to the logger named for its source
// ("exporter:beforeLease", ...) at the level its severity names (Python's level names:
// WARNING, not WARN, or it falls back to INFO). When the stream ends or breaks it is
// opened again (0.1 s, doubling to 2 s, at most 10 times running).
type logReader struct {
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

var pythonLevels = map[string]bool{"DEBUG": true, "INFO": true, "WARNING": true, "ERROR": true, "CRITICAL": true}

func (c *upstreamClient) logStream(ctx context.Context, showAll bool) *logReader {
	lr := &logReader{done: make(chan struct{})}
	go func() {
		defer close(lr.done)
		delay := 100 * time.Millisecond
		for reconnects := 0; reconnects < 10 && ctx.Err() == nil; reconnects++ {
			stream, err := c.ex.LogStream(ctx, &emptypb.Empty{})
			for err == nil {
				var r *jpb.LogStreamResponse
				if r, err = stream.Recv(); err != nil {
					break
				}
				reconnects, delay = 0, 100*time.Millisecond
				src := "SYSTEM"
				if r.Source != nil {
					if name, ok := map[jpb.LogSource]string{jpb.LogSource_LOG_SOURCE_DRIVER: "driver",
						jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK: "beforeLease", jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK: "afterLease"}[r.GetSource()]; ok {
						src = name
					}
				}
				hook := src == "beforeLease" || src == "afterLease"
				if !hook && !showAll {
					continue
				}
				level := r.GetSeverity()
				if !pythonLevels[level] {
					level = "INFO(" + level + ")" // upstream: getattr(logging, severity, INFO)
				}
				lr.mu.Lock()
				lr.lines = append(lr.lines, "exporter:"+src+" "+level+" "+r.GetMessage())
				lr.mu.Unlock()
			}
			if status.Code(err) == codes.Canceled || status.Code(err) == codes.Unimplemented || ctx.Err() != nil {
				return
			}
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			delay = min(2*delay, 2*time.Second)
		}
	}()
	return lr
}

func (lr *logReader) all() []string {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return append([]string(nil), lr.lines...)
}

// waitLine waits until the log has a line equal to want.
func (lr *logReader) waitLine(t *testing.T, want string) {
	t.Helper()
	lr.wait(t, want, func(l string) bool { return l == want })
}

// waitPrefix waits until the log has a line starting with prefix.
func (lr *logReader) waitPrefix(t *testing.T, prefix string) {
	t.Helper()
	lr.wait(t, prefix+"...", func(l string) bool { return strings.HasPrefix(l, prefix) })
}

func (lr *logReader) wait(t *testing.T, want string, match func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for _, l := range lr.all() {
			if match(l) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q; got:\n%s", want, strings.Join(lr.all(), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// console mirrors client/core.py stream_async with the serial client's "connect"
// (jumpstarter_driver_pyserial client.py; its pexpect session goes through
// jumpstarter_driver_network's TcpPortforwardAdapter to the same stream): a
// RouterService.Stream whose metadata "request" is the JSON of common/streams.py
// DriverStreamRequest, the stream's headers awaited first, then streams/router.py
// RouterStream: bytes go as DATA frames; a GOAWAY frame is the end of the stream, PING
// is ignored.
type console struct {
	stream grpc.BidiStreamingClient[jpb.StreamRequest, jpb.StreamResponse]
	*consoleOutput
	from int           // where expect looks next
	gone chan struct{} // closed once the stream has ended
	eof  error         // why it ended, once gone is closed
}

func (c *upstreamClient) connect(ctx context.Context, serial *driverClient) *console {
	c.t.Helper()
	req, _ := json.Marshal(map[string]string{"kind": "driver", "uuid": serial.uuid, "method": "connect"})
	stream, err := c.rt.Stream(metadata.AppendToOutgoingContext(ctx, "request", string(req)))
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := stream.Header(); err != nil {
		c.t.Fatalf("console stream headers: %v", err)
	}
	con := &console{stream: stream, consoleOutput: newConsoleOutput(), gone: make(chan struct{})}
	go func() {
		defer close(con.gone)
		for {
			f, err := stream.Recv()
			switch {
			case err != nil:
				con.eof = err
				return
			case f.GetFrameType() == jpb.FrameType_FRAME_TYPE_GOAWAY:
				con.eof = io.EOF
				return
			case f.GetFrameType() == jpb.FrameType_FRAME_TYPE_DATA:
				con.Write(f.GetPayload())
			}
		}
	}()
	return con
}

func (con *console) send(t *testing.T, s string) {
	t.Helper()
	if err := con.stream.Send(&jpb.StreamRequest{Payload: []byte(s)}); err != nil {
		t.Fatal(err)
	}
}

// expect is pexpect's expect(): it waits for want in what the console sent since the
// last match, and consumes up to it.
func (con *console) expect(t *testing.T, want string) {
	t.Helper()
	end := con.find(con.from, want, wait, con.gone)
	if end < 0 {
		select {
		case <-con.gone:
			t.Fatalf("console ended (%v) before %q; it sent %q", con.eof, want, con.String()[con.from:])
		default:
			t.Fatalf("console never sent %q; it sent %q", want, con.String()[con.from:])
		}
	}
	con.from = end
}

// goaway is RouterStream.send_eof: a GOAWAY frame, then the end of the client's side.
func (con *console) goaway(t *testing.T) {
	t.Helper()
	if err := con.stream.Send(&jpb.StreamRequest{FrameType: jpb.FrameType_FRAME_TYPE_GOAWAY}); err != nil {
		t.Fatal(err)
	}
	con.stream.CloseSend()
}

// endSession mirrors client/core.py end_session_async: EndSession with a 5 s timeout.
func (c *upstreamClient) endSession(ctx context.Context) (*jpb.EndSessionResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return c.ex.EndSession(ctx, &jpb.EndSessionRequest{})
}

// isNull reports whether a result is upstream's None (encode_value(None)).
func isNull(v *structpb.Value) bool {
	_, ok := v.GetKind().(*structpb.Value_NullValue)
	return ok
}
