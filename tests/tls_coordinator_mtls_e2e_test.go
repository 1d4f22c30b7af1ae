package tests

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/connector/tlsconf/tlstest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// TestTLSSupervisorCertificatesAtTheCoordinator: a coordinator with --tls-client-ca (mTLS
// for supervisors) links a supervisor whose client certificate is of that CA and names
// its supervisor ID; it refuses, with a log line on the supervisor naming the config key
// and an audit record at the coordinator, a supervisor without a certificate, one with a
// certificate of another CA, and one with a good certificate of another supervisor ID.
// The boards of the refused ones never reach the coordinator; clients of the lease
// service need no certificate.
func TestTLSSupervisorCertificatesAtTheCoordinator(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "lab CA")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	coordCert, coordKey := ca.WriteLeaf(t, dir, "coordinator", tlstest.Localhost("coordinator"))
	coordAddr := freeAddr(t)
	stateDir := filepath.Join(dir, "coord")
	coord := startCoordinator(t, coordAddr, stateDir, "--tls-cert", coordCert, "--tls-key", coordKey, "--tls-client-ca", caFile)

	goodCert, goodKey := ca.WriteLeaf(t, dir, "lab-good", tlstest.Leaf{CN: "lab-good", Client: true})
	other := tlstest.NewCA(t, "another CA")
	otherCert, otherKey := other.WriteLeaf(t, dir, "lab-other", tlstest.Leaf{CN: "lab-other", Client: true})

	sup := func(id, board, cert, key string) *proc {
		cfg := labConfig{dir: filepath.Join(dir, id), id: id, coordAddr: coordAddr, caFile: caFile, coordCert: cert, coordKey: key,
			boards: []boardSpec{{board, "device: rpi4"}}}.write(t)
		return startSupervisor(t, id, cfg)
	}
	good := sup("lab-good", "rpi4-good", goodCert, goodKey)
	noCert := sup("lab-nocert", "rpi4-nocert", "", "")
	wrongCA := sup("lab-other", "rpi4-other", otherCert, otherKey)
	imposter := sup("lab-imposter", "rpi4-imposter", goodCert, goodKey) // lab-good's certificate

	// A supervisor that does not trust the coordinator's CA says so, naming its CA file.
	otherCAFile := other.WriteCA(t, dir, "other-ca.pem")
	distrust := startSupervisor(t, "lab-distrust", labConfig{dir: filepath.Join(dir, "lab-distrust"), id: "lab-distrust", coordAddr: coordAddr,
		caFile: otherCAFile, coordCert: goodCert, coordKey: goodKey, boards: []boardSpec{{"rpi4-distrust", "device: rpi4"}}}.write(t))

	good.waitOutput("connected to coordinator")
	l := distrust.waitLine("coordinator link down", "the coordinator's TLS certificate at "+coordAddr+" does not verify against the CA file "+otherCAFile+" (coordinator.caFile): certificate signed by unknown authority")
	if strings.Contains(l, "rpc error") || strings.Contains(l, "transport:") {
		t.Errorf("the supervisor's log line has the transport's words: %s", l)
	}
	coord.waitOutput("supervisor connected: supervisor=lab-good")
	for _, p := range []*proc{noCert, wrongCA, imposter} {
		l := p.waitLine("the coordinator refused this supervisor's client certificate", "config_key=coordinator.certFile")
		t.Logf("%s: %s", p.name, l)
	}
	if !strings.Contains(imposter.findLine("refused this supervisor's client certificate"), `this one names lab-good, not \"lab-imposter\"`) {
		t.Errorf("the imposter's refusal does not say whose certificate it showed:\n%s", imposter.findLine("refused this supervisor's client certificate"))
	}
	// A client of the lease service (no certificate) sees the good board alone.
	leases := tlsLeaseClient(t, coordAddr, caFile)
	waitBoards(t, leases, 1)
	lb, err := leases.ListBoards(ctxT(t), &pb.ListBoardsRequest{})
	if err != nil || len(lb.GetBoards()) != 1 || lb.GetBoards()[0].GetName() != "rpi4-good" {
		t.Fatalf("boards at the coordinator: %v %v, want rpi4-good alone", lb, err)
	}
	for _, id := range []string{"lab-nocert", "lab-other", "lab-imposter"} {
		if strings.Contains(coord.output(), "supervisor="+id) && coord.findLine("supervisor connected", "supervisor="+id) != "" {
			t.Errorf("supervisor %s got through:\n%s", id, coord.output())
		}
	}
	audit := readFile(t, filepath.Join(stateDir, "audit.jsonl"))
	for _, want := range []string{"supervisor link: no client certificate", "supervisor link: client certificate not signed by the CA this service trusts",
		`claimed to be supervisor \"lab-imposter\" with a client certificate for lab-good`} {
		if !strings.Contains(audit, want) {
			t.Errorf("the coordinator's audit log has no %q:\n%s", want, audit)
		}
	}
}
