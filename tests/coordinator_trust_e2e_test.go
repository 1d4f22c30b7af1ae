package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// trustTokens writes a client tokens file: alice and bob are users, root an admin.
func trustTokens(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "client-tokens")
	if err := os.WriteFile(path, []byte("alice tok-alice-1\nbob tok-bob-2\nroot tok-root-3 admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// userCtx is ctx carrying a user token.
func userCtx(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// auditLog reads a coordinator's audit.jsonl.
func auditLog(t *testing.T, stateDir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A second coordinator on one state directory is refused, and names the first's pid.
func TestCoordinatorStateDirLocked(t *testing.T) {
	stateDir := filepath.Join(t.TempDir(), "coord")
	first := startCoordinator(t, freeAddr(t), stateDir)
	out, err := exec.Command(binary, "coordinator", "--listen", freeAddr(t), "--state-dir", stateDir).CombinedOutput()
	want := fmt.Sprintf("in use by another coordinator (pid %d)", first.cmd.Process.Pid)
	if err == nil || !strings.Contains(string(out), want) {
		t.Fatalf("second coordinator on %s: %v\n%s\nwant an error saying %q", stateDir, err, out, want)
	}
	// kill -9 leaves no stale lock behind.
	first.kill()
	startCoordinator(t, freeAddr(t), stateDir)
}

// Two real supervisors with one ID: the second is refused with a message naming both
// peers, and the first keeps its boards.
func TestCoordinatorDuplicateSupervisorID(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	startCoordinator(t, addr, filepath.Join(dir, "coord"))
	first := ceLabConfig(t, filepath.Join(dir, "one"), "lab-dup", addr, "", "", boardSpec{"dup-a", "device: rpi4"}, boardSpec{"dup-b", "device: rpi4"})
	startSupervisor(t, "first", first)
	c := leaseClient(t, addr)
	waitBoards(t, c, 2)
	second := ceLabConfig(t, filepath.Join(dir, "two"), "lab-dup", addr, "", "", boardSpec{"dup-z", "device: qemu"})
	p := startSupervisor(t, "second", second)
	line := p.ceWaitLine(`already connected from 127.0.0.1:`)
	if !strings.Contains(line, "refused the connection from 127.0.0.1:") {
		t.Fatalf("the refusal does not name both peers: %s", line)
	}
	bs := ceBoardStatuses(t, c)
	if len(bs) != 2 || bs["dup-a"] != "AVAILABLE" || bs["dup-b"] != "AVAILABLE" {
		t.Fatalf("boards after the duplicate: %v", bs)
	}
	l, err := ceCreateLease(ctxT(t), c, "device=rpi4", "", time.Minute, "dup")
	if err != nil {
		t.Fatal(err)
	}
	w, err := ceWatchLease(ctxT(t), c, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatalf("a lease on the live supervisor's board: %v", err)
	}
}

// A user's release of another user's lease is refused and lands in audit.jsonl; a
// client name with a NUL byte is refused with a clear error and the board stays healthy.
func TestCoordinatorRefusalsAuditedAndInputChecked(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	startCoordinator(t, addr, stateDir, "--client-tokens", trustTokens(t, dir))
	cfg := supervisorConfig(t, dir, "lab-1", addr, "echo hook for $CLIENT_NAME", "", boardSpec{"rpi-1", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, addr)
	waitBoardsAs(t, c, "tok-root-3", 1)

	_, err := c.CreateLease(userCtx(ctxT(t), "tok-alice-1"), &pb.CreateLeaseRequest{Board: "rpi-1", Duration: durationpb.New(time.Minute), ClientName: "ali\x00ce"})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `client_name "ali\x00ce" has the control character U+0000`) {
		t.Fatalf("NUL client name: %v", err)
	}
	r, err := c.CreateLease(userCtx(ctxT(t), "tok-alice-1"), &pb.CreateLeaseRequest{Board: "rpi-1", Duration: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	w, err := ceWatchLease(userCtx(ctxT(t), "tok-alice-1"), c, r.GetLease().GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatalf("the board after the refused name: %v", err)
	}
	_, err = c.ReleaseLease(userCtx(ctxT(t), "tok-bob-2"), &pb.ReleaseLeaseRequest{Id: r.GetLease().GetId()})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob releases alice's lease: %v", err)
	}
	_, err = c.ExtendLease(userCtx(ctxT(t), "tok-bob-2"), &pb.ExtendLeaseRequest{Id: r.GetLease().GetId(), By: durationpb.New(time.Minute)})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob extends alice's lease: %v", err)
	}
	audit := auditLog(t, stateDir)
	for _, want := range []string{
		`"who":"bob"`, "release lease " + r.GetLease().GetId() + " of alice", "extend lease " + r.GetLease().GetId() + " of alice",
		`client_name \"ali\\x00ce\"`,
	} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit.jsonl lacks %q:\n%s", want, audit)
		}
	}
}

// No lease token is ever in the coordinator's database files, ended leases included;
// each token's SHA-256 is (what the supervisor needs).
func TestCoordinatorKeepsNoTokens(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	coord := startCoordinator(t, addr, stateDir)
	cfg := supervisorConfig(t, dir, "lab-1", addr, "", "", boardSpec{"tok-1", "device: rpi4"}, boardSpec{"tok-2", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, addr)
	waitBoards(t, c, 2)
	var tokens []string
	for i := range 4 {
		l, err := ceCreateLease(ctxT(t), c, "device=rpi4", "", time.Minute, "keeper")
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, l.GetToken())
		w, err := ceWatchLease(ctxT(t), c, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.ready(); err != nil {
			t.Fatal(err)
		}
		if i < 3 { // the last stays live
			if _, err := c.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId()}); err != nil {
				t.Fatal(err)
			}
			if _, err := w.done(); err != nil {
				t.Fatal(err)
			}
		}
	}
	scan := func(when string) {
		var files []byte
		for _, name := range []string{"coordinator.db", "coordinator.db-wal", "coordinator.db-shm"} {
			b, err := os.ReadFile(filepath.Join(stateDir, name))
			if err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			files = append(files, b...)
		}
		for _, tok := range tokens {
			if bytes.Contains(files, []byte(tok)) {
				t.Errorf("%s: a lease token is in the coordinator's database files", when)
			}
			if !bytes.Contains(files, []byte(jobs.TokenHash(tok))) {
				t.Errorf("%s: the token's hash is not in the database files (is the scan reading them?)", when)
			}
		}
	}
	scan("while running")
	coord.ceTerminate()
	scan("after a clean stop")
}

// 20,000 WatchLease streams from one user (on another's lease, then on its own): capped
// with a clear error, the coordinator's memory stays bounded, the audit log is not
// flooded, and another user is still served.
func TestCoordinatorWatchFlood(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	// The connections' cap is not what this test is about: one client, 100 connections.
	coord := startCoordinator(t, addr, stateDir, "--client-tokens", trustTokens(t, dir), "--max-watches-per-user", "64",
		"--max-unauthenticated-per-peer", "200")
	cfg := supervisorConfig(t, dir, "lab-1", addr, "", "", boardSpec{"w-1", "device: rpi4"}, boardSpec{"w-2", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	c := leaseClient(t, addr)
	waitBoardsAs(t, c, "tok-root-3", 2)
	alices, err := c.CreateLease(userCtx(ctxT(t), "tok-alice-1"), &pb.CreateLeaseRequest{Board: "w-1", Duration: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	bobs, err := c.CreateLease(userCtx(ctxT(t), "tok-bob-2"), &pb.CreateLeaseRequest{Board: "w-2", Duration: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	rss := func() int64 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", coord.cmd.Process.Pid))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
		return 0
	}
	before := rss()
	var peak atomic.Int64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), rss()))
			select {
			case <-stopSampling:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	const conns, perConn = 100, 200 // 20,000 streams; gRPC allows 256 a connection
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var open, denied, exhausted, other atomic.Int64
	var firstOther atomic.Value
	var apis []pb.LeaseServiceClient
	for range conns {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		apis = append(apis, pb.NewLeaseServiceClient(cc))
	}
	// Half on another user's lease, then half on her own.
	flood := func(target string) {
		var wg sync.WaitGroup
		for i := range conns / 2 {
			api := apis[i]
			wg.Add(1)
			go func() {
				defer wg.Done()
				var streams sync.WaitGroup
				for range perConn {
					streams.Add(1)
					go func() {
						defer streams.Done()
						s, err := api.WatchLease(userCtx(ctx, "tok-alice-1"), &pb.WatchLeaseRequest{Id: target})
						if err == nil {
							_, err = s.Recv()
						}
						switch status.Code(err) {
						case codes.OK:
							open.Add(1) // held open until the test ends
						case codes.PermissionDenied:
							denied.Add(1)
						case codes.ResourceExhausted:
							exhausted.Add(1)
							if !strings.Contains(status.Convert(err).Message(), "user alice has 64 lease watches open, the most allowed per user") {
								firstOther.CompareAndSwap(nil, err.Error())
							}
						default:
							other.Add(1)
							firstOther.CompareAndSwap(nil, err.Error())
						}
					}()
				}
				streams.Wait()
			}()
		}
		wg.Wait()
	}
	flood(bobs.GetLease().GetId())
	flood(alices.GetLease().GetId())
	// bob is still served while alice's 64 streams are open.
	bw, err := ceWatchLease(userCtx(ctxT(t), "tok-bob-2"), c, bobs.GetLease().GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bw.ready(); err != nil {
		t.Fatalf("another user while alice floods: %v", err)
	}
	close(stopSampling)
	<-sampled
	t.Logf("streams: %d open, %d refused (another's lease), %d capped, %d other; coordinator RSS %d kB before, %d kB at most",
		open.Load(), denied.Load(), exhausted.Load(), other.Load(), before, peak.Load())
	if open.Load() != 64 || denied.Load() != conns/2*perConn || exhausted.Load() != conns/2*perConn-64 || other.Load() != 0 {
		t.Errorf("want 64 open, %d refused and %d capped: %d, %d, %d, %d others (%v)", conns/2*perConn, conns/2*perConn-64,
			open.Load(), denied.Load(), exhausted.Load(), other.Load(), firstOther.Load())
	}
	if peak.Load()-before > 200*1024 {
		t.Errorf("coordinator RSS grew from %d kB to %d kB under the flood", before, peak.Load())
	}
	if fi, err := os.Stat(filepath.Join(stateDir, "audit.jsonl")); err != nil || fi.Size() > 256<<10 {
		t.Errorf("audit log after 20,000 refusals: %v bytes, %v", fi.Size(), err)
	}
	if a := auditLog(t, stateDir); !strings.Contains(a, "not recorded one by one") || !strings.Contains(a, "lease watches open") {
		t.Errorf("the audit log does not say the flood was refused:\n%s", a)
	}
}

// Go's profiler on the metrics listener is off unless --pprof, and admins only with
// client tokens.
func TestCoordinatorProfilerAdminOnly(t *testing.T) {
	dir := t.TempDir()
	metrics := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	startCoordinator(t, freeAddr(t), stateDir, "--client-tokens", trustTokens(t, dir), "--metrics", metrics, "--pprof")
	get := func(addr, token string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/debug/pprof/", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for tok, want := range map[string]int{"": 401, "tok-forged": 401, "tok-bob-2": 403, "tok-root-3": 200} {
		if got := get(metrics, tok); got != want {
			t.Errorf("GET /debug/pprof/ with token %q: %d, want %d", tok, got, want)
		}
	}
	if !strings.Contains(auditLog(t, stateDir), "not an admin: /debug/pprof/") {
		t.Errorf("refused profiler access not audited")
	}
	off := freeAddr(t)
	startCoordinator(t, freeAddr(t), filepath.Join(dir, "coord2"), "--metrics", off)
	if got := get(off, ""); got != 404 {
		t.Errorf("profiler without --pprof: %d, want 404", got)
	}
}

// With authentication on, one address holds at most --max-unauthenticated-per-peer
// connections on which no call presented a valid token, each for --auth-deadline;
// another address is served meanwhile.
func TestCoordinatorUnauthenticatedConnectionsCapped(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	startCoordinator(t, addr, stateDir, "--client-tokens", trustTokens(t, dir), "--max-unauthenticated-per-peer", "4", "--auth-deadline", "2s")
	var idle []net.Conn
	for range 20 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idle = append(idle, conn)
	}
	closedWithin := func(conn net.Conn, d time.Duration) bool {
		conn.SetReadDeadline(time.Now().Add(d))
		for {
			if _, err := conn.Read(make([]byte, 4096)); err != nil {
				return err == io.EOF || strings.Contains(err.Error(), "reset")
			}
		}
	}
	var closedNow atomic.Int64 // checked at once, well within the 2s deadline
	var checks sync.WaitGroup
	for _, conn := range idle {
		checks.Add(1)
		go func() {
			defer checks.Done()
			if closedWithin(conn, time.Second) {
				closedNow.Add(1)
			}
		}()
	}
	checks.Wait()
	closed := int(closedNow.Load())
	if closed != 16 {
		t.Errorf("%d of 20 idle connections from one address closed at once, want 16", closed)
	}
	c := leaseClient(t, addr)
	if _, err := c.ListBoards(userCtx(ctxT(t), "tok-bob-2"), &pb.ListBoardsRequest{}); err != nil {
		t.Fatalf("another address while one floods: %v", err)
	}
	for i, conn := range idle {
		if !closedWithin(conn, 10*time.Second) {
			t.Errorf("idle connection %d still open long after the deadline", i)
		}
	}
	// The refusal at the deadline is audited as the connection closes, perhaps just after
	// the client saw it close.
	eventually(t, "both refusals in the audit log", func() bool {
		a := auditLog(t, stateDir)
		return strings.Contains(a, "too many unauthenticated connections") && strings.Contains(a, "not authenticated within 2s")
	})
}
