package tests

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// These tests run an upstream Jumpstarter client (upstream_client_test.go, mirroring
// upstream's python/packages/jumpstarter/jumpstarter/client and jumpstarter_cli/shell.py
// call by call) through the socket `boardvisor shell` serves, against the real
// binaries: a coordinator, a supervisor with a simulated board, and the shell.

const (
	statusReady       = jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY
	statusAvailable   = jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE
	statusBeforeHook  = jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK
	statusBeforeFail  = jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED
	statusAfterFailed = jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED
)

// upstreamLab starts a coordinator and a supervisor with one simulated board
// (virt-01, device=virt) and the given hooks (onFailure: endLease).
func upstreamLab(t *testing.T, dir, before, after string, superviseFlags ...string) (coordAddr string, leases pb.LeaseServiceClient) {
	t.Helper()
	coordAddr = freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, before, after, boardSpec{"virt-01", "device: virt"})
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	body = []byte(strings.Replace(string(body), "    labels: {device: virt}\n", "    labels: {device: virt}\n    drivers: {virtual: {}}\n", 1))
	if err := os.WriteFile(cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	sup := start(t, "supervisor", append([]string{"supervise", "--config", cfg}, superviseFlags...)...)
	sup.waitOutput("supervising")
	leases = leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)
	return coordAddr, leases
}

