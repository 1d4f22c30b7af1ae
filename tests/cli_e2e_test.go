package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func bv(t *testing.T, coordAddr string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), "BOARDVISOR_COORDINATOR="+coordAddr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("boardvisor %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// The scripting commands: status (table and JSON) and lease create/list/extend/release.
func TestStatusAndLeaseCommands(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4"}, boardSpec{"qemu-01", "device: qemu"})
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 2)

	var rows []map[string]any
	if err := json.Unmarshal([]byte(bv(t, coordAddr, "status", "-o", "json", "-l", "device=rpi4")), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0]["name"] != "rpi4-01" || rows[0]["status"] != "AVAILABLE" || rows[0]["health"] != "good" || rows[0]["supervisor"] != "lab-1" {
		t.Fatalf("status -o json: %v", rows)
	}
	out := bv(t, coordAddr, "lease", "create", "--board", "qemu-01", "--duration", "10m")
	if !strings.HasPrefix(out, "lease=") || !strings.Contains(out, "\ntoken=") {
		t.Fatalf("lease create: %q", out)
	}
	id := strings.TrimPrefix(strings.SplitN(out, "\n", 2)[0], "lease=")
	if list := bv(t, coordAddr, "lease", "list"); !strings.Contains(list, id) || !strings.Contains(list, "qemu-01") {
		t.Fatalf("lease list does not show %s:\n%s", id, list)
	}
	if ext := bv(t, coordAddr, "lease", "extend", id, "--by", "5m"); !strings.Contains(ext, "now ends") {
		t.Fatalf("lease extend: %q", ext)
	}
	if rel := bv(t, coordAddr, "lease", "release", id); !strings.Contains(rel, "released") {
		t.Fatalf("lease release: %q", rel)
	}
	table := bv(t, coordAddr, "status")
	if !strings.HasPrefix(table, "BOARD") || !strings.Contains(table, "rpi4-01") {
		t.Fatalf("status table:\n%s", table)
	}
	// A bad selector is one clear line and a failure.
	cmd := exec.Command(binary, "lease", "create", "-l", "device=rpi9")
	cmd.Env = append(os.Environ(), "BOARDVISOR_COORDINATOR="+coordAddr)
	bad, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(bad), "no board matches device=rpi9") || strings.Count(strings.TrimSpace(string(bad)), "\n") != 0 {
		t.Fatalf("unsatisfiable lease: %v %q", err, bad)
	}
}
