package tests

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
	created := createdLease(out)
	if created["lease"] == "" || created["token"] == "" || created["board"] != "qemu-01" || created["exporter"] == "" {
		t.Fatalf("lease create: %q", out)
	}
	id := created["lease"]
	if list := bv(t, coordAddr, "lease", "list"); !strings.Contains(list, id) || !strings.Contains(list, "qemu-01") {
		t.Fatalf("lease list does not show %s:\n%s", id, list)
	}
	if ext := bv(t, coordAddr, "lease", "extend", id, "--by", "5m"); !strings.Contains(ext, "now ends") {
		t.Fatalf("lease extend: %q", ext)
	}
	if rel := bv(t, coordAddr, "lease", "release", id); !strings.Contains(rel, "released") {
		t.Fatalf("lease release: %q", rel)
	}
	// The supervisor's audit log holds the lease's transitions, one JSON object a line.
	audit := filepath.Join(dir, "state", "audit.jsonl")
	eventually(t, "the lease's end in the audit log", func() bool {
		b, _ := os.ReadFile(audit)
		return strings.Contains(string(b), id) && strings.Contains(string(b), `"DONE"`)
	})
	for _, line := range readLines(t, audit) {
		if !json.Valid([]byte(line)) {
			t.Fatalf("audit line is not JSON: %q", line)
		}
	}
	table := bv(t, coordAddr, "status")
	if !strings.HasPrefix(table, "BOARD") || !strings.Contains(table, "rpi4-01") {
		t.Fatalf("status table:\n%s", table)
	}
	// A bad selector is one clear line and a failure.
	bad, err := bvAs(coordAddr, "", "lease", "create", "-l", "device=rpi9")
	if err == nil || !strings.Contains(bad, "no board matches device=rpi9") || strings.Count(strings.TrimSpace(bad), "\n") != 0 {
		t.Fatalf("unsatisfiable lease: %v %q", err, bad)
	}
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape %s: %d %v", addr, resp.StatusCode, err)
	}
	return string(b)
}

// The metrics endpoints of the real daemons, scraped before and during a lease.
func TestMetricsEndpoints(t *testing.T) {
	dir := t.TempDir()
	coordAddr, coordMetrics, supMetrics := freeAddr(t), freeAddr(t), freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--metrics", coordMetrics)
	cfg := labConfig{dir: dir, id: "lab-1", coordAddr: coordAddr, before: "echo 'JMP_INFO: hi'", metrics: supMetrics,
		boards: []boardSpec{{"rpi4-01", "device: rpi4"}}}.write(t)
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)
	before := scrape(t, supMetrics)
	for _, want := range []string{`boardvisor_board_status{board="rpi4-01",status="available"} 1`, `boardvisor_board_health{board="rpi4-01",health="good"} 1`} {
		if !strings.Contains(before, want) {
			t.Fatalf("supervisor metrics lack %s:\n%s", want, before)
		}
	}
	bv(t, coordAddr, "lease", "create", "--board", "rpi4-01")
	var m string
	eventually(t, "the board LEASE_READY in the metrics", func() bool {
		m = scrape(t, supMetrics)
		return strings.Contains(m, `boardvisor_board_status{board="rpi4-01",status="lease_ready"} 1`)
	})
	if !strings.Contains(m, `boardvisor_hook_runs_total{board="rpi4-01",hook="beforeLease",outcome="ok"} 1`) {
		t.Fatalf("no successful hook run counted:\n%s", m)
	}
	coord := scrape(t, coordMetrics)
	if !strings.Contains(coord, `boardvisor_coordinator_supervisor_connected{supervisor="lab-1"} 1`) {
		t.Fatalf("coordinator metrics:\n%s", coord)
	}
}

// `boardvisor logs -f` inside a lease: the lease's hook lines and phases so far, then live.
func TestLogsFollow(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "echo 'JMP_WARN: flash is slow'", "", boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	out, err := runShell(t, coordAddr, "shell", "-l", "device=rpi4", "--", "sh", "-c", "timeout 2 "+binary+" logs -f; true")
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	for _, want := range []string{"BEFORE_LEASE_HOOK WARN  flash is slow", "SYSTEM            INFO  lease READY: ready"} {
		if !strings.Contains(out, want) {
			t.Fatalf("logs -f output lacks %q:\n%s", want, out)
		}
	}
}

// Hooks run under the shim's own binary when it lies next to boardvisor (as `make
// build` and the packages install them), and the supervisor says so in its log.
func TestShimBinaryRunsHooks(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	// The hook's parent is its shim.
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, `echo "JMP_INFO: shim is $(cat /proc/$PPID/comm)"`, "", boardSpec{"rpi4-01", "device: rpi4"})
	sup := startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	out, err := runShell(t, coordAddr, "shell", "-l", "device=rpi4", "--", "sh", "-c", "timeout 2 "+binary+" logs -f; true")
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	if !strings.Contains(out, "shim is boardvisor-shim") {
		t.Fatalf("the hook did not run under boardvisor-shim:\n%s", out)
	}
	if log := sup.output(); !strings.Contains(log, "hooks run under "+filepath.Join(filepath.Dir(binary), "boardvisor-shim")) {
		t.Fatalf("the supervisor's log does not say which shim runs the hooks:\n%s", log)
	}
}
