package tests

// What ships beside the binary: the man pages (generated from the commands, committed
// in docs/man, current), the systemd units (dist/systemd, checked by systemd-analyze
// verify), and the daemons' side of them: readiness, the watchdog and stopping told to
// systemd's notification socket.

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// genMan writes the binary's man pages into dir.
func genMan(t *testing.T, dir string) {
	t.Helper()
	if out, err := runCLI(nil, "gen-man", dir); err != nil {
		t.Fatalf("gen-man: %v\n%s", err, out)
	}
}

func TestManPagesAreCurrent(t *testing.T) {
	dir := t.TempDir()
	genMan(t, dir)
	fresh, _ := filepath.Glob(filepath.Join(dir, "*.1"))
	committed, _ := filepath.Glob("../docs/man/*.1")
	if len(fresh) < 25 || len(fresh) != len(committed) {
		t.Fatalf("%d pages generated, %d in docs/man: run make man and commit docs/man", len(fresh), len(committed))
	}
	for _, f := range fresh {
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join("../docs/man", filepath.Base(f)))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("docs/man/%s is not current (%v): run make man and commit docs/man", filepath.Base(f), err)
		}
	}
	page, _ := os.ReadFile(filepath.Join(dir, "boardvisor-shell.1"))
	if !bytes.Contains(page, []byte("BOARDVISOR_COORDINATOR")) {
		t.Error("the shell's man page does not name its environment")
	}
}

// needTool skips without the tool, except under CI=true where .ci/run must have
// installed it.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s missing: .ci/run should have installed %s", tool, pkg)
	}
	t.Skipf("%s not installed (apt-get install %s)", tool, pkg)
	return ""
}

func TestSystemdUnitsVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	dir := t.TempDir()
	units, _ := filepath.Glob("../dist/systemd/*.service")
	if len(units) != 2 {
		t.Fatalf("units: %v", units)
	}
	args := []string{"verify"}
	env := os.Environ()
	if _, err := exec.LookPath("man"); err == nil {
		// Documentation=man:...: the generated pages must be there.
		genMan(t, filepath.Join(dir, "man", "man1"))
		env = append(env, "MANPATH="+filepath.Join(dir, "man"))
	} else {
		t.Log("man is not installed: the units' Documentation= pages are not checked")
		args = append(args, "--man=no")
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("/usr/local/bin/boardvisor ")) || !bytes.Contains(b, []byte("Type=notify")) || !bytes.Contains(b, []byte("WatchdogSec=")) {
			t.Errorf("%s: no ExecStart of /usr/local/bin/boardvisor, Type=notify or WatchdogSec", u)
		}
		// Verified with the binary under test where the unit expects the installed one.
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/boardvisor"), []byte(binary))
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	cmd := exec.Command(analyze, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "boardvisor-") {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// notifySocket is a datagram socket standing for systemd's; it returns its path and
// the notifications received, one string each.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 100)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := c.Read(b)
			if err != nil {
				return
			}
			ch <- string(b[:n])
		}
	}()
	return path, ch
}

func expectNotify(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case s := <-ch:
			if s == want {
				return
			}
		case <-deadline:
			t.Fatalf("no %s notification", want)
		}
	}
}

// Both daemons tell systemd they are ready, ping the watchdog, and say they stop.
func TestDaemonsNotifySystemd(t *testing.T) {
	for _, daemon := range []string{"coordinator", "supervise"} {
		t.Run(daemon, func(t *testing.T) {
			sock, ch := notifySocket(t)
			var args []string
			if daemon == "coordinator" {
				args = []string{"coordinator", "--listen", freeAddr(t), "--state-dir", t.TempDir()}
			} else {
				args = []string{"supervise", "--config", exampleConfig(t)}
			}
			cmd := exec.Command(binary, args...)
			// The watchdog every 250ms (WATCHDOG_USEC is twice the ping interval), for
			// this process.
			cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=500000")
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			var logs bytes.Buffer
			cmd.Stderr = &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
				if t.Failed() {
					t.Logf("%s log:\n%s", daemon, logs.String())
				}
			})
			expectNotify(t, ch, "READY=1")
			expectNotify(t, ch, "WATCHDOG=1")
			expectNotify(t, ch, "WATCHDOG=1")
			cmd.Process.Signal(syscall.SIGTERM)
			expectNotify(t, ch, "STOPPING=1")
			select {
			case err := <-done:
				done <- err
				if err != nil {
					t.Errorf("exit after SIGTERM: %v", err)
				}
			case <-time.After(wait):
				t.Fatal("did not stop")
			}
		})
	}
}