func fifo(t *testing.T, path string) string {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// openGate lets the one reader of a FIFO go on.
func openGate(t *testing.T, path string) {
	t.Helper()
	g, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteString("go\n")
	g.Close()
}

// waitAppears waits until path exists.
func waitAppears(t *testing.T, path string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited (%v) before %s appeared:\n%s", p.name, p.err, path, p.output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared:\n%s", path, p.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shellEnv starts `boardvisor shell` with a command that writes its environment to a
// file and waits on a gate, and returns the shell and that environment.
func shellEnv(t *testing.T, dir, coordAddr string, extra ...string) (*proc, map[string]string, string) {
	t.Helper()
	gate := fifo(t, filepath.Join(dir, "shell-gate"))
	envFile := filepath.Join(dir, "shell.env")
	script := "env > " + envFile + ".tmp && mv " + envFile + ".tmp " + envFile + "; read x < " + gate
	args := append([]string{"shell", "-l", "device=virt", "--coordinator", coordAddr, "--duration", "5m"}, extra...)
	sh := start(t, "shell", append(args, "--", "sh", "-c", script)...)
	waitAppears(t, envFile, sh)
	f, err := os.Open(envFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return sh, env, gate
}

func waitExit(t *testing.T, p *proc, want int) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(wait):
		t.Fatalf("%s did not exit:\n%s", p.name, p.output())
	}
	code := 0
	if p.err != nil {
		code = p.cmd.ProcessState.ExitCode()
	}
	if code != want {
		t.Fatalf("%s exited %d (%v), want %d:\n%s", p.name, code, p.err, want, p.output())
	}
}

// A normal lease, as upstream's `jmp shell` and then `j power ...`, `j serial` (a
// pexpect session) use it: jumpstarter_cli/shell.py _run_shell_with_lease_async.
func TestUpstreamClientNormalLease(t *testing.T) {
	dir := t.TempDir()
	before := `echo 'JMP_INFO: flashing'; echo 'Welcome to virt-01: images in /srv/images' > "$JMP_MOTD_FILE"`
	coordAddr, _ := upstreamLab(t, dir, before, "echo 'JMP_INFO: archiving'")
	sh, env, gate := shellEnv(t, dir, coordAddr)

	// What upstream's jmp shell puts in the shell (common/utils.py _build_common_env,
	// _lease_env_vars), and a socket only the user can reach.
	host := env["JUMPSTARTER_HOST"]
	if host == "" || env["JMP_EXPORTER"] != "virt-01" || env["JMP_LEASE"] == "" || env["JMP_EXPORTER_LABELS"] != "device=virt" || env["_JMP_SUPPRESS_DRIVER_WARNINGS"] != "1" {
		t.Fatalf("shell environment: %v", env)
	}
	if fi, err := os.Stat(host); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v, want a socket of mode 0600", host, fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(host)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v %v, want 0700", fi.Mode(), err)
	}
	if !strings.Contains(sh.output(), "Welcome to virt-01: images in /srv/images") {
		t.Fatalf("the shell did not print the motd:\n%s", sh.output())
	}

	ctx := ctxT(t)
	c := dialUpstream(t, ctx, host, strings.Split(env["JMP_DRIVERS_ALLOW"], ","))
	power, serial := c.root.children["power"], c.root.children["serial"]
	if c.root.class != "jumpstarter_driver_composite.client.CompositeClient" || power == nil || serial == nil ||
		power.class != "jumpstarter_driver_power.client.PowerClient" || serial.class != "jumpstarter_driver_pyserial.client.PySerialClient" {
		t.Fatalf("driver tree: root %+v", c.root)
	}
	// The shell's own status check, then logs and the status monitor together.
	if _, err := c.ex.GetStatus(ctx, &jpb.GetStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	logs := c.logStream(ctx, false)
	mon := c.monitor(ctx)
	st, msg := mon.waitForAnyOf(300*time.Second, statusReady, statusBeforeFail)
	if st != statusReady || msg != "Ready for commands" {
		t.Fatalf("waiting for the lease: %v %q (saw %v)", st, msg, mon.history())
	}
	// fetch_motd: GetReport after the beforeLease hook.
	if rep, err := c.ex.GetReport(ctx, &emptypb.Empty{}); err != nil || rep.GetMotd() != "Welcome to virt-01: images in /srv/images" {
		t.Fatalf("motd: %q %v", rep.GetMotd(), err)
	}

	// j power off / on (jumpstarter_driver_power client.py PowerClient): None results.
	for _, m := range []string{"off", "on"} {
		v, err := c.call(ctx, power, m)
		if err != nil || !isNull(v) {
			t.Fatalf("power %s: %v %v, want None", m, v, err)
		}
	}
	// An unknown method is NOT_FOUND (upstream's client: DriverMethodNotImplemented).
	if _, err := c.call(ctx, power, "explode"); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown method: %v, want NOT_FOUND", err)
	}
	// PowerClient.read streams readings; this board's power cannot measure them.
	rd, err := c.ex.StreamingDriverCall(ctx, &jpb.StreamingDriverCallRequest{Uuid: power.uuid, Method: "read"})
	if err == nil {
		_, err = rd.Recv()
	}
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("power read: %v, want UNIMPLEMENTED", err)
	}

	// A pexpect session on the serial console: the board boots again after the power
	// cycle, and is logged into.
	con := c.connect(ctx, serial)
	con.expect(t, "virt-01 login: ")
	con.send(t, "root\r")
	con.expect(t, "Password: ")
	con.send(t, "secret\r")
	con.expect(t, "root@virt-01:~# ")
	con.send(t, "echo upstream-was-here\r")
	con.expect(t, "upstream-was-here\r\nroot@virt-01:~# ")
	con.goaway(t)

	// The end of the session, as jmp shell ends it: EndSession, then wait for AVAILABLE
	// (or AFTER_LEASE_HOOK_FAILED) with the logs still streaming.
	r, err := c.endSession(ctx)
	if err != nil || !r.GetSuccess() || r.GetMessage() == "" {
		t.Fatalf("EndSession: %v %v", r, err)
	}
	st, msg = mon.waitForAnyOf(300*time.Second, statusAvailable, statusAfterFailed)
	if st != statusAvailable || msg != "Available for new lease" {
		t.Fatalf("after EndSession: %v %q (saw %v)", st, msg, mon.history())
	}
	logs.waitLine(t, "exporter:afterLease INFO archiving")
	// Every hook line once, the hooks' only (show_all_logs off), in order.
	if got := strings.Join(logs.all(), "\n"); got != "exporter:beforeLease INFO flashing\nexporter:afterLease INFO archiving" {
		t.Fatalf("hook log:\n%s", got)
	}
	openGate(t, gate)
	waitExit(t, sh, 0)
	if _, err := os.Stat(host); !os.IsNotExist(err) {
		t.Fatalf("the socket outlived the shell: %v", err)
	}
}

