package hook

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// What the shim does to keep a hook to what is its own: the hook runs as the user of
// Spec.Credential (the shim keeps the daemon's privileges, so the hook cannot signal it
// or the daemon, nor read the state directory), in a directory of its own, and in a
// cgroup of its own (see cgroup.go).

// runDirFile, in a spool directory, holds the path of the hook's own directory while it
// exists.
const runDirFile = "rundir"

// maxMotd bounds the message of the day a hook may write to $JMP_MOTD_FILE.
const maxMotd = 64 << 10

// Credential is the user, group and supplementary groups a hook runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// args returns the shim's flags for c.
func (c *Credential) args() []string {
	gs := make([]string, len(c.Groups))
	for i, g := range c.Groups {
		gs[i] = strconv.FormatUint(uint64(g), 10)
	}
	return []string{"--uid", strconv.FormatUint(uint64(c.UID), 10), "--gid", strconv.FormatUint(uint64(c.GID), 10),
		"--groups", strings.Join(gs, ",")}
}

// parseCredential parses the shim's --uid, --gid and --groups.
func parseCredential(uid, gid int, groups string) (*syscall.Credential, error) {
	if gid < 0 {
		return nil, errors.New("--uid needs --gid")
	}
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	for _, f := range strings.Split(groups, ",") {
		if f == "" {
			continue
		}
		g, err := strconv.ParseUint(f, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("--groups: %q is not a group id", f)
		}
		c.Groups = append(c.Groups, uint32(g))
	}
	return c, nil
}

// asUser prepares attr to start the hook as s.cred: in a new directory of its own
// (owned by the hook's user, mode 0700, outside the state directory), which is also its
// HOME and where its $JMP_MOTD_FILE points; the shim copies that file to the lease's
// JMP_MOTD_FILE when the hook is over. out is the hook's terminal (or pipe): a terminal
// is given to the hook's user, as a login's is.
func (s *shim) asUser(attr *os.ProcAttr, out *os.File) error {
	dir, err := os.MkdirTemp("", "boardvisor-hook-")
	if err != nil {
		return err
	}
	s.runDir = dir
	if err := os.WriteFile(filepath.Join(s.dir, runDirFile), []byte(dir), 0o600); err != nil {
		return err
	}
	if err := os.Chown(dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
		return err
	}
	env := attr.Env[:0:0]
	home := false
	for _, e := range attr.Env {
		switch {
		case strings.HasPrefix(e, "JMP_MOTD_FILE="):
			s.motd = strings.TrimPrefix(e, "JMP_MOTD_FILE=")
			e = "JMP_MOTD_FILE=" + filepath.Join(dir, "motd")
		case strings.HasPrefix(e, "HOME="):
			e, home = "HOME="+dir, true
		}
		env = append(env, e)
	}
	if !home {
		env = append(env, "HOME="+dir)
	}
	attr.Env, attr.Dir = env, dir
	attr.Sys.Credential = s.cred
	if !s.pipe {
		if err := unix.Fchown(int(out.Fd()), int(s.cred.Uid), -1); err != nil {
			s.logf("give the terminal to uid %d: %v", s.cred.Uid, err)
		}
	}
	return nil
}

// endRunDir copies the hook's message of the day to the lease's JMP_MOTD_FILE and
// removes the hook's directory.
func (s *shim) endRunDir() {
	if s.runDir == "" {
		return
	}
	if s.motd != "" {
		if err := copyMotd(filepath.Join(s.runDir, "motd"), s.motd, s.cred.Uid); err != nil {
			s.logf("the hook's message of the day: %v", err)
		}
	}
	if err := os.RemoveAll(s.runDir); err != nil {
		s.logf("remove the hook's directory: %v", err)
	}
	os.Remove(filepath.Join(s.dir, runDirFile))
	s.runDir = ""
}

// copyMotd copies the file at src, which the hook's user controls, to dst: only a
// regular file of that user's, not a symbolic link nor a hard link to another file, and
// at most maxMotd bytes of it.
func copyMotd(src, dst string, uid uint32) error {
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil // the hook wrote none
	}
	if err != nil {
		return os.NewSyscallError("open "+src, err)
	}
	f := os.NewFile(uintptr(fd), src)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != uid || st.Nlink != 1 {
		return fmt.Errorf("%s is not a regular file of the hook's own; ignored", src)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxMotd))
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// newCgroup creates the run's cgroup under --cgroup, records it in the spool directory
// and returns a descriptor of it to start the hook in, or -1 (none configured, or it
// cannot be made: the subreaper still collects what the hook leaves).
func (s *shim) newCgroup() int {
	if s.cgroupBase == "" {
		return -1
	}
	p, err := newRunCgroup(s.cgroupBase)
	if err != nil {
		s.logf("%v; the hook runs without a cgroup of its own", err)
		return -1
	}
	s.cgroup = p
	if err := os.WriteFile(filepath.Join(s.dir, cgroupFile), []byte(p+"\n"), 0o600); err != nil {
		s.logf("record the hook's cgroup: %v; the hook runs without a cgroup of its own", err)
		s.dropCgroup()
		return -1
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		s.logf("open cgroup %s: %v; the hook runs without a cgroup of its own", p, err)
		s.dropCgroup()
		return -1
	}
	return fd
}

// dropCgroup removes the run's cgroup before any process is in it.
func (s *shim) dropCgroup() {
	if err := removeCgroup(s.cgroup); err != nil {
		s.logf("%v", err)
	}
	os.Remove(filepath.Join(s.dir, cgroupFile))
	s.cgroup = ""
}

// endCgroup kills whatever is left in the run's cgroup, waits until it is empty and
// removes it.
func (s *shim) endCgroup() {
	if s.cgroup == "" {
		return
	}
	// By its path, not the spool's record of it: the spool may be gone already (a
	// lease's spools are removed when it ends, and a daemon may remove them early).
	if err := endCgroup(s.cgroup); err != nil {
		s.logf("end the hook's cgroup: %v", err)
		return
	}
	os.Remove(filepath.Join(s.dir, cgroupFile))
	s.cgroup = ""
}
