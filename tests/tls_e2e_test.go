package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCerts makes a CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
func writeCerts(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "boardvisor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "coordinator"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caTmpl, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("coord.pem", "CERTIFICATE", srvDER), write("coord.key", "EC PRIVATE KEY", keyDER)
}

// The coordinator link over TLS: a supervisor that trusts the coordinator's CA connects;
// one speaking plaintext to it does not.
func TestCoordinatorLinkOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCerts(t, dir)
	coordAddr := freeAddr(t)
	coord := startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--tls-cert", cert, "--tls-key", key)

	good := labConfig{dir: filepath.Join(dir, "good"), id: "lab-tls", coordAddr: coordAddr, caFile: ca,
		boards: []boardSpec{{"rpi4-01", "device: rpi4"}}}.write(t)
	sup := startSupervisor(t, "supervisor-tls", good)
	sup.waitOutput("connected to coordinator")
	coord.waitOutput("supervisor connected: supervisor=lab-tls")

	plain := supervisorConfig(t, filepath.Join(dir, "plain"), "lab-plain", coordAddr, "", "", boardSpec{"rpi4-02", "device: rpi4"})
	bad := startSupervisor(t, "supervisor-plaintext", plain)
	bad.waitOutput("coordinator link down; reconnecting")
	if strings.Contains(coord.output(), "supervisor=lab-plain") {
		t.Fatal("a plaintext supervisor got through to a TLS coordinator")
	}
}
