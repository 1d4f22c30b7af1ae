package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests run the real binary, built once for the package.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "boardvisor-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "boardvisor")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		panic("build boardvisor: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boardvisor.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSuperviseRejectsBadConfigInOneLine(t *testing.T) {
	state := t.TempDir()
	cfg := writeConfig(t, `stateDir: `+state+`
boards:
  - name: rpi4-01
    hooks:
      beforeLease: {script: "true", onFailure: retry}
  - name: rpi4-01
`)
	cmd := exec.Command(binary, "supervise", "--config", cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1", err)
	}
	out := stderr.String()
	for _, want := range []string{cfg, `board "rpi4-01"`, "onFailure", "retry", "duplicate"} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr %q does not mention %q", out, want)
		}
	}
	if n := strings.Count(strings.TrimSpace(out), "\n"); n != 0 {
		t.Errorf("stderr has %d lines, want one:\n%s", n+1, out)
	}
	if strings.Contains(out, "goroutine") || strings.Contains(out, "panic") {
		t.Errorf("stderr has a stack trace:\n%s", out)
	}
}

func TestSuperviseUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"supervise"}, {"supervise", "--config", "x", "--log-level", "loud"}, {"frobnicate"}} {
		cmd := exec.Command(binary, args...)
		out, err := cmd.CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() == 0 || !strings.HasPrefix(string(out), "boardvisor: ") {
			t.Errorf("%v: %v, output %q; want a one-line error and a failure status", args, err, out)
		}
	}
}

func TestSuperviseRunsAndStopsOnSIGTERM(t *testing.T) {
	state := t.TempDir()
	cfg := writeConfig(t, `stateDir: `+state+`
log: {format: text, level: info}
boards:
  - name: qemu-01
    labels: {device: qemu}
  - name: qemu-02
`)
	cmd := exec.Command(binary, "supervise", "--config", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(20 * time.Second)
	for waiting := true; waiting; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("daemon exited before it said it was supervising")
			}
			t.Log(l)
			if strings.Contains(l, "supervising") && strings.Contains(l, "boards=2") {
				waiting = false
			}
		case <-deadline:
			cmd.Process.Kill()
			t.Fatal("daemon did not say it was supervising")
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for l := range lines {
			t.Log(l)
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("daemon exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("daemon did not stop on SIGTERM")
	}
}
