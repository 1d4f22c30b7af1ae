package tlsconf_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/connector/tlsconf/tlstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serve runs a gRPC server with the TLS settings conf; each call's PeerCertificate
// against pool is sent on seen.
func serve(t *testing.T, conf credentials.TransportCredentials, check func(context.Context)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(conf), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		check(ctx)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func call(t *testing.T, addr string, c tlsconf.Client) error {
	t.Helper()
	conf, err := c.Config()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// TestPeerCertificate: a server asking for client certificates serves clients with and
// without one; PeerCertificate gives the certificate signed by the CA, and says which
// problem the others have; Matches takes the common name or a DNS name, exactly.
func TestPeerCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, other := tlstest.NewCA(t, "lab CA"), tlstest.NewCA(t, "another CA")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	srvCert, srvKey := ca.WriteLeaf(t, dir, "server", tlstest.Localhost("coordinator"))
	pair, err := tlsconf.LoadKeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tlsconf.LoadPool(caFile)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		names []string
		err   error
	}
	got := make(chan seen, 1)
	addr := serve(t, credentials.NewTLS(tlsconf.Server(pair, true)), func(ctx context.Context) {
		c, err := tlsconf.PeerCertificate(ctx, pool)
		s := seen{err: err}
		if c != nil {
			s.names = tlsconf.Names(c)
		}
		got <- s
	})

	goodCert, goodKey := ca.WriteLeaf(t, dir, "lab-a", tlstest.Leaf{CN: "lab-a", DNS: []string{"lab-a.example"}, Client: true})
	if err := call(t, addr, tlsconf.Client{CAFile: caFile, CertFile: goodCert, KeyFile: goodKey}); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s.err != nil || strings.Join(s.names, ",") != "lab-a,lab-a.example" {
		t.Errorf("a client certificate of the CA: names %v, error %v", s.names, s.err)
	}

	if err := call(t, addr, tlsconf.Client{CAFile: caFile}); err != nil {
		t.Fatal(err)
	}
	if s := <-got; !errors.Is(s.err, tlsconf.ErrNoCertificate) {
		t.Errorf("no client certificate: error %v, want ErrNoCertificate", s.err)
	}

	badCert, badKey := other.WriteLeaf(t, dir, "forged", tlstest.Leaf{CN: "lab-a", Client: true})
	if err := call(t, addr, tlsconf.Client{CAFile: caFile, CertFile: badCert, KeyFile: badKey}); err != nil {
		t.Fatal(err)
	}
	if s := <-got; !errors.Is(s.err, tlsconf.ErrUntrusted) {
		t.Errorf("a certificate of another CA: error %v, want ErrUntrusted", s.err)
	}

	serverOnlyCert, serverOnlyKey := ca.WriteLeaf(t, dir, "server-only", tlstest.Leaf{CN: "lab-a", Server: true})
	if err := call(t, addr, tlsconf.Client{CAFile: caFile, CertFile: serverOnlyCert, KeyFile: serverOnlyKey}); err != nil {
		t.Fatal(err)
	}
	if s := <-got; !errors.Is(s.err, tlsconf.ErrUntrusted) {
		t.Errorf("a server-only certificate as a client's: error %v, want ErrUntrusted", s.err)
	}

	c, _ := ca.Issue(t, tlstest.Leaf{CN: "lab-a", DNS: []string{"lab-b"}})
	cert := parse(t, c)
	for id, want := range map[string]bool{"lab-a": true, "lab-b": true, "LAB-A": false, "lab": false, "": false} {
		if tlsconf.Matches(cert, id) != want {
			t.Errorf("Matches(%q) = %v, want %v", id, !want, want)
		}
	}
}

