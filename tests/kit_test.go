package tests

// The end-to-end test kit: every e2e test starts, waits on and reads the real binaries
// through these helpers, and nothing here is defined twice. In order:
//
//   - the binary: built once per test run (TestMain), run as a daemon (proc) or as a
//     client command (runCLI);
//   - processes: start / startQuiet, their output, waits on log lines (event-driven,
//     bounded by wait), kill / terminate;
//   - ports, files and polls: freeAddr, waitFile, waitExists, readLines, eventually,
//     scanProcs (processes left behind);
//   - configs: labConfig (a supervisor's YAML), supervisorConfig, supervisorConfigIn;
//   - the coordinator's API: leaseClient, waitBoards, createLease, watchLease,
//     boardStatuses;
//   - the coordinator's database: openCoordinatorDB, storedEvents, readEvents and the
//     decoders of what it stored (hookLines, consoleBytes, transcriptOf, checkContiguous,
//     seqGaps).
//
// The last block keeps the names of the helpers this kit replaced, as thin wrappers, for
// test files written against them on other branches.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, to read the coordinator's database
)

// wait bounds every wait of these tests.
const wait = 30 * time.Second

// binary is the boardvisor binary built for this test run.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardvisor-e2e")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "boardvisor")
	// -buildvcs=auto: the binary reports the commit it was built from where Go can
	// stamp it (not in a git worktree), whatever GOFLAGS says.
	build := exec.Command("go", "build", "-buildvcs=auto", "-o", binary, "../cmd/boardvisor")
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "build boardvisor: %v\n%s", err, out)
		os.Exit(2)
	}
	// The hook shim's own binary, next to it, as `make build` installs them: hooks
	// run under it (TestShimBinaryRunsHooks checks that they do).
	build = exec.Command("go", "build", "-o", filepath.Join(dir, "boardvisor-shim"), "../cmd/boardvisor-shim")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // statically linked, as the Makefile builds it
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		fmt.Fprintf(os.Stderr, "build boardvisor-shim: %v\n%s", err, out)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ---- client commands ----

// runCLI runs `boardvisor args...` as a user would, with env added to the test's
// environment, and returns what it printed (stdout and stderr together). It is bounded
// by wait: past it the command's process group is killed.
func runCLI(env []string, args ...string) (string, error) {
	out, err := runBinary(env, true, args)
	return string(out), err
}

// cliStdout is runCLI's stdout alone, as bytes (for output compared byte for byte).
func cliStdout(env []string, args ...string) ([]byte, error) {
	return runBinary(env, false, args)
}

func runBinary(env []string, combined bool, args []string) ([]byte, error) {
	return runBinaryWithin(wait, env, combined, args)
}

// runBinaryWithin is runBinary for a command that may take up to bound.
func runBinaryWithin(bound time.Duration, env []string, combined bool, args []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var out []byte
	var err error
	if combined {
		out, err = cmd.CombinedOutput()
	} else {
		out, err = cmd.Output()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("boardvisor %s did not finish within %s (killed): %w", strings.Join(args, " "), bound, err)
	}
	return out, err
}

// coordEnv is the environment of a client of the coordinator at addr holding a user
// token ("" for none).
func coordEnv(addr, token string) []string {
	env := []string{"BOARDVISOR_COORDINATOR=" + addr}
	if token != "" {
		env = append(env, "BOARDVISOR_USER_TOKEN="+token)
	}
	return env
}

// bv runs a client command against the coordinator at coordAddr; it fails the test if
// the command fails.
func bv(t *testing.T, coordAddr string, args ...string) string {
	t.Helper()
	out, err := runCLI(coordEnv(coordAddr, ""), args...)
	if err != nil {
		t.Fatalf("boardvisor %v: %v\n%s", args, err, out)
	}
	return out
}

// bvAs runs boardvisor as a user holding token; it returns the output and the error.
func bvAs(coordAddr, token string, args ...string) (string, error) {
	return runCLI(coordEnv(coordAddr, token), args...)
}

// createdLease reads what `boardvisor lease create` printed (its hook dialogue, on
// stderr, may come first): the values of its key=value lines (lease, token, board,
// exporter).
func createdLease(out string) map[string]string {
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		for _, key := range []string{"lease", "token", "board", "exporter"} {
			if v, ok := strings.CutPrefix(line, key+"="); ok {
				kv[key] = v
			}
		}
	}
	return kv
}

