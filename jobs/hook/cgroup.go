package hook

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Each hook run can get a cgroup v2 of its own: the shim starts the hook directly in
// it (clone3 into the cgroup, so no process of the hook is ever outside it), and when
// the run ends the cgroup is killed (cgroup.kill), awaited until cgroup.events says
// "populated 0", and removed. Nothing the hook started survives: not a process in a new
// session, not one that double-forked, not even when the shim itself was killed (the
// daemon then kills the cgroup, whose path the spool directory holds).

// cgroupFile, in a spool directory, holds the path of the run's cgroup while it exists.
const cgroupFile = "cgroup"

// cgroupWait bounds the wait for a killed cgroup to be empty.
const cgroupWait = 5 * time.Second

// CgroupSubtree is the directory created in the daemon's own cgroup for the cgroups of
// its hook runs, when the config names none.
const CgroupSubtree = "boardvisor-hooks"

// FindCgroupBase returns the cgroup v2 directory under which hook runs get their
// cgroups: configured if it is set (it must be in a cgroup v2 hierarchy), else
// CgroupSubtree in the daemon's own cgroup, in the cgroup v2 hierarchy that
// /proc/self/mountinfo lists. It creates the directory and checks that a cgroup can be
// created, killed and removed there. An error says why hooks cannot have cgroups here.
func FindCgroupBase(configured string) (string, error) {
	base := configured
	if base == "" {
		own, err := ownCgroupDir()
		if err != nil {
			return "", err
		}
		base = filepath.Join(own, CgroupSubtree)
	} else if !filepath.IsAbs(base) {
		return "", fmt.Errorf("hook cgroup %s is not an absolute path", base)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(base), &st); err != nil {
		return "", fmt.Errorf("hook cgroup %s: %w", base, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("hook cgroup %s is not in a cgroup v2 hierarchy", base)
	}
	if err := os.Mkdir(base, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("create the hooks' cgroup %s: %w", base, err)
	}
	probe, err := newRunCgroup(base)
	if err != nil {
		return "", err
	}
	defer os.Remove(probe)
	if _, err := os.Stat(filepath.Join(probe, "cgroup.kill")); err != nil {
		return "", fmt.Errorf("cgroup %s has no cgroup.kill (a kernel before 5.14)", base)
	}
	if err := killCgroup(probe, cgroupWait); err != nil {
		return "", err
	}
	if err := os.Remove(probe); err != nil {
		return "", fmt.Errorf("remove a cgroup in %s: %w", base, err)
	}
	return base, nil
}

// ownCgroupDir returns the directory of this process's cgroup in the cgroup v2
// hierarchy mounted in this mount namespace.
func ownCgroupDir() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	var rel string
	found := false
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			rel, found = p, true
		}
	}
	if !found {
		return "", errors.New("this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no 0:: line)")
	}
	mounts, err := cgroup2Mounts()
	if err != nil {
		return "", err
	}
	for _, m := range mounts {
		// A mount of a subtree (a container's): the process's path is below its root.
		if r, ok := strings.CutPrefix(rel, m.root); ok && (m.root == "/" || r == "" || r[0] == '/') {
			return filepath.Join(m.point, r), nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted (none in /proc/self/mountinfo)")
}

type mount struct{ root, point string }

// cgroup2Mounts lists the cgroup v2 mounts of /proc/self/mountinfo.
func cgroup2Mounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		left, right, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		lf, rf := strings.Fields(left), strings.Fields(right)
		if len(lf) < 5 || len(rf) < 1 || rf[0] != "cgroup2" {
			continue
		}
		out = append(out, mount{root: unescapeMount(lf[3]), point: unescapeMount(lf[4])})
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (a space is \040).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// newRunCgroup creates a cgroup with a new random name under base.
func newRunCgroup(base string) (string, error) {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", err
	}
	p := filepath.Join(base, "run-"+hex.EncodeToString(r[:]))
	if err := os.Mkdir(p, 0o755); err != nil {
		return "", fmt.Errorf("create a cgroup for the hook: %w", err)
	}
	return p, nil
}

// killCgroup kills every process of the cgroup at path (cgroup.kill, or SIGKILL to
// each process of cgroup.procs on a kernel without it) and waits, for at most wait,
// until it is empty.
func killCgroup(path string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	err := writeFile(filepath.Join(path, "cgroup.kill"), "1")
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(path); serr != nil {
			return nil // the cgroup is gone already
		}
		for time.Now().Before(deadline) {
			pids, perr := cgroupProcs(path)
			if perr != nil || len(pids) == 0 {
				break
			}
			for _, p := range pids {
				unix.Kill(p, unix.SIGKILL) // they are in the cgroup: the hook's
			}
			if waitEmpty(path, 20*time.Millisecond) == nil {
				return nil
			}
		}
	} else if err != nil {
		return fmt.Errorf("kill cgroup %s: %w", path, err)
	}
	return waitEmpty(path, time.Until(deadline))
}

// cgroupProcs lists the processes of a cgroup.
func cgroupProcs(path string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// waitEmpty waits, for at most wait, until cgroup.events says "populated 0": the file
// is polled, which wakes on each change of it.
func waitEmpty(path string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	fd, err := unix.Open(filepath.Join(path, "cgroup.events"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed already
	}
	if err != nil {
		return os.NewSyscallError("open cgroup.events", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 256)
	for {
		n, err := unix.Pread(fd, buf, 0)
		if err != nil {
			return os.NewSyscallError("read cgroup.events", err)
		}
		if bytes.Contains(buf[:n], []byte("populated 0")) {
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("cgroup %s still has processes %s after they were killed", path, wait)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLPRI}}
		if _, err := unix.Poll(fds, int(left/time.Millisecond)+1); err != nil && !errors.Is(err, unix.EINTR) {
			return os.NewSyscallError("poll cgroup.events", err)
		}
	}
}

// removeCgroup removes an empty cgroup; one that is gone already is no error.
func removeCgroup(path string) error {
	if err := unix.Rmdir(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove cgroup %s: %w", path, err)
	}
	return nil
}

// endRunCgroup kills, awaits and removes the cgroup whose path the spool directory dir
// records, if any, then forgets it. It returns the cgroup's path ("" if none).
func endRunCgroup(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, cgroupFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	path := strings.TrimSpace(string(b))
	if path == "" || !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s names no cgroup: %q", filepath.Join(dir, cgroupFile), b)
	}
	if err := endCgroup(path); err != nil {
		return path, err
	}
	os.Remove(filepath.Join(dir, cgroupFile))
	return path, nil
}

// endCgroup kills, awaits and removes the cgroup at path.
func endCgroup(path string) error {
	if err := killCgroup(path, cgroupWait); err != nil {
		return err
	}
	return removeCgroup(path)
}

// writeFile writes s to an existing file (a cgroup's control file).
func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