// TestClientChecksTheServer: without the CA the server's certificate is refused as
// signed by an unknown authority; a pin accepts that certificate alone, whatever its
// name.
func TestClientChecksTheServer(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "lab CA")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	// A certificate for another name than the address dialled.
	srvCert, srvKey := ca.WriteLeaf(t, dir, "server", tlstest.Leaf{CN: "lab-a", DNS: []string{"lab-a.example"}, Server: true})
	pair, err := tlsconf.LoadKeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, credentials.NewTLS(tlsconf.Server(pair, false)), func(context.Context) {})
	lc, lk := ca.WriteLeaf(t, dir, "localhost", tlstest.Localhost("lab-a"))
	lp, _ := tlsconf.LoadKeyPair(lc, lk)
	local := serve(t, credentials.NewTLS(tlsconf.Server(lp, false)), func(context.Context) {})
	if err := call(t, local, tlsconf.Client{}); err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Errorf("without the CA: %v, want a certificate signed by an unknown authority", err)
	}
	if err := call(t, local, tlsconf.Client{CAFile: caFile}); err != nil {
		t.Errorf("with the CA: %v", err)
	}
	if err := call(t, addr, tlsconf.Client{CAFile: caFile}); err == nil || !strings.Contains(err.Error(), "x509: cannot validate certificate for 127.0.0.1") {
		t.Errorf("with the CA, at an address the certificate does not name: %v", err)
	}
	if err := call(t, addr, tlsconf.Client{Pin: tlsconf.Fingerprint(pair)}); err != nil {
		t.Errorf("pinned: %v", err)
	}
	other, otherKey := ca.WriteLeaf(t, dir, "other", tlstest.Localhost("other"))
	op, _ := tlsconf.LoadKeyPair(other, otherKey)
	if err := call(t, addr, tlsconf.Client{Pin: tlsconf.Fingerprint(op)}); err == nil || !strings.Contains(err.Error(), "not the one pinned") {
		t.Errorf("pinned to another certificate: %v", err)
	}
	if _, err := (tlsconf.Client{Pin: "abc"}).Config(); err == nil {
		t.Error("a pin that is not a SHA-256 was taken")
	}
	if _, err := (tlsconf.Client{CertFile: srvCert}).Config(); err == nil {
		t.Error("a client certificate without its key was taken")
	}
}

func TestEndpoint(t *testing.T) {
	for _, tc := range []struct {
		ep   string
		addr string
		tls  bool
	}{{"127.0.0.1:7410", "127.0.0.1:7410", false}, {"tls://lab-a:7410", "lab-a:7410", true}} {
		addr, tls := tlsconf.SplitEndpoint(tc.ep)
		if addr != tc.addr || tls != tc.tls || tlsconf.Endpoint(addr, tls) != tc.ep {
			t.Errorf("SplitEndpoint(%q) = %q, %v", tc.ep, addr, tls)
		}
	}
}

func TestLoadErrorsNameTheFiles(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "lab CA")
	cert, key := ca.WriteLeaf(t, dir, "a", tlstest.Localhost("a"))
	cert2, _ := ca.WriteLeaf(t, dir, "b", tlstest.Localhost("b"))
	for _, tc := range []struct {
		cert, key, want string
	}{
		{dir + "/nope.pem", key, "certificate " + dir + "/nope.pem: no such file or directory"},
		{cert, dir + "/nope.key", "key " + dir + "/nope.key: no such file or directory"},
		{cert2, key, "certificate " + cert2 + " with key " + key + ": private key does not match public key"},
		{key, key, "certificate " + key + " with key " + key + ": failed to find certificate PEM data"},
	} {
		if _, err := tlsconf.LoadKeyPair(tc.cert, tc.key); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("LoadKeyPair(%s, %s) = %v, want %q", tc.cert, tc.key, err, tc.want)
		}
	}
	if _, err := tlsconf.LoadPool(key); err == nil || err.Error() != "CA file "+key+" holds no PEM certificate" {
		t.Errorf("LoadPool(a key) = %v", err)
	}
	if _, err := tlsconf.LoadKeyPair(cert, key); err != nil {
		t.Error(err)
	}
}

func parse(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
