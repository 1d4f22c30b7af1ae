package tests

import (
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSupervisorUnauthenticatedConnectionsCapped (issue 15 item 5, the supervisor's
// half): one address holds at most --max-unauthenticated-per-peer connections to the
// supervisor's client service on which no call presented a lease's token, each for
// --auth-deadline; the rest are closed as soon as they are accepted, and the refusal is
// audited. A lease holder from another address is served while the flood goes on, and
// its driver calls keep working after the flooder's deadline.
func TestSupervisorUnauthenticatedConnectionsCapped(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := labConfig{dir: dir, id: "lab-cap", coordAddr: coordAddr, virtual: true, boards: []boardSpec{{"virt-01", "device: virt"}}}.write(t)
	sup := start(t, "supervisor", "supervise", "--config", cfg, "--max-unauthenticated-per-peer", "4", "--auth-deadline", "3s")
	sup.waitLine("supervising:", "listen=")
	addr := sup.listenAddr()
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	var idle []net.Conn
	for range 20 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		idle = append(idle, conn)
	}
	closedWithin := func(conn net.Conn, d time.Duration) bool {
		conn.SetReadDeadline(time.Now().Add(d))
		for {
			if _, err := conn.Read(make([]byte, 4096)); err != nil {
				return err == io.EOF || strings.Contains(err.Error(), "reset")
			}
		}
	}
	var closedNow atomic.Int64 // looked at for 1s, well within the 3s deadline
	var checks sync.WaitGroup
	for _, conn := range idle {
		checks.Add(1)
		go func() {
			defer checks.Done()
			if closedWithin(conn, time.Second) {
				closedNow.Add(1)
			}
		}()
	}
	checks.Wait()
	if closed := int(closedNow.Load()); closed != 16 {
		t.Errorf("%d of 20 idle connections from one address closed at once, want 16", closed)
	}

	// A lease holder (from 127.0.0.1) is served meanwhile: a lease's power calls.
	l, ready := readyLease(t, leases, "device=virt", "cap-test")
	env := []string{"BOARDVISOR_EXPORTER=" + ready.GetExporterEndpoint(), "BOARDVISOR_BOARD=virt-01", "BOARDVISOR_TOKEN=" + l.GetToken()}
	if out, err := runCLI(env, "power", "on"); err != nil {
		t.Fatalf("power on while another address floods: %v\n%s", err, out)
	}
	for i, conn := range idle {
		if !closedWithin(conn, 15*time.Second) {
			t.Errorf("idle connection %d still open long after the 3s deadline", i)
		}
	}
	if out, err := runCLI(env, "power", "off"); err != nil {
		t.Fatalf("power off after the flood: %v\n%s", err, out)
	}
	audit := readFile(t, filepath.Join(dir, "state", "audit.jsonl"))
	if !strings.Contains(audit, "connection from 127.0.0.2:") || !strings.Contains(audit, "too many unauthenticated connections from this address") {
		t.Errorf("the supervisor's audit log does not record the refused connections:\n%s", audit)
	}
}
