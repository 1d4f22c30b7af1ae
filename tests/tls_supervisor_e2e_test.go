package tests

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/connector/tlsconf/tlstest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The supervisors' client service over TLS (the config's tls block), with the real
// binaries: a coordinator and a supervisor with a simulated board, certificates made by
// the test with crypto/x509 (connector/tlsconf/tlstest).

// tlsLeaseClient is a client of a TLS coordinator, checking it against caFile.
func tlsLeaseClient(t *testing.T, addr, caFile string) pb.LeaseServiceClient {
	t.Helper()
	conf, err := tlsconf.Client{CAFile: caFile}.Config()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewLeaseServiceClient(conn)
}

// readEnvFile reads the `env` output a lease's shell wrote.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
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
	return env
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tlsLab is a TLS coordinator and a supervisor whose client service and per-board TCP
// endpoint serve TLS, all signed by one CA; its beforeLease hook power-cycles the board
// through the client service.
type tlsLab struct {
	dir, caFile, coordAddr, boardTCP string
	ca                               *tlstest.CA
	sup                              *proc
	leases                           pb.LeaseServiceClient
}

func startTLSLab(t *testing.T, clientCA bool) *tlsLab {
	t.Helper()
	l := &tlsLab{dir: t.TempDir(), ca: tlstest.NewCA(t, "lab CA")}
	l.caFile = l.ca.WriteCA(t, l.dir, "ca.pem")
	coordCert, coordKey := l.ca.WriteLeaf(t, l.dir, "coordinator", tlstest.Localhost("coordinator"))
	supCert, supKey := l.ca.WriteLeaf(t, l.dir, "lab-tls", tlstest.Localhost("lab-tls"))
	l.coordAddr = freeAddr(t)
	startCoordinator(t, l.coordAddr, filepath.Join(l.dir, "coord"), "--tls-cert", coordCert, "--tls-key", coordKey)
	lc := labConfig{dir: l.dir, id: "lab-tls", coordAddr: l.coordAddr, caFile: l.caFile, tlsCert: supCert, tlsKey: supKey, virtual: true,
		before: `"$BOARDVISOR_CLI" power cycle && echo "JMP_INFO: cycled over TLS"`, boards: []boardSpec{{"virt-01", "device: virt"}}}
	if clientCA {
		lc.tlsClientCA = l.caFile
	}
	cfg := lc.write(t)
	l.boardTCP = freeAddr(t)
	l.sup = start(t, "supervisor", "supervise", "--config", cfg, "--jumpstarter-listen", "virt-01="+l.boardTCP)
	l.sup.waitLine("supervising", "tls=true")
	l.leases = tlsLeaseClient(t, l.coordAddr, l.caFile)
	waitBoards(t, l.leases, 1)
	return l
}

// leaseShellScript is what a test runs in a lease's shell: the driver commands, each
// one's output in a file of dir, the environment, then a wait on the gate.
func leaseShellScript(dir, gate string) string {
	return binary + " power cycle > " + dir + "/power.out 2>&1; echo \"power=$?\" >> " + dir + "/power.out; " +
		"timeout 3 " + binary + " console > " + dir + "/console.out 2>&1; " +
		"timeout 2 " + binary + " logs -f > " + dir + "/logs.out 2>&1; " +
		"env > " + dir + "/env.tmp && mv " + dir + "/env.tmp " + dir + "/env; read x < " + gate
}

