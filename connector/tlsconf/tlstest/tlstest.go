// Package tlstest makes certificate authorities and certificates for tests, with
// crypto/x509, in the test's temporary directories: no key or certificate is ever
// committed.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// TB is what these helpers need of a test: testing.TB has it; NoTest panics instead,
// for tables of test files built outside a test.
type TB interface {
	Helper()
	Fatal(args ...any)
}

// NoTest is a TB that panics on failure.
var NoTest TB = panicTB{}

type panicTB struct{}

func (panicTB) Helper()           {}
func (panicTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }

// CA is a certificate authority of a test.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	// PEM is the CA's certificate, PEM-encoded.
	PEM []byte
}

var serial atomic.Int64

// NewCA makes a CA named name.
func NewCA(t TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// CN is the subject's common name; DNS and IPs its subject alternative names.
	CN  string
	DNS []string
	IPs []net.IP
	// Client and Server set the extended key usages (neither: none, which Go takes
	// for any).
	Client, Server bool
	// NotAfter, if set, is when it expires (default: in a day).
	NotAfter time.Time
}

// Localhost is a server certificate for 127.0.0.1 and localhost.
func Localhost(cn string) Leaf {
	return Leaf{CN: cn, DNS: []string{"localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}, Server: true}
}

// Issue makes a certificate signed by the CA; it returns the certificate and its
// private key, PEM-encoded.
func (ca *CA) Issue(t TB, l Leaf) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := l.NotAfter
	if notAfter.IsZero() {
		notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: l.CN},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter, DNSNames: l.DNS, IPAddresses: l.IPs,
		KeyUsage: x509.KeyUsageDigitalSignature}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// WriteCA writes the CA's certificate to dir/<name> and returns its path.
func (ca *CA) WriteCA(t TB, dir, name string) string {
	t.Helper()
	return write(t, dir, name, ca.PEM)
}

// WriteLeaf issues a certificate and writes it to dir/<name>.pem, its key to
// dir/<name>.key (mode 0600); it returns both paths.
func (ca *CA) WriteLeaf(t TB, dir, name string, l Leaf) (certFile, keyFile string) {
	t.Helper()
	c, k := ca.Issue(t, l)
	return write(t, dir, name+".pem", c), write(t, dir, name+".key", k)
}

func write(t TB, dir, name string, data []byte) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
