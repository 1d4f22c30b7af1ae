package tests

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Clients authenticate to the coordinator: leases are recorded under the user's name,
// only their holder or an admin changes them, and maintenance is admin-only.
func TestClientTokensAtTheCoordinator(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "client-tokens")
	os.WriteFile(tokens, []byte("# user token [admin]\nalice tok-alice-123\nbob tok-bob-456\nroot tok-root-789 admin\n"), 0o600)
	coordAddr := freeAddr(t)
	coord := startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--client-tokens", tokens)
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)

	if out, err := bvAs(coordAddr, "", "status"); err == nil || !strings.Contains(out, "no client token") {
		t.Fatalf("status without a token: %v %q", err, out)
	}
	if out, err := bvAs(coordAddr, "tok-forged", "status"); err == nil || !strings.Contains(out, "client token not accepted") {
		t.Fatalf("status with a forged token: %v %q", err, out)
	}
	out, err := bvAs(coordAddr, "tok-alice-123", "lease", "create", "--board", "rpi4-01", "--client", "mallory")
	if err != nil {
		t.Fatalf("alice creates a lease: %v %s", err, out)
	}
	id := createdLease(out)["lease"]
	if list, _ := bvAs(coordAddr, "tok-bob-456", "lease", "list"); !strings.Contains(list, id) || !strings.Contains(list, "alice") || strings.Contains(list, "mallory") {
		t.Fatalf("the lease is not recorded under alice's name:\n%s", list)
	}
	if out, err := bvAs(coordAddr, "tok-bob-456", "lease", "release", id); err == nil || !strings.Contains(out, "belongs to alice") {
		t.Fatalf("bob releases alice's lease: %v %q", err, out)
	}
	// Maintenance is admin-only.
	leases := leaseClient(t, coordAddr)
	as := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tok)
	}
	if _, err := leases.SetBoardMaintenance(as("tok-bob-456"), &pb.SetBoardMaintenanceRequest{Board: "rpi4-01", On: true}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("bob sets maintenance: %v, want PERMISSION_DENIED", err)
	}
	if _, err := leases.SetBoardMaintenance(as("tok-root-789"), &pb.SetBoardMaintenanceRequest{Board: "rpi4-01", On: true, Reason: "cable swap"}); err != nil {
		t.Fatalf("root sets maintenance: %v", err)
	}
	if out, err := bvAs(coordAddr, "tok-root-789", "lease", "release", id); err != nil {
		t.Fatalf("an admin releases alice's lease: %v %s", err, out)
	}
	for _, tok := range []string{"tok-alice-123", "tok-bob-456", "tok-root-789", "tok-forged"} {
		if strings.Contains(coord.output(), tok) {
			t.Fatalf("coordinator output contains a client token")
		}
	}
	b, _ := os.ReadFile(filepath.Join(dir, "coord", "audit.jsonl"))
	if !strings.Contains(string(b), "client token not accepted") && !strings.Contains(string(b), "unknown client token") {
		t.Fatalf("refused clients not in the coordinator's audit log:\n%s", b)
	}
}
