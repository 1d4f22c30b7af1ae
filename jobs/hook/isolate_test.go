package hook

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// needCgroup returns the cgroup base of the tests' runners, skipping the test where no
// writable cgroup v2 hierarchy exists (failing under CI=true, whose machines have one).
func needCgroup(t *testing.T) string {
	t.Helper()
	base, err := testCgroupBase()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no writable cgroup v2 hierarchy: %v", err)
		}
		t.Skipf("no writable cgroup v2 hierarchy here (%v): hooks fall back to the subreaper", err)
	}
	return base
}

// The hook and what it starts in a new session are in the run's cgroup, which the
// spool directory names; when the run is over the cgroup is gone.
func TestEveryProcessInTheRunsCgroup(t *testing.T) {
	t.Parallel()
	base := needCgroup(t)
	bothPaths(t, func(t *testing.T, pipe bool) {
		fifo := mkfifo(t, "gate")
		pids := pidsFile(t)
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `setsid "$REC" &
`+awaitPids(1)+`
echo "$$"; read x < "$FIFO"`, "PIDS="+pids, "REC="+recorder(t), "FIFO="+fifo), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		hookPid := c.next(t).Text
		b, err := os.ReadFile(filepath.Join(run.Dir(), cgroupFile))
		if err != nil {
			t.Fatal(err)
		}
		cg := strings.TrimSpace(string(b))
		if filepath.Dir(cg) != base {
			t.Fatalf("the run's cgroup %s is not under %s", cg, base)
		}
		procs, err := cgroupProcs(cg)
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := os.ReadFile(pids)
		for _, p := range []string{hookPid, strings.Fields(string(rec))[0]} {
			found := false
			for _, q := range procs {
				found = found || fmt.Sprint(q) == p
			}
			if !found {
				t.Errorf("process %s is not in the run's cgroup (it holds %v)", p, procs)
			}
		}
		release(t, fifo)
		if res := wait(t, run); !res.OK() {
			t.Errorf("result = %+v", res)
		}
		assertGone(t, pids, 1)
		if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the run's cgroup is still there: %v", err)
		}
	})
}