// TestClientsReachATLSSupervisor: with one CA file (given to the shell as --ca-file
// alone), the shell reaches the TLS coordinator and the TLS supervisor; the commands in
// the lease's shell (power, console, logs -f) reach the supervisor with the CA the
// shell passed on; the beforeLease hook calls its drivers over TLS (with the pin the
// supervisor gave it); upstream's client reaches the board through the shell's
// Jumpstarter socket, and the per-board TCP endpoint serves TLS only.
func TestClientsReachATLSSupervisor(t *testing.T) {
	l := startTLSLab(t, false)
	lb, err := l.leases.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil || len(lb.GetBoards()) != 1 || !strings.HasPrefix(lb.GetBoards()[0].GetEndpoint(), "tls://127.0.0.1:") {
		t.Fatalf("the board's endpoint as the coordinator tells it: %v %v, want tls://127.0.0.1:PORT", lb, err)
	}
	gate := fifo(t, filepath.Join(l.dir, "gate"))
	sh := start(t, "shell", "shell", "-l", "device=virt", "--coordinator", l.coordAddr, "--ca-file", l.caFile,
		"--duration", "5m", "--", "sh", "-c", leaseShellScript(l.dir, gate))
	waitAppears(t, filepath.Join(l.dir, "env"), sh)
	env := readEnvFile(t, filepath.Join(l.dir, "env"))
	if !strings.HasPrefix(env["BOARDVISOR_EXPORTER"], "tls://127.0.0.1:") || env["BOARDVISOR_CA_FILE"] != l.caFile {
		t.Fatalf("the lease's shell has BOARDVISOR_EXPORTER=%q BOARDVISOR_CA_FILE=%q", env["BOARDVISOR_EXPORTER"], env["BOARDVISOR_CA_FILE"])
	}
	if p := readFile(t, filepath.Join(l.dir, "power.out")); !strings.Contains(p, "board virt-01: power cycle") || !strings.Contains(p, "power=0") {
		t.Fatalf("power cycle in the lease's shell:\n%s", p)
	}
	if c := readFile(t, filepath.Join(l.dir, "console.out")); !strings.Contains(c, "virt-01 login:") {
		t.Fatalf("console in the lease's shell did not show the board booting:\n%q", c)
	}
	if lg := readFile(t, filepath.Join(l.dir, "logs.out")); !strings.Contains(lg, "cycled over TLS") || !strings.Contains(lg, "lease READY") {
		t.Fatalf("logs -f in the lease's shell:\n%s", lg)
	}

	// Upstream's client, through the shell's socket (the shell's proxy dials the
	// supervisor over TLS).
	ctx := ctxT(t)
	up := dialUpstream(t, ctx, env["JUMPSTARTER_HOST"], []string{"jumpstarter_driver_*"})
	if st, err := up.ex.GetStatus(ctx, &jpb.GetStatusRequest{}); err != nil || st.GetStatus() != statusReady {
		t.Fatalf("status through the Jumpstarter socket: %v %v", st, err)
	}
	if v, err := up.call(ctx, up.root.children["power"], "on"); err != nil || !isNull(v) {
		t.Fatalf("power on through the Jumpstarter socket: %v %v", v, err)
	}

	// The per-board TCP endpoint: TLS with the CA and the lease token; plaintext fails.
	withToken := metadata.AppendToOutgoingContext(ctx, "x-jumpstarter-passphrase", env["BOARDVISOR_TOKEN"])
	conf, err := tlsconf.Client{CAFile: l.caFile}.Config()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		ok    bool
	}{{"TLS", credentials.NewTLS(conf), true}, {"plaintext", insecure.NewCredentials(), false}} {
		conn, err := grpc.NewClient(l.boardTCP, grpc.WithTransportCredentials(tc.creds))
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithTimeout(withToken, wait/3)
		st, err := jpb.NewExporterServiceClient(conn).GetStatus(cctx, &jpb.GetStatusRequest{})
		cancel()
		conn.Close()
		if tc.ok != (err == nil) || (tc.ok && st.GetStatus() != statusReady) {
			t.Errorf("per-board TCP endpoint over %s: %v %v", tc.name, st, err)
		}
	}
	openGate(t, gate)
	waitExit(t, sh, 0)
	if out := sh.output(); !strings.Contains(out, "[Hook INFO] cycled over TLS") || !strings.Contains(out, "Connected to device.") {
		t.Fatalf("the shell's dialogue:\n%s", out)
	}
}

