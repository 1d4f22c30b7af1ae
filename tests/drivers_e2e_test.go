package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A simulated board end to end: the lease's shell power-cycles it and reads its console
// with the boardvisor commands, and the lease's console is recorded on the lab host.
func TestVirtualBoardThroughShell(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	// The board is a simulated one on a pseudo-terminal.
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, before: "echo 'JMP_INFO: ready'", virtual: true,
		boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)

	// Inside the lease: power-cycle the board and follow its console until it boots.
	script := fmt.Sprintf(`%[1]s power cycle && timeout 3 %[1]s console > %[2]s/console.out; echo "lease=$BOARDVISOR_LEASE"`, binary, dir)
	out, err := runShell(t, coordAddr, "shell", "-l", "device=virt", "--duration", "5m", "--", "sh", "-c", script)
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	for _, want := range []string{"Connected to device.", "board virt-01: power cycle"} {
		if !strings.Contains(out, want) {
			t.Fatalf("shell output lacks %q:\n%s", want, out)
		}
	}
	console, err := os.ReadFile(filepath.Join(dir, "console.out"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(console), "virt-01 login:") {
		t.Fatalf("console did not show the board booting to its login prompt:\n%q", console)
	}
	lease := out[strings.LastIndex(out, "lease=")+len("lease="):]
	lease = strings.TrimSpace(lease[:strings.IndexByte(lease, '\n')])
	rec, err := runCLI(nil, "logs", "--console", "--lease", lease, "--state-dir", filepath.Join(dir, "state"))
	if err != nil {
		t.Fatalf("logs: %v\n%s", err, rec)
	}
	if !strings.Contains(rec, "virt-01 login:") {
		t.Fatalf("recording of lease %s lacks the boot log:\n%q", lease, rec)
	}
}

// A hook calls the board's drivers with its own token while it runs; the same token is
// refused once the lease is READY (drivers are the client's then).
func TestHookCallsDriversWithItsToken(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	tokFile := filepath.Join(dir, "hook-token")
	before := `"$BOARDVISOR_CLI" power cycle && echo "JMP_INFO: cycled" && echo "$BOARDVISOR_TOKEN" > ` + tokFile
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, before: before, virtual: true,
		boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	sup := startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	out, err := runShell(t, coordAddr, "shell", "-l", "device=virt", "--", "sh", "-c",
		fmt.Sprintf(`BOARDVISOR_TOKEN=$(cat %s) %s power on; echo "exit=$?"`, tokFile, binary))
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	if !strings.Contains(out, "[Hook INFO] cycled") {
		t.Fatalf("the hook's power cycle did not succeed:\n%s\nsupervisor:\n%s", out, sup.output())
	}
	if !strings.Contains(out, "a hook may call drivers only while it runs") || !strings.Contains(out, "exit=4") { // refused (docs/operations.md)
		t.Fatalf("the hook's token was not refused in READY:\n%s", out)
	}
}