// A failing beforeLease hook: upstream's jmp shell polls through the lease's socket
// while the hook runs and stops on BEFORE_LEASE_HOOK_FAILED with the status message as
// the reason (jumpstarter_cli/shell.py: ExporterOfflineError(monitor.status_message)).
func TestUpstreamClientSeesBeforeLeaseFailure(t *testing.T) {
	dir := t.TempDir()
	hookGate := fifo(t, filepath.Join(dir, "hook-gate"))
	before := "echo 'JMP_INFO: flashing'; read x < " + hookGate + "; echo 'JMP_ERROR: checksum mismatch'; exit 3"
	coordAddr, _ := upstreamLab(t, dir, before, "echo 'JMP_INFO: archiving'")
	sock := filepath.Join(dir, "jumpstarter.sock")
	sh := start(t, "shell", "shell", "-l", "device=virt", "--coordinator", coordAddr, "--jumpstarter-socket", sock, "--", "true")
	waitAppears(t, sock, sh)

	ctx := ctxT(t)
	c := dialUpstream(t, ctx, sock, []string{"jumpstarter_driver_*"})
	logs := c.logStream(ctx, false)
	mon := c.monitor(ctx)
	if st, _ := mon.waitForAnyOf(wait, statusBeforeHook); st != statusBeforeHook {
		t.Fatalf("the poller never saw the hook run: %v", mon.history())
	}
	openGate(t, hookGate)
	st, msg := mon.waitForAnyOf(300*time.Second, statusReady, statusBeforeFail)
	if st != statusBeforeFail || msg != "beforeLease hook failed (on_failure=endLease): exit status 3" {
		t.Fatalf("the poller saw %v %q, want BEFORE_LEASE_HOOK_FAILED with the reason (saw %v)", st, msg, mon.history())
	}
	logs.waitLine(t, "exporter:beforeLease ERROR checksum mismatch")
	// A driver call can never succeed now; upstream's client maps it to ExporterNotReady.
	if _, err := c.call(ctx, c.root.children["power"], "on"); status.Code(err) != codes.FailedPrecondition && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("driver call after the failure: %v", err)
	}
	waitExit(t, sh, 1)
	for _, want := range []string{"[Hook ERROR] checksum mismatch", "beforeLease hook failed"} {
		if !strings.Contains(sh.output(), want) {
			t.Fatalf("shell output lacks %q:\n%s", want, sh.output())
		}
	}
}

// A failing afterLease hook: after EndSession upstream's jmp shell waits for AVAILABLE
// or AFTER_LEASE_HOOK_FAILED and reports the failure with the status message.
func TestUpstreamClientSeesAfterLeaseFailure(t *testing.T) {
	dir := t.TempDir()
	coordAddr, _ := upstreamLab(t, dir, "echo 'JMP_INFO: flashing'", "echo 'JMP_ERROR: upload failed'; exit 5")
	sh, env, gate := shellEnv(t, dir, coordAddr)
	ctx := ctxT(t)
	c := dialUpstream(t, ctx, env["JUMPSTARTER_HOST"], strings.Split(env["JMP_DRIVERS_ALLOW"], ","))
	logs := c.logStream(ctx, false)
	mon := c.monitor(ctx)
	if st, _ := mon.waitForAnyOf(300*time.Second, statusReady, statusBeforeFail); st != statusReady {
		t.Fatalf("lease not ready: %v", mon.history())
	}
	if r, err := c.endSession(ctx); err != nil || !r.GetSuccess() {
		t.Fatalf("EndSession: %v %v", r, err)
	}
	st, msg := mon.waitForAnyOf(300*time.Second, statusAvailable, statusAfterFailed)
	if st != statusAfterFailed || msg != "afterLease hook failed (on_failure=endLease): exit status 5" {
		t.Fatalf("the poller saw %v %q, want AFTER_LEASE_HOOK_FAILED with the reason (saw %v)", st, msg, mon.history())
	}
	logs.waitLine(t, "exporter:afterLease ERROR upload failed")
	openGate(t, gate)
	waitExit(t, sh, 0)
}

// A client that comes after the lease ended (here the coordinator ended it while the
// shell's command still ran): it still builds its tree, and reads the lease's whole log
// and its final status with the lease's token, which the socket sends for it.
func TestUpstreamClientJoinsAfterLeaseEnded(t *testing.T) {
	dir := t.TempDir()
	coordAddr, leases := upstreamLab(t, dir, "echo 'JMP_WARN: flash is slow'", "echo 'JMP_INFO: archiving'")
	sh, env, gate := shellEnv(t, dir, coordAddr)
	ctx := ctxT(t)
	if _, err := leases.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: env["JMP_LEASE"], Reason: "test ends it"}); err != nil {
		t.Fatal(err)
	}
	waitBoards(t, leases, 1)
	waitLeaseDone(t, ctx, leases, env["JMP_LEASE"])

	c := dialUpstream(t, ctx, env["JUMPSTARTER_HOST"], strings.Split(env["JMP_DRIVERS_ALLOW"], ","))
	st, err := c.ex.GetStatus(ctx, &jpb.GetStatusRequest{})
	if err != nil || st.GetStatus() != statusAvailable || st.GetMessage() != "Available for new lease" {
		t.Fatalf("late GetStatus: %v %v", st, err)
	}
	logs := c.logStream(ctx, true)
	logs.waitLine(t, "exporter:afterLease INFO archiving")
	logs.waitPrefix(t, "exporter:SYSTEM INFO lease DONE")
	// Were the stream to end here, upstream's client would open it again 0.1 s later
	// and read the whole log once more: give it the time to.
	time.Sleep(time.Second)
	hooks := []string{}
	for _, l := range logs.all() {
		if strings.HasPrefix(l, "exporter:beforeLease") || strings.HasPrefix(l, "exporter:afterLease") {
			hooks = append(hooks, l)
		}
	}
	if got := strings.Join(hooks, "\n"); got != "exporter:beforeLease WARNING flash is slow\nexporter:afterLease INFO archiving" {
		t.Fatalf("late reader's hook log (each line once):\n%s\nall:\n%s", got, strings.Join(logs.all(), "\n"))
	}
	// Driver calls are over.
	if _, err := c.call(ctx, c.root.children["power"], "on"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("driver call after the end: %v, want PERMISSION_DENIED", err)
	}
	openGate(t, gate)
	select {
	case <-sh.done:
	case <-time.After(wait):
		t.Fatal("shell did not exit")
	}
}