// TestTLSClientWithoutTheCAIsRefused: a coordinator in plaintext, a supervisor serving
// TLS with a certificate of a CA the client does not have: the shell says, in one
// sentence, that the supervisor's certificate is not signed by a CA it trusts and what
// to give, withdraws the lease and exits 3; `boardvisor power` with the lease's
// endpoint says the same. No transport error text reaches the user.
func TestTLSClientWithoutTheCAIsRefused(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "lab CA")
	supCert, supKey := ca.WriteLeaf(t, dir, "lab-tls", tlstest.Localhost("lab-tls"))
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := labConfig{dir: dir, id: "lab-tls", coordAddr: coordAddr, tlsCert: supCert, tlsKey: supKey, virtual: true,
		boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	out, err := runShell(t, coordAddr, "shell", "-l", "device=virt", "--", "true")
	t.Logf("shell without the CA:\n%s", out)
	const sentence = "is not signed by a CA you trust (no CA file given: the system's CAs were used): give --ca-file FILE (or $BOARDVISOR_CA_FILE, or caFile: in "
	if code := exitCode(err); code != 3 || !strings.Contains(out, "connect to board virt-01: the supervisor's certificate (at tls://127.0.0.1:") ||
		!strings.Contains(out, sentence) {
		t.Fatalf("shell without the CA: exit %d (%v), want 3 and the sentence:\n%s", code, err, out)
	}
	for _, raw := range []string{"x509", "rpc error", "transport:", "desc ="} {
		if strings.Contains(out, raw) {
			t.Errorf("the shell's output has the transport's words %q:\n%s", raw, out)
		}
	}
	if strings.Contains(out, "Connected to device.") {
		t.Fatalf("the board was handed over:\n%s", out)
	}
	// The lease was withdrawn: the board takes the next.
	waitBoards(t, leases, 1)

	// The driver commands, given the lease's endpoint.
	l, ready := readyLease(t, leases, "device=virt", "tls-test")
	out, err = runCLI([]string{"BOARDVISOR_EXPORTER=" + ready.GetExporterEndpoint(), "BOARDVISOR_BOARD=virt-01", "BOARDVISOR_TOKEN=" + l.GetToken()}, "power", "on")
	if code := exitCode(err); code != 3 || !strings.Contains(out, "power on of board virt-01: the supervisor's certificate (at tls://") || !strings.Contains(out, sentence) {
		t.Fatalf("power without the CA: exit %d, want 3 and the sentence:\n%s", code, out)
	}
}

