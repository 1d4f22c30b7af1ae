package hook

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// descendants walks the children lists; it must find what the scan of all of /proc
// finds: a child, its children, and a grandchild whose parent is still alive.
func TestDescendantsFindsTheWholeTree(t *testing.T) {
	if !haveChildrenFiles() {
		t.Skip("this kernel has no /proc/PID/task/TID/children: descendants scans /proc, which the other tests cover")
	}
	cmd := exec.Command("/bin/sh", "-c", `sleep 30 & (sleep 30 & sleep 30 & wait) & echo started; wait`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	buf := make([]byte, 8)
	if _, err := out.Read(buf); err != nil || !strings.HasPrefix(string(buf), "started") {
		t.Fatalf("child did not start: %q %v", buf, err)
	}
	pids := func(ps []procStat) []int {
		var out []int
		for _, p := range ps {
			out = append(out, p.pid)
		}
		slices.Sort(out)
		return out
	}
	// sh, sleep, the subshell and its two sleeps: 5 processes, once they have all forked.
	deadline := time.Now().Add(10 * time.Second)
	var walk, scan []int
	for {
		w, err := descendants(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		s, err := descendantsScan(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		walk, scan = pids(w), pids(s)
		if len(walk) >= 5 && slices.Equal(walk, scan) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children lists found %v, the scan of /proc %v (want the same 5)", walk, scan)
		}
		time.Sleep(10 * time.Millisecond) // polling /proc: the forks announce nothing
	}
	if len(walk) != 5 {
		t.Errorf("found %d descendants %v, want 5 (sh, sleep, subshell, 2 sleeps)", len(walk), walk)
	}
}
