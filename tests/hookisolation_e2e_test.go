package tests

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
)

// Hooks get only what is theirs: run unprivileged they cannot read the daemon's secrets
// nor signal it; in a cgroup of their own, nothing they start outlives them, even when
// they kill their own shim. The real binaries.

// isoOpenDir returns a directory that any user may pass through (up to /), so that only
// the modes the daemon gives its own files keep a hook out.
func isoOpenDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// isoNeedCgroup skips a test where hooks cannot have cgroups (not root, or no
// writable cgroup v2), failing under CI=true.
func isoNeedCgroup(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroups for hooks need a root daemon here")
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil || !strings.Contains(string(b), " - cgroup2 ") {
		if os.Getenv("CI") == "true" {
			t.Fatal("no cgroup v2 hierarchy is mounted")
		}
		t.Skip("no cgroup v2 hierarchy is mounted: hooks fall back to the subreaper")
	}
}

// isoAlive reports whether the process "PID STARTTIME" recorded in file still runs (a
// zombie has exited).
func isoAlive(t *testing.T, file string) bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		t.Fatalf("%s holds %q", file, b)
	}
	st, err := os.ReadFile("/proc/" + f[0] + "/stat")
	if err != nil {
		return false
	}
	rest := string(st[strings.LastIndexByte(string(st), ')')+2:])
	fields := strings.Fields(rest) // fields[0] is field 3 (state), fields[19] field 22
	return len(fields) > 19 && fields[19] == f[1] && fields[0] != "Z" && fields[0] != "X"
}

// A hook (run as root, runAsRoot) that starts a process in a new session and kills its
// own shim: the daemon finds the shim vanished and kills the run's cgroup, so the
// process is gone within 1 s of the hook's end.
func TestHookThatKillsItsShimLeavesNothing(t *testing.T) {
	isoNeedCgroup(t)
	dir := isoOpenDir(t)
	child := filepath.Join(dir, "child")
	hook := `setsid sleep 1000 </dev/null >/dev/null 2>&1 &
echo "$! $(cut -d' ' -f22 /proc/$!/stat)" > ` + child + `
kill -9 $PPID`
	_, sup, _ := ptyLeaseIn(t, dir, hook, nil)
	sup.ceWaitLine("killed the cgroup of a hook whose shim vanished")
	// The hook's end is when the daemon sees its shim gone; from then on, 1 s at most.
	deadline := time.Now().Add(time.Second)
	for isoAlive(t, child) {
		if time.Now().After(deadline) {
			t.Fatalf("the hook's setsid child outlived it by more than 1s:\n%s", sup.output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A hook run unprivileged (runAs: nobody) tries to read hook.key and the state
// directory, and to kill its shim and the daemon: the system refuses each, and the
// daemon serves on. The state directory is 0700 and hook.key 0600.
func TestUnprivilegedHookCannotReachTheDaemon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("running hooks as another user needs a root daemon")
	}
	dir := isoOpenDir(t)
	state := filepath.Join(dir, "state")
	hook := `echo "JMP_INFO: I am $(id -un)"
echo "JMP_INFO: key: $(cat ` + state + `/hook.key 2>&1 >/dev/null)"
echo "JMP_INFO: state: $(ls ` + state + ` 2>&1 >/dev/null)"
echo "JMP_INFO: shim: $(kill -9 $PPID 2>&1)"
daemon=$(cut -d' ' -f4 /proc/$PPID/stat)
echo "JMP_INFO: daemon $daemon: $(kill -9 $daemon 2>&1)"
echo "JMP_INFO: done"`
	r, sup, _ := ptyLeaseIn(t, dir, hook, func(cfg string) string {
		cfg = strings.Replace(cfg, "runAsRoot: true\n", "", 1)
		return strings.Replace(cfg, "defaults:\n", "defaults:\n  runAs: {user: nobody}\n", 1)
	})
	r.await(t, "the hook's last line", func(m *jpb.LogStreamResponse) bool { return m.GetMessage() == "done" })
	byPrefix := map[string]string{}
	for _, m := range r.hookMsgs() {
		k, v, _ := strings.Cut(m.m.GetMessage(), ": ")
		byPrefix[k] = v
	}
	pid := strconv.Itoa(sup.cmd.Process.Pid)
	for k, want := range map[string]string{"I am nobody": "", "key": "Permission denied", "state": "Permission denied",
		"shim": "Operation not permitted", "daemon " + pid: "Operation not permitted"} {
		if v, ok := byPrefix[k]; !ok || !strings.Contains(v, want) {
			t.Errorf("hook line %q: %q, want it to say %q (all: %q)", k, v, want, r.texts())
		}
	}
	// The daemon serves on: the lease goes READY after the hook.
	r.awaitAny(t, "the READY marker", func(m *jpb.LogStreamResponse) bool { return m.GetStructuredFields()[exporter.FieldPhase] == "READY" })
	select {
	case <-sup.done:
		t.Fatalf("the daemon died: %v", sup.err)
	default:
	}
	for path, want := range map[string]os.FileMode{state: 0o700, filepath.Join(state, "hook.key"): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
}

// A root daemon whose boards' hooks have no runAs refuses to start, naming the key.
func TestRootDaemonRefusesRootHooks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the refusal is for a daemon running as root")
	}
	dir := t.TempDir()
	cfg := supervisorConfig(t, dir, "lab-root", freeAddr(t), "true", "", boardSpec{"board-1", "device: x"})
	b, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, []byte(strings.Replace(string(b), "runAsRoot: true\n", "", 1)), 0o600)
	p := start(t, "supervisor", "supervise", "--config", cfg)
	select {
	case <-p.done:
	case <-time.After(wait):
		t.Fatal("the daemon started")
	}
	out := p.output()
	if p.err == nil || !strings.Contains(out, `the hooks of board "board-1" would run as root: set defaults.runAs`) ||
		!strings.Contains(out, "runAsRoot: true") || strings.Count(strings.TrimSpace(out), "\n") > 0 {
		t.Errorf("exit %v, output:\n%s\nwant one line naming defaults.runAs and runAsRoot", p.err, out)
	}
}