// TestTLSSupervisorRequiresClientCertificates: with tls.clientCAFile, a client without a
// certificate of that CA is refused in one sentence that says what to give, a client
// with one is served, and a hook's driver calls (with its hook token, no certificate)
// are served too.
func TestTLSSupervisorRequiresClientCertificates(t *testing.T) {
	l := startTLSLab(t, true)
	out, err := runCLI(coordEnv(l.coordAddr, ""), "shell", "-l", "device=virt", "--ca-file", l.caFile, "--", "true")
	t.Logf("shell without a client certificate:\n%s", out)
	if code := exitCode(err); code != 4 || !strings.Contains(out, "takes calls only with a client certificate signed by its clients' CA (no client certificate): give yours with --cert-file and --key-file") {
		t.Fatalf("shell without a client certificate: exit %d, want 4 and the sentence:\n%s", code, out)
	}
	// A certificate of another CA is no better.
	other := tlstest.NewCA(t, "another CA")
	badCert, badKey := other.WriteLeaf(t, l.dir, "mallory", tlstest.Leaf{CN: "mallory", Client: true})
	out, err = runCLI(coordEnv(l.coordAddr, ""), "shell", "-l", "device=virt", "--ca-file", l.caFile, "--cert-file", badCert, "--key-file", badKey, "--", "true")
	if code := exitCode(err); code != 4 || !strings.Contains(out, "client certificate not signed by the CA this service trusts") {
		t.Fatalf("shell with another CA's certificate: exit %d, want 4:\n%s", code, out)
	}
	cert, key := l.ca.WriteLeaf(t, l.dir, "alice", tlstest.Leaf{CN: "alice", Client: true})
	gate := fifo(t, filepath.Join(l.dir, "gate"))
	sh := start(t, "shell", "shell", "-l", "device=virt", "--coordinator", l.coordAddr, "--ca-file", l.caFile,
		"--cert-file", cert, "--key-file", key, "--duration", "5m", "--", "sh", "-c", leaseShellScript(l.dir, gate))
	waitAppears(t, filepath.Join(l.dir, "env"), sh)
	if p := readFile(t, filepath.Join(l.dir, "power.out")); !strings.Contains(p, "power=0") {
		t.Fatalf("power cycle in the lease's shell with the shell's client certificate:\n%s", p)
	}
	env := readEnvFile(t, filepath.Join(l.dir, "env"))
	ctx := ctxT(t)
	up := dialUpstream(t, ctx, env["JUMPSTARTER_HOST"], []string{"jumpstarter_driver_*"})
	if v, err := up.call(ctx, up.root.children["power"], "on"); err != nil || !isNull(v) {
		t.Fatalf("power on through the Jumpstarter socket: %v %v", v, err)
	}
	openGate(t, gate)
	waitExit(t, sh, 0)
	if out := sh.output(); !strings.Contains(out, "[Hook INFO] cycled over TLS") {
		t.Fatalf("the hook's power cycle (no certificate, its hook token) was not served:\n%s", out)
	}
	audit := readFile(t, filepath.Join(l.dir, "state", "audit.jsonl"))
	if !strings.Contains(audit, "no client certificate") || !strings.Contains(audit, "client certificate not signed by the CA this service trusts") {
		t.Fatalf("the refused calls are not in the supervisor's audit log:\n%s", audit)
	}
}

// TestTLSClientWithAnotherCAIsRefused: a client whose CA file holds another CA than the
// one that signed the coordinator's and the supervisor's certificates is refused by its
// own TLS check, in one sentence naming the CA file and the address, exit 3; no x509
// or transport words reach the user.
func TestTLSClientWithAnotherCAIsRefused(t *testing.T) {
	l := startTLSLab(t, false)
	otherCA := tlstest.NewCA(t, "another CA").WriteCA(t, l.dir, "other-ca.pem")
	lb, err := l.leases.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil || len(lb.GetBoards()) != 1 {
		t.Fatalf("boards: %v %v", lb, err)
	}
	endpoint := lb.GetBoards()[0].GetEndpoint()
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"status", coordEnv(l.coordAddr, ""), []string{"status", "--ca-file", otherCA},
			"the coordinator's certificate (at " + l.coordAddr + ") is not signed by the CA in " + otherCA + ": give --ca-file FILE"},
		{"power", []string{"BOARDVISOR_EXPORTER=" + endpoint, "BOARDVISOR_BOARD=virt-01", "BOARDVISOR_TOKEN=x", "BOARDVISOR_CA_FILE=" + otherCA}, []string{"power", "on"},
			"power on of board virt-01: the supervisor's certificate (at " + endpoint + ") is not signed by the CA in " + otherCA + ": give --ca-file FILE"},
	} {
		out, err := runCLI(tc.env, tc.args...)
		if code := exitCode(err); code != 3 || !strings.Contains(out, tc.want) {
			t.Errorf("%s with another CA: exit %d, want 3 and %q:\n%s", tc.name, code, tc.want, out)
		}
		for _, raw := range []string{"x509", "rpc error", "transport:", "desc ="} {
			if strings.Contains(out, raw) {
				t.Errorf("%s: the output has the transport's words %q:\n%s", tc.name, raw, out)
			}
		}
	}
}