// A hook that kills its own shim and leaves a process in a new session: the daemon
// finds the shim vanished and kills the run's cgroup, so the process is gone by the time
// the run is over.
func TestCgroupKillsWhatAKilledShimLeft(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	bothPaths(t, func(t *testing.T, pipe bool) {
		pids := pidsFile(t)
		c := newLines()
		run, err := newRunner(t).Start(specOn(t, pipe, `setsid "$REC" &
`+awaitPids(1)+`
kill -9 $PPID`, "PIDS="+pids, "REC="+recorder(t)), c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !errors.Is(res.Err, ErrShimVanished) || !strings.Contains(res.Err.Error(), "every process it left was killed with its cgroup") {
			t.Errorf("result = %+v, want the shim vanished and its cgroup killed", res)
		}
		assertGone(t, pids, 1)
		if _, err := os.Stat(filepath.Join(run.Dir(), cgroupFile)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the spool still names a cgroup: %v", err)
		}
	})
}

// An adopted run (after a restart of the daemon) whose shim was killed meanwhile: the
// cgroup named in the spool directory is killed all the same.
func TestCgroupKilledAfterRestart(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	pids := pidsFile(t)
	r := newRunner(t)
	c := newLines()
	run, err := r.Start(spec(t, `setsid "$REC" &
`+awaitPids(1)+`
echo ready; exec sleep 1000`, "PIDS="+pids, "REC="+recorder(t)), c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	l := c.next(t)
	run.Detach() // the daemon goes away; then the shim is killed
	if err := syscall.Kill(run.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	adopted, err := r.Adopt(run.Dir(), run.Pid(), run.StartTime(), l.Offset, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res := wait(t, adopted); !errors.Is(res.Err, ErrShimVanished) {
		t.Errorf("result = %+v, want the shim vanished", res)
	}
	assertGone(t, pids, 1)
}

func TestFindCgroupBaseRefuses(t *testing.T) {
	for _, dir := range []string{"relative/path", filepath.Join(t.TempDir(), "hooks")} {
		if _, err := FindCgroupBase(dir); err == nil {
			t.Errorf("FindCgroupBase(%q) accepted a directory outside any cgroup v2 hierarchy", dir)
		}
	}
}

// The mountinfo escapes of a mount point with a space.
func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/sys/fs/my\040cgroup`); got != "/sys/fs/my cgroup" {
		t.Errorf("got %q", got)
	}
}

// needRoot skips a test that must switch users.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running a hook as another user needs root")
	}
}

// A hook run as an unprivileged user (nobody, with the dialout group): it has that
// identity, a directory of its own as working directory and HOME, its message of the
// day reaches the lease's file; it cannot signal its shim or the daemon, nor read the
// spool. Its directory is gone afterwards.
func TestHookRunsAsItsUser(t *testing.T) {
	t.Parallel()
	needRoot(t)
	bothPaths(t, func(t *testing.T, pipe bool) {
		motd := filepath.Join(t.TempDir(), "motd")
		s := specOn(t, pipe, `id -u; id -g; id -G
pwd
[ "$(pwd)" = "$HOME" ] && echo "HOME is the working directory"
echo "welcome from the hook" > "$JMP_MOTD_FILE"
kill -9 $PPID 2>/dev/null || echo "signal to the shim refused"
kill -9 $DAEMON 2>/dev/null || echo "signal to the daemon refused"
cat "$SPOOL/output" >/dev/null 2>&1 || echo "spool refused"`,
			"JMP_MOTD_FILE="+motd, fmt.Sprintf("DAEMON=%d", os.Getpid()))
		s.Env = append(s.Env, "SPOOL="+s.Dir)
		s.Credential = &Credential{UID: 65534, GID: 65534, Groups: []uint32{20}}
		c := newLines()
		run, err := newRunner(t).Start(s, c.onLine)
		if err != nil {
			t.Fatal(err)
		}
		res := wait(t, run)
		if !res.OK() {
			t.Errorf("result = %+v", res)
		}
		got := texts(c.rest())
		if len(got) != 8 {
			t.Fatalf("lines = %q", got)
		}
		own := strings.TrimPrefix(got[3], "INFO ")
		want := []string{"INFO 65534", "INFO 65534", "INFO 65534 20", got[3], "INFO HOME is the working directory",
			"INFO signal to the shim refused", "INFO signal to the daemon refused", "INFO spool refused"}
		if strings.Join(got, "|") != strings.Join(want, "|") || !strings.HasPrefix(own, os.TempDir()+"/boardvisor-hook-") {
			t.Errorf("lines = %q, want %q in a directory of its own", got, want)
		}
		if b, err := os.ReadFile(motd); err != nil || string(b) != "welcome from the hook\n" {
			t.Errorf("the lease's motd = %q, %v", b, err)
		}
		if _, err := os.Stat(own); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the hook's directory %s is still there: %v", own, err)
		}
	})
}

// A hook that points its JMP_MOTD_FILE at a file it may not read gets nothing copied.
func TestHookMotdIsOnlyItsOwn(t *testing.T) {
	t.Parallel()
	needRoot(t)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, attack := range []string{`ln -s "$SECRET" "$JMP_MOTD_FILE"`, `ln "$SECRET" "$JMP_MOTD_FILE" 2>/dev/null; true`} {
		motd := filepath.Join(t.TempDir(), "motd")
		s := spec(t, attack, "JMP_MOTD_FILE="+motd, "SECRET="+secret)
		s.Credential = &Credential{UID: 65534, GID: 65534}
		run, err := newRunner(t).Start(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		wait(t, run)
		if b, err := os.ReadFile(motd); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the lease's motd holds %q (%v)", attack, b, err)
		}
	}
}

// The spool directory is removed while the hook runs (a lease's spools go when it
// ends): the shim still removes the run's cgroup, which it knows by itself.
func TestCgroupRemovedWithoutTheSpool(t *testing.T) {
	t.Parallel()
	needCgroup(t)
	fifo := mkfifo(t, "gate")
	c := newLines()
	run, err := newRunner(t).Start(spec(t, `echo ready; read x < "$FIFO"`, "FIFO="+fifo), c.onLine)
	if err != nil {
		t.Fatal(err)
	}
	c.next(t)
	b, err := os.ReadFile(filepath.Join(run.Dir(), cgroupFile))
	if err != nil {
		t.Fatal(err)
	}
	cg := strings.TrimSpace(string(b))
	if err := os.RemoveAll(run.Dir()); err != nil {
		t.Fatal(err)
	}
	release(t, fifo)
	wait(t, run)
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the run's cgroup %s is still there: %v", cg, err)
	}
}