func waitLeaseDone(t *testing.T, ctx context.Context, leases pb.LeaseServiceClient, id string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		r, err := leases.GetLease(ctx, &pb.GetLeaseRequest{Id: id})
		if err == nil && (r.GetLease().GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE || r.GetLease().GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease %s never ended: %v %v", id, r, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The supervisor's own upstream-style endpoints, one per board (jumpstarter_cli's
// `JUMPSTARTER_HOST=<socket> j ...` and `jmp shell --tls-grpc HOST:PORT --passphrase`):
// on the per-board Unix socket whoever can open it acts for the board's lease, and may
// drive the board only while that lease is READY; on the per-board TCP address the
// lease token is required, sent as upstream's passphrase (exporter/auth.py's
// x-jumpstarter-passphrase).
func TestUpstreamClientOnPerBoardEndpoints(t *testing.T) {
	dir := t.TempDir()
	socks := filepath.Join(dir, "boards")
	tcp := freeAddr(t)
	coordAddr, _ := upstreamLab(t, dir, "echo 'JMP_INFO: flashing'", "", "--jumpstarter-socket-dir", socks, "--jumpstarter-listen", "virt-01="+tcp)
	sock := filepath.Join(socks, "virt-01.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("per-board socket: %v %v, want mode 0600", fi, err)
	}
	ctx := ctxT(t)
	c := dialUpstream(t, ctx, sock, []string{"jumpstarter_driver_*"})
	power := c.root.children["power"]
	// No lease: the board is described, its status read, but not driven.
	if st, err := c.ex.GetStatus(ctx, &jpb.GetStatusRequest{}); err != nil || st.GetStatus() != statusAvailable {
		t.Fatalf("status with no lease: %v %v", st, err)
	}
	if _, err := c.call(ctx, power, "on"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("driver call with no lease: %v, want FAILED_PRECONDITION", err)
	}
	sh, env, gate := shellEnv(t, dir, coordAddr)
	mon := c.monitor(ctx)
	if st, _ := mon.waitForAnyOf(wait, statusReady); st != statusReady {
		t.Fatalf("lease not seen READY on the board's socket: %v", mon.history())
	}
	if v, err := c.call(ctx, power, "on"); err != nil || !isNull(v) {
		t.Fatalf("power on through the board's socket: %v %v", v, err)
	}
	// TCP: the lease token as upstream's passphrase, nothing else.
	tc, err := grpc.NewClient(tcp, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	ex := jpb.NewExporterServiceClient(tc)
	req := &jpb.DriverCallRequest{Uuid: power.uuid, Method: "off"}
	if _, err := ex.DriverCall(ctx, req); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("TCP endpoint without a passphrase: %v, want UNAUTHENTICATED", err)
	}
	if _, err := ex.DriverCall(metadata.AppendToOutgoingContext(ctx, "x-jumpstarter-passphrase", "not-the-token"), req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("TCP endpoint with a wrong passphrase: %v, want PERMISSION_DENIED", err)
	}
	if _, err := ex.DriverCall(metadata.AppendToOutgoingContext(ctx, "x-jumpstarter-passphrase", env["BOARDVISOR_TOKEN"]), req); err != nil {
		t.Fatalf("TCP endpoint with the lease token: %v", err)
	}
	openGate(t, gate)
	waitExit(t, sh, 0)
	if _, err := c.call(ctx, power, "on"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("driver call on the board's socket after the lease: %v, want FAILED_PRECONDITION", err)
	}
}
