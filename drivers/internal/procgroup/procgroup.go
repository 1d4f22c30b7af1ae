// Package procgroup stops a child's whole process group: SIGTERM, a grace period,
// SIGKILL, then a bounded wait until no live member is left. The drivers start every
// child process (power commands, QEMU) as the leader of a group of its own
// (SysProcAttr.Setpgid), so that this reaches whatever it started too.
package procgroup

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"syscall"
	"time"
)

// ReapWait bounds how long Stop waits, after SIGKILL, for the group's members to die.
const ReapWait = 2 * time.Second

// Stop ends process group pgid. It sends SIGTERM to the group and waits up to grace for
// exited to be closed (the caller closes it when its Wait on the leader returns; nil means
// do not wait), then sends SIGKILL to the group, which also takes members that outlived
// the leader or ignore SIGTERM, and waits (at most ReapWait) until no member is alive.
// It reports whether SIGKILL found anyone to kill.
func Stop(pgid int, grace time.Duration, exited <-chan struct{}) (killed bool) {
	if pgid <= 1 {
		return false
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	if exited != nil {
		t := time.NewTimer(grace)
		select {
		case <-exited:
		case <-t.C:
		}
		t.Stop()
	}
	// The group may live on without its leader (a background child, one that ignores
	// SIGTERM): SIGKILL reaches all of them. ESRCH means no member was left.
	killed = syscall.Kill(-pgid, syscall.SIGKILL) == nil
	deadline := time.Now().Add(ReapWait)
	for Alive(pgid) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return killed
}

// Kill sends SIGKILL to process group pgid and returns at once.
func Kill(pgid int) {
	if pgid > 1 {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
}

// Alive reports whether any process of group pgid is alive (zombies do not count).
func Alive(pgid int) bool {
	return len(Members(pgid)) > 0
}

// Members lists the live (non-zombie) processes of group pgid, from /proc.
func Members(pgid int) []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	var out []int
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + n + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		state, pg, err := parseStat(b)
		if err != nil || pg != pgid || state == 'Z' || state == 'X' {
			continue
		}
		out = append(out, pid)
	}
	return out
}

// parseStat returns the state (field 3) and process group (field 5) of a /proc/PID/stat
// line. The command name (field 2) may hold spaces and parentheses: fields are counted
// from the last ')'.
func parseStat(b []byte) (state byte, pgrp int, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("no command name")
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3
	if len(f) < 3 {
		return 0, 0, errors.New("short stat")
	}
	pgrp, err = strconv.Atoi(string(f[2]))
	return f[0][0], pgrp, err
}
