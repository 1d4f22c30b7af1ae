package procgroup

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	state, pgrp, err := parseStat([]byte("4242 (a (weird) name) S 1 4240 4240 0 -1 4194560 0 0"))
	if err != nil || state != 'S' || pgrp != 4240 {
		t.Errorf("parseStat = %c, %d, %v", state, pgrp, err)
	}
	if _, _, err := parseStat([]byte("4242 no name")); err == nil {
		t.Error("parseStat accepted a line without a command name")
	}
}

// Stop takes a group whose leader ignores SIGTERM and whose child outlives it.
func TestStop(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", `trap "" TERM; sleep 1000 & sleep 1000`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	pgid := cmd.Process.Pid
	for len(Members(pgid)) < 3 { // sh and two sleeps
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if !Stop(pgid, 100*time.Millisecond, exited) {
		t.Error("Stop found nobody to SIGKILL")
	}
	<-exited
	if m := Members(pgid); len(m) > 0 {
		t.Errorf("members %v left", m)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Stop took %s", d)
	}
}