// runShell runs `boardvisor shell ...` (args include "shell") without a terminal and
// returns its output.
func runShell(t *testing.T, coordAddr string, args ...string) (string, error) {
	t.Helper()
	return runCLI(coordEnv(coordAddr, ""), args...)
}

// ---- daemons ----

// proc is a boardvisor process started by a test, in its own process group. Its output
// (stdout and stderr) is kept, one whole line at a time, and can be waited on.
type proc struct {
	t    *testing.T // nil for a process started by startQuiet
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and all its output is kept
	err  error         // how it exited, once done is closed

	mu   sync.Mutex
	out  strings.Builder
	grew chan struct{} // closed, and replaced, whenever a line is added to out
}

// startQuiet starts `boardvisor args...` without tying it to a test: a test that
// starts a daemon again and again (the restart test) kills it itself. Its output is
// kept and printed only on demand.
func startQuiet(name string, args ...string) (*proc, error) {
	p := &proc{name: name, cmd: exec.Command(binary, args...), done: make(chan struct{}), grew: make(chan struct{})}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Bounds Wait if a process that outlives the daemon still holds its output.
	p.cmd.WaitDelay = 5 * time.Second
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				if !strings.HasSuffix(line, "\n") {
					line += "\n"
				}
				p.mu.Lock()
				p.out.WriteString(line)
				close(p.grew)
				p.grew = make(chan struct{})
				p.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		err := p.cmd.Wait()
		w.Close()
		<-read
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// start starts `boardvisor args...` for the test t: it is killed when the test ends,
// and its output is logged if the test failed.
func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p, err := startQuiet(name, args...)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.t = t
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", p.name, p.output())
		}
	})
	return p
}

// startCoordinator starts a coordinator on addr (grace period 2s) and waits until it
// listens.
func startCoordinator(t *testing.T, addr, stateDir string, extra ...string) *proc {
	t.Helper()
	p := start(t, "coordinator", append([]string{"coordinator", "--listen", addr, "--state-dir", stateDir, "--log-format", "text", "--grace", "2s"}, extra...)...)
	p.waitLine("coordinator listening")
	return p
}

// startSupervisor starts a supervisor with the config file and waits until it
// supervises.
func startSupervisor(t *testing.T, name, config string) *proc {
	t.Helper()
	p := start(t, name, "supervise", "--config", config)
	p.waitLine("supervising")
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// lineWith returns the first line of out, at or after byte from (a line start), that
// holds every one of subs, and the offset after it.
func lineWith(out string, from int, subs []string) (string, int, bool) {
	for from < len(out) {
		i := strings.IndexByte(out[from:], '\n')
		if i < 0 {
			break
		}
		l := out[from : from+i]
		from += i + 1
		if containsAll(l, subs) {
			return l, from, true
		}
	}
	return "", from, false
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// untilLine waits, at most timeout, until the process prints a line, at or after byte
// from of its output, that holds every one of subs; it returns that line. It wakes on
// every line the process prints (no polling), so a test can act within microseconds of
// a log line.
func (p *proc) untilLine(from int, timeout time.Duration, subs ...string) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		out, grew := p.out.String(), p.grew
		p.mu.Unlock()
		if from > len(out) {
			from = len(out)
		}
		l, next, ok := lineWith(out, from, subs)
		if ok {
			return l, nil
		}
		from = next
		select {
		case <-grew:
		case <-p.done:
			// Everything it printed is kept by now: look once more.
			if l, _, ok := lineWith(p.output(), from, subs); ok {
				return l, nil
			}
			return "", fmt.Errorf("%s exited (%v) before printing a line with %q", p.name, p.err, subs)
		case <-timer.C:
			return "", fmt.Errorf("%s printed no line with %q within %s", p.name, subs, timeout)
		}
	}
}

// waitLine waits (bounded by wait) until the process has printed a line holding every
// one of subs, and returns it; otherwise the test fails, showing the output.
func (p *proc) waitLine(subs ...string) string {
	p.t.Helper()
	l, err := p.untilLine(0, wait, subs...)
	if err != nil {
		p.t.Fatalf("%v:\n%s", err, p.output())
	}
	return l
}

// waitOutput waits until the process has printed a line holding s.
func (p *proc) waitOutput(s string) {
	p.t.Helper()
	p.waitLine(s)
}

