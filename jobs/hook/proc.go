package hook

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// procStat is what we use of /proc/PID/stat.
type procStat struct {
	pid       int
	state     byte   // field 3: R, S, D, Z, ...
	ppid      int    // field 4
	startTime uint64 // field 22: clock ticks after boot
}

// readStat reads /proc/PID/stat.
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(pid, b)
}

// parseStat parses the contents of /proc/PID/stat. The command name (field 2) is in
// parentheses and may itself contain spaces and parentheses, so the fields are counted
// from the last ')'.
func parseStat(pid int, b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: ppid: %w", pid, err)
	}
	st, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: starttime: %w", pid, err)
	}
	return procStat{pid: pid, state: f[0][0], ppid: ppid, startTime: st}, nil
}

// dead reports whether the process has exited (it is a zombie, or being reaped).
func (p procStat) dead() bool { return p.state == 'Z' || p.state == 'X' || p.state == 'x' }

// startTimeOf returns the start time of process pid (field 22 of /proc/PID/stat, in
// clock ticks after boot). Together with the pid it names one process: a pid reused by a
// later process has a different start time.
func startTimeOf(pid int) (uint64, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	return st.startTime, nil
}

// sameProcess reports whether pid is the process that started at startTime and has not
// exited yet.
func sameProcess(pid int, startTime uint64) bool {
	st, err := readStat(pid)
	return err == nil && st.startTime == startTime && !st.dead()
}

// descendants returns every process below root in the process tree. Zombies are
// included (they are dead() and harmless). It walks the children lists of
// /proc/PID/task/TID/children down from root, so its cost follows the size of root's
// tree, not the host's: with a thousand shims ending at once, a scan of all of /proc per
// shim made the host's process count the cost of every hook. The lists are a snapshot
// that a process forking meanwhile can escape; the shim's callers look again until no
// child is left to reap, and the cgroup catches the rest. Without children lists (a
// kernel built without CONFIG_PROC_CHILDREN) it walks the PPid links of /proc/*/stat.
func descendants(root int) ([]procStat, error) {
	if !haveChildrenFiles() {
		return descendantsScan(root)
	}
	var out []procStat
	queue := []int{root}
	for len(queue) > 0 {
		dir := "/proc/" + strconv.Itoa(queue[0]) + "/task/"
		queue = queue[1:]
		tasks, err := os.ReadDir(dir)
		if err != nil {
			continue // gone meanwhile: what was below it is reparented to the shim
		}
		for _, t := range tasks {
			b, err := os.ReadFile(dir + t.Name() + "/children")
			if err != nil {
				continue
			}
			for _, f := range bytes.Fields(b) {
				pid, err := strconv.Atoi(string(f))
				if err != nil {
					continue
				}
				st, err := readStat(pid)
				if err != nil {
					continue // gone meanwhile
				}
				out = append(out, st)
				queue = append(queue, pid)
			}
		}
	}
	return out, nil
}

// haveChildrenFiles reports whether the kernel has /proc/PID/task/TID/children.
var haveChildrenFiles = sync.OnceValue(func() bool {
	_, err := os.Stat("/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/children")
	return err == nil
})

// descendantsScan is descendants by the PPid links of every process in /proc.
func descendantsScan(root int) ([]procStat, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	children := make(map[int][]procStat)
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		children[st.ppid] = append(children[st.ppid], st)
	}
	var out []procStat
	queue := []int{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out, nil
}

// signalProc sends sig to the process p, unless its pid now names another process. It
// uses a pidfd so the check and the signal refer to the same process; without pidfd
// support it falls back to kill(2) after the check.
func signalProc(p procStat, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil
		}
		if st, e := readStat(p.pid); e != nil || st.startTime != p.startTime {
			return nil
		}
		return unix.Kill(p.pid, sig)
	}
	defer unix.Close(fd)
	if st, e := readStat(p.pid); e != nil || st.startTime != p.startTime {
		return nil
	}
	err = unix.PidfdSendSignal(fd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