// findLine returns the first line of the output so far holding every one of subs, or "".
func (p *proc) findLine(subs ...string) string {
	l, _, _ := lineWith(p.output(), 0, subs)
	return l
}

// countLines counts the lines of the output so far holding every one of subs.
func (p *proc) countLines(subs ...string) int {
	out := p.output()
	for n, from := 0, 0; ; n++ {
		var ok bool
		if _, from, ok = lineWith(out, from, subs); !ok {
			return n
		}
	}
}

var listenField = regexp.MustCompile(`supervising.*\blisten=(\S+)`)

// listenAddr returns the client-service address a supervisor logged at start-up.
func (p *proc) listenAddr() string {
	if m := listenField.FindStringSubmatch(p.output()); m != nil {
		return m[1]
	}
	return ""
}

// kill sends SIGKILL to the process's group and waits for it.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// terminate stops the process with SIGTERM and waits (bounded) for it to exit.
func (p *proc) terminate() {
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

// ---- ports, files, polls ----

// freeAddr returns a loopback address nobody listens on (for daemons that must be
// restarted on the same address).
func freeAddr(t *testing.T) string {
	t.Helper()
	// A port below the kernel's ephemeral range (ip_local_port_range, 32768 up by
	// default), and not one this process handed out before: a port the kernel gives
	// for port 0 is free again once closed, and the kernel may give it next to an
	// outgoing connection (a client, QEMU, the registry) before the daemon that was
	// to listen on it starts ("address already in use", seen under load).
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if portsGiven[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use
		}
		l.Close()
		portsGiven[port] = true
		return l.Addr().String()
	}
	t.Fatal("no free port found in 20000-31999")
	return ""
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// ctxT is a context bounded by wait and by the test.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond (every 20ms) until it holds; past wait the test fails naming
// what it waited for. Only for what cannot be awaited (another process's state).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", wait, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFile polls (every 200µs, so that a test can act right after another process
// wrote) until the file at path holds want.
func waitFile(path, want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil && bytes.Contains(b, []byte(want)) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not hold %q after %s (%v)", path, want, timeout, err)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// waitExists polls (every 200µs) until path exists.
func waitExists(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not exist after %s", path, timeout)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// readLines reads a file's lines; a missing file has none.
func readLines(t *testing.T, path string) []string {
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

// leftover is a process found by scanProcs.
type leftover struct {
	pid     int
	cmdline string
	lease   string // the LEASE_NAME in its environment, if any
	why     string
}

func (l leftover) String() string { return fmt.Sprintf("pid %d (%s): %s", l.pid, l.why, l.cmdline) }

// scanProcs lists the live processes (not zombies) whose command line holds one of
// cmdSubs or whose environment holds one of envs ("LEASE_NAME=<job>"): what a test
// left behind.
func scanProcs(cmdSubs []string, envs map[string]bool) []leftover {
	ents, _ := os.ReadDir("/proc")
	var out []leftover
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The state follows the parenthesized command name: Z is a zombie, already gone.
		if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		l := leftover{pid: pid, cmdline: strings.TrimSpace(strings.ReplaceAll(string(raw), "\x00", " "))}
		for _, s := range cmdSubs {
			if s != "" && strings.Contains(l.cmdline, s) {
				l.why = "command line holds " + s
				break
			}
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("LEASE_NAME=")); ok {
				l.lease = string(v)
				if l.why == "" && envs[string(kv)] {
					l.why = "environment holds " + string(kv)
				}
			}
		}
		if l.why != "" {
			out = append(out, l)
		}
	}
	return out
}

// ---- configs ----

// boardSpec is one board of a supervisor config.
type boardSpec struct {
	name   string
	labels string // YAML flow map body, e.g. "device: rpi4"
}

// labConfig is a supervisor's config file: write puts it at dir/<id>.yaml, with the
// state directory dir/state.
type labConfig struct {
	dir, id, coordAddr string
	before, after      string // hook scripts, "" for none (timeout 20s, onFailure endLease)
	boards             []boardSpec
	virtual            bool   // every board a simulated one (drivers: {virtual: {}})
	listen             string // the client service's address; 127.0.0.1:0 if empty
	metrics            string // the metrics endpoint's address, if any
	tokenFile, caFile  string // coordinator.tokenFile and coordinator.caFile, if any

	// TLS: coordinator.certFile and keyFile (the supervisor's client certificate), and
	// the client service's tls block (certFile, keyFile, clientCAFile), if any.
	coordCert, coordKey          string
	tlsCert, tlsKey, tlsClientCA string
}

func (c labConfig) write(t *testing.T) string {
	t.Helper()
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	listen := c.listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "stateDir: %s\nlisten: %s\nlog: {level: debug, format: text}\n", filepath.Join(c.dir, "state"), listen)
	if c.metrics != "" {
		fmt.Fprintf(&b, "metrics: %s\n", c.metrics)
	}
	if c.tlsCert != "" {
		fmt.Fprintf(&b, "tls: {certFile: %q, keyFile: %q", c.tlsCert, c.tlsKey)
		if c.tlsClientCA != "" {
			fmt.Fprintf(&b, ", clientCAFile: %q", c.tlsClientCA)
		}
		b.WriteString("}\n")
	}
	fmt.Fprintf(&b, "coordinator: {address: %q", c.coordAddr)
	if c.tokenFile != "" {
		fmt.Fprintf(&b, ", tokenFile: %q", c.tokenFile)
	}
	if c.caFile != "" {
		fmt.Fprintf(&b, ", caFile: %q", c.caFile)
	}
	if c.coordCert != "" {
		fmt.Fprintf(&b, ", certFile: %q, keyFile: %q", c.coordCert, c.coordKey)
	}
	fmt.Fprintf(&b, ", supervisorId: %s}\n", c.id)
	// The tests' hooks use files of the test (as root: in directories only root may
	// enter); a test of unprivileged hooks sets runAs itself.
	b.WriteString("runAsRoot: true\n")
	b.WriteString("defaults:\n  hooks:\n")
	if c.before != "" {
		fmt.Fprintf(&b, "    beforeLease: {timeout: 20s, onFailure: endLease, script: %q}\n", c.before)
	}
	if c.after != "" {
		fmt.Fprintf(&b, "    afterLease: {timeout: 20s, onFailure: endLease, script: %q}\n", c.after)
	}
	b.WriteString("boards:\n")
	for _, bs := range c.boards {
		fmt.Fprintf(&b, "  - name: %s\n    labels: {%s}\n", bs.name, bs.labels)
		if c.virtual {
			b.WriteString("    drivers: {virtual: {}}\n")
		}
	}
	path := filepath.Join(c.dir, c.id+".yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// supervisorConfig writes a supervisor config with the given boards and hook scripts in
// dir (state in dir/state).
func supervisorConfig(t *testing.T, dir, id, coordAddr, before, after string, boards ...boardSpec) string {
	t.Helper()
	return labConfig{dir: dir, id: id, coordAddr: coordAddr, before: before, after: after, boards: boards}.write(t)
}

// supervisorConfigIn writes the config of one supervisor in its own directory root/id
// (state in root/id/state), for tests with several supervisors.
func supervisorConfigIn(t *testing.T, root, id, coordAddr, before, after string, boards ...boardSpec) string {
	t.Helper()
	return supervisorConfig(t, filepath.Join(root, id), id, coordAddr, before, after, boards...)
}

// editConfig replaces old by new, once, in a config file; old must be there.
func editConfig(t *testing.T, path, old, new string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("no %q in %s", old, path)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(b), old, new, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ---- the coordinator's API ----

func leaseClient(t *testing.T, addr string) pb.LeaseServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pb.NewLeaseServiceClient(conn)
}

// waitBoards waits until the coordinator lists n AVAILABLE boards.
func waitBoards(t *testing.T, c pb.LeaseServiceClient, n int) {
	t.Helper()
	var r *pb.ListBoardsResponse
	var err error
	ready := 0
	deadline := time.Now().Add(wait)
	for {
		r, err = c.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
		ready = 0
		for _, b := range r.GetBoards() {
			if b.GetStatus().String() == "EXPORTER_STATUS_AVAILABLE" {
				ready++
			}
		}
		if err == nil && ready >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d boards available after %s: %v %v", ready, n, wait, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// boardStatuses lists the coordinator's boards: name -> status (AVAILABLE, ...).
func boardStatuses(t *testing.T, c pb.LeaseServiceClient) map[string]string {
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

// createLease creates a lease by selector (or by board name when board is set).
func createLease(ctx context.Context, c pb.LeaseServiceClient, selector, board string, d time.Duration, client string) (*pb.Lease, error) {
	r, err := c.CreateLease(ctx, &pb.CreateLeaseRequest{Selector: selector, Board: board, Duration: durationpb.New(d), ClientName: client})
	if err != nil {
		return nil, err
	}
	if r.GetLease().GetId() == "" || r.GetLease().GetToken() == "" {
		return nil, fmt.Errorf("CreateLease answered a lease without ID or token: %v", r.GetLease())
	}
	return r.GetLease(), nil
}

// readyLease creates a lease of a board matching selector for client and waits until it
// is READY. It returns the lease as created (with its token) and as READY (with its
// supervisor's endpoint); it fails the test if either cannot be had.
func readyLease(t *testing.T, c pb.LeaseServiceClient, selector, client string) (created, ready *pb.Lease) {
	t.Helper()
	l, err := createLease(ctxT(t), c, selector, "", wait, client)
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchLease(ctxT(t), c, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.ready()
	if err != nil {
		t.Fatal(err)
	}
	return l, r
}

// leaseWatch follows one lease through WatchLease.
type leaseWatch struct {
	id     string
	stream pb.LeaseService_WatchLeaseClient
	last   *pb.Lease
	seen   []pb.LeasePhase
}

func watchLease(ctx context.Context, c pb.LeaseServiceClient, id string) (*leaseWatch, error) {
	s, err := c.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		return nil, err
	}
	return &leaseWatch{id: id, stream: s}, nil
}

func leaseEnded(l *pb.Lease) bool {
	return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE || l.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED
}

// until reads the stream until a message satisfies ok. A lease that ends first, or a
// stream that ends first, is an error. (The stream's context bounds the wait.)
func (w *leaseWatch) until(what string, ok func(*pb.Lease) bool) (*pb.Lease, error) {
	if w.last != nil && ok(w.last) {
		return w.last, nil
	}
	for {
		if w.last != nil && leaseEnded(w.last) {
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

func (w *leaseWatch) ready() (*pb.Lease, error) {
	return w.until("READY", func(l *pb.Lease) bool { return l.GetPhase() == pb.LeasePhase_LEASE_PHASE_READY })
}

// done reads the stream until the lease ends, and fails unless it ends DONE.
func (w *leaseWatch) done() (*pb.Lease, error) {
	l, err := w.until("ended", leaseEnded)
	if err != nil {
		return nil, err
	}
	if l.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		return l, fmt.Errorf("lease %s ended %s (%q), want DONE; phases seen: %v", w.id, l.GetPhase(), l.GetStatusMessage(), w.seen)
	}
	return l, nil
}

// ---- the coordinator's database ----

// storedEvent is one row of the coordinator's events table.
type storedEvent struct {
	supervisor string
	seq        int64
	at         time.Time
	job, board string
	kind       string
	payload    string // protojson of the event's message
}

// decode unmarshals the event's payload into m.
func (e storedEvent) decode(m proto.Message) error {
	if err := protojson.Unmarshal([]byte(e.payload), m); err != nil {
		return fmt.Errorf("%s event %s/%d: %w", e.kind, e.supervisor, e.seq, err)
	}
	return nil
}

// openDB opens the coordinator's SQLite database in its state directory, read-only
// unless writable (a test that damages it on purpose); the coordinator may still run
// (WAL mode).
func openDB(stateDir string, writable bool) (*sql.DB, error) {
	path := filepath.Join(stateDir, "coordinator.db")
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	mode := "mode=ro&"
	if writable {
		mode = ""
	}
	return sql.Open("sqlite", "file:"+path+"?"+mode+"_pragma=busy_timeout(10000)")
}

// openCoordinatorDB is openDB for a test: it fails the test on error and closes the
// database when the test ends.
func openCoordinatorDB(t *testing.T, stateDir string) *sql.DB {
	t.Helper()
	db, err := openDB(stateDir, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// queryEvents reads the events of one supervisor ("" for all) in the order the
// coordinator stored them (SQLite's rowid grows with each insert).
func queryEvents(ctx context.Context, db *sql.DB, supervisor string) ([]storedEvent, error) {
	return queryEventsBy(ctx, db, supervisor, "rowid")
}

// queryEventsBy is queryEvents in the order orderBy (SQL), e.g. "supervisor_id, seq" on
// PostgreSQL, which has no rowid.
func queryEventsBy(ctx context.Context, db *sql.DB, supervisor, orderBy string) ([]storedEvent, error) {
	q := `SELECT supervisor_id, seq, at_ns, job_id, board, kind, payload FROM events`
	var args []any
	if supervisor != "" {
		q += ` WHERE supervisor_id = $1`
		args = append(args, supervisor)
	}
	rows, err := db.QueryContext(ctx, q+` ORDER BY `+orderBy, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var evs []storedEvent
	for rows.Next() {
		var e storedEvent
		var at int64
		if err := rows.Scan(&e.supervisor, &e.seq, &at, &e.job, &e.board, &e.kind, &e.payload); err != nil {
			return nil, err
		}
		e.at = time.Unix(0, at)
		evs = append(evs, e)
	}
	return evs, rows.Err()
}

// storedEvents reads every event, per supervisor, in the order the coordinator stored
// them.
func storedEvents(t *testing.T, db *sql.DB) map[string][]storedEvent {
	t.Helper()
	evs, err := queryEvents(ctxT(t), db, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]storedEvent{}
	for _, e := range evs {
		out[e.supervisor] = append(out[e.supervisor], e)
	}
	return out
}

// readEvents reads a supervisor's events from the coordinator's database (dbPath, in
// its state directory), in sequence order.
func readEvents(ctx context.Context, dbPath, supervisor string) ([]storedEvent, error) {
	db, err := openDB(filepath.Dir(dbPath), false)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	evs, err := queryEvents(ctx, db, supervisor)
	slices.SortStableFunc(evs, func(a, b storedEvent) int { return cmp.Compare(a.seq, b.seq) })
	return evs, err
}

// checkContiguous fails unless a supervisor's events were stored as seq 1..N, in that
// order, each once.
func checkContiguous(t *testing.T, sup string, evs []storedEvent) {
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

// seqGaps describes the holes in a sequence of event numbers (it must start at 1).
func seqGaps(evs []storedEvent) []string {
	var gaps []string
	want := int64(1)
	for _, e := range evs {
		if e.seq != want {
			gaps = append(gaps, fmt.Sprintf("seq %d..%d missing", want, e.seq-1))
		}
		want = e.seq + 1
	}
	return gaps
}

// hookLines decodes the hook_log events of a list: their texts, in stored order.
func hookLines(t *testing.T, evs []storedEvent) []string {
	t.Helper()
	var out []string
	for _, e := range evs {
		if e.kind != "hook_log" {
			continue
		}
		var h pb.HookLog
		if err := e.decode(&h); err != nil {
			t.Fatal(err)
		}
		out = append(out, h.GetText())
	}
	return out
}

// eachTransition calls fn with every state_transition event of events, decoded, each
// supervisor's in stored order.
func eachTransition(t *testing.T, events map[string][]storedEvent, fn func(storedEvent, *pb.StateTransition)) {
	t.Helper()
	for _, evs := range events {
		for _, e := range evs {
			if e.kind != "state_transition" {
				continue
			}
			st := &pb.StateTransition{}
			if err := e.decode(st); err != nil {
				t.Fatal(err)
			}
			fn(e, st)
		}
	}
}

// consoleBytes joins a job's console_log events, in stored order; a console_gap event
// of the job fails the test. (ConsoleLog.offset is not checked: the supervisor leaves
// it 0.)
func consoleBytes(t *testing.T, evs []storedEvent, job string) []byte {
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
		if err := e.decode(&cl); err != nil {
			t.Fatal(err)
		}
		data = append(data, cl.GetData()...)
	}
	return data
}

// leaseTranscript is what the coordinator stored of one lease.
type leaseTranscript struct {
	transitions []string            // "FROM->TO"
	hookLines   map[string][]string // by log source name: the texts in sequence order
	offsets     map[string][]uint64
	errors      []string
}

func transcriptOf(evs []storedEvent, job string) (*leaseTranscript, error) {
	lt := &leaseTranscript{hookLines: map[string][]string{}, offsets: map[string][]uint64{}}
	short := func(p pb.LeasePhase) string { return strings.TrimPrefix(p.String(), "LEASE_PHASE_") }
	for _, e := range evs {
		if e.job != job {
			continue
		}
		switch e.kind {
		case "state_transition":
			var st pb.StateTransition
			if err := e.decode(&st); err != nil {
				return nil, err
			}
			lt.transitions = append(lt.transitions, short(st.GetFrom())+"->"+short(st.GetTo()))
		case "hook_log":
			var h pb.HookLog
			if err := e.decode(&h); err != nil {
				return nil, err
			}
			src := h.GetSource().String()
			lt.hookLines[src] = append(lt.hookLines[src], h.GetText())
			lt.offsets[src] = append(lt.offsets[src], h.GetOffset())
		case "error":
			lt.errors = append(lt.errors, fmt.Sprintf("seq %d: %s", e.seq, e.payload))
		}
	}
	return lt, nil
}

// ---- old names ----
//
// The helpers this kit replaced, under their old names, for test files written against
// them on other branches. New tests use the names above; these go once those branches
// are merged.

type (
	ceStoredEvent = storedEvent
	ceLeaseWatch  = leaseWatch
)

// Used here so that staticcheck does not report them while no test of this branch does.
var _ = []any{ceStoredEvent{}, (*ceLeaseWatch)(nil), ceLabConfig, ceWithTokenFile, ceVirtualBoards, ceEventually,
	(*proc).ceWaitLine, (*proc).ceFindLine, (*proc).ceCountLines, (*proc).ceTerminate, ceEnded, ceReadLines,
	ceOpenCoordinatorDB, ceStoredEvents, ceCheckContiguous, ceHookLines, ceConsoleBytes, ceBoardStatuses,
	ceCreateLease, ceWatchLease}

func ceLabConfig(t *testing.T, root, id, coordAddr, before, after string, boards ...boardSpec) string {
	t.Helper()
	return supervisorConfigIn(t, root, id, coordAddr, before, after, boards...)
}

func ceWithTokenFile(t *testing.T, config, tokenFile string) {
	t.Helper()
	editConfig(t, config, "supervisorId:", fmt.Sprintf("tokenFile: %q, supervisorId:", tokenFile))
}

func ceVirtualBoards(t *testing.T, config string) {
	t.Helper()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	s := regexp.MustCompile(`(?m)^    labels: \{.*\}$`).ReplaceAllString(string(b), "$0\n    drivers: {virtual: {}}")
	if err := os.WriteFile(config, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func ceEventually(t *testing.T, what string, cond func() bool) { t.Helper(); eventually(t, what, cond) }
func (p *proc) ceWaitLine(subs ...string) string               { p.t.Helper(); return p.waitLine(subs...) }
func (p *proc) ceFindLine(subs ...string) string               { return p.findLine(subs...) }
func (p *proc) ceCountLines(subs ...string) int                { return p.countLines(subs...) }
func (p *proc) ceTerminate()                                   { p.t.Helper(); p.terminate() }
func ceEnded(l *pb.Lease) bool                                 { return leaseEnded(l) }
func ceReadLines(t *testing.T, path string) []string           { t.Helper(); return readLines(t, path) }

// ceOpenCoordinatorDB opened the database read-write; it still does.
func ceOpenCoordinatorDB(t *testing.T, stateDir string) *sql.DB {
	t.Helper()
	db, err := openDB(stateDir, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
func ceStoredEvents(t *testing.T, db *sql.DB) map[string][]storedEvent {
	t.Helper()
	return storedEvents(t, db)
}
func ceCheckContiguous(t *testing.T, sup string, evs []storedEvent) {
	t.Helper()
	checkContiguous(t, sup, evs)
}
func ceHookLines(t *testing.T, evs []storedEvent) []string { t.Helper(); return hookLines(t, evs) }
func ceConsoleBytes(t *testing.T, evs []storedEvent, job string) []byte {
	t.Helper()
	return consoleBytes(t, evs, job)
}
func ceBoardStatuses(t *testing.T, c pb.LeaseServiceClient) map[string]string {
	t.Helper()
	return boardStatuses(t, c)
}
func ceCreateLease(ctx context.Context, c pb.LeaseServiceClient, selector, board string, d time.Duration, client string) (*pb.Lease, error) {
	return createLease(ctx, c, selector, board, d, client)
}
func ceWatchLease(ctx context.Context, c pb.LeaseServiceClient, id string) (*leaseWatch, error) {
	return watchLease(ctx, c, id)
}
