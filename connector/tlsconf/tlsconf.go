// Package tlsconf builds the TLS settings of boardvisor's daemons and clients, and
// checks the certificates their peers present. It is used on every TLS edge: the
// coordinator's listener (supervisors and clients), a supervisor's client service and
// its per-board upstream endpoints, the supervisor's link to the coordinator, and the
// command line's connections to both daemons.
//
// The rules it keeps:
//
//   - TLS 1.2 at least, Go's default cipher suites.
//   - A server that takes client certificates asks for one without requiring it and
//     without checking it in the handshake (tls.RequestClientCert). The service checks
//     it per call against its CA (PeerCertificate): so one listener can serve peers that
//     need a certificate and peers that do not (the coordinator's clients; a
//     supervisor's hooks, which have a token of their own), and a refusal is a sentence
//     the peer reads and an audit record, not a handshake failure. Go's TLS still
//     checks, in the handshake, that the peer holds the certificate's private key.
//   - A client checks the server's certificate against its CA file, or, without one,
//     the system's roots; or, given a pin, against that one certificate alone (a hook
//     reaching its own supervisor, whose address need not be a name in the certificate).
//   - An identity is a certificate's subject common name or one of its DNS names
//     (Names): a supervisor's certificate must name its supervisor ID (Matches).
package tlsconf

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Scheme prefixes the address of a service that speaks gRPC over TLS wherever an
// address is passed around as text: a supervisor announces its client service as
// "tls://host:port" (plain "host:port": plaintext), and clients dial it so.
const Scheme = "tls://"

// SplitEndpoint returns an endpoint's address and whether it is served over TLS.
func SplitEndpoint(endpoint string) (addr string, useTLS bool) {
	if a, ok := strings.CutPrefix(endpoint, Scheme); ok {
		return a, true
	}
	return endpoint, false
}

// Endpoint is the endpoint of a service at addr, over TLS or not.
func Endpoint(addr string, useTLS bool) string {
	if useTLS {
		return Scheme + addr
	}
	return addr
}

// LoadKeyPair loads a certificate (PEM, the leaf first, then any intermediates) and its
// private key (PEM), with errors that name the files.
func LoadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	if _, err := os.Stat(certFile); err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s: %w", certFile, unwrapPath(err))
	}
	if _, err := os.Stat(keyFile); err != nil {
		return tls.Certificate{}, fmt.Errorf("key %s: %w", keyFile, unwrapPath(err))
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s with key %s: %s", certFile, keyFile, strings.TrimPrefix(unwrapPath(err).Error(), "tls: "))
	}
	return pair, nil
}

// LoadPool reads the PEM certificates of a CA file.
func LoadPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA file %s: %w", file, unwrapPath(err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", file)
	}
	return pool, nil
}

// Server returns the TLS settings of a server presenting pair. askClientCert asks
// clients for a certificate, checked per call by PeerCertificate (see the package
// comment).
func Server(pair tls.Certificate, askClientCert bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if askClientCert {
		c.ClientAuth = tls.RequestClientCert
	}
	return c
}

// Client says how a client checks a server and what it presents.
type Client struct {
	// CAFile holds the CA certificates (PEM) the server's certificate must be signed
	// by; empty: the system's roots.
	CAFile string
	// CertFile and KeyFile, if set, are the certificate the client presents when the
	// server asks for one.
	CertFile, KeyFile string
	// Pin, if set, is the hex SHA-256 of the server's certificate (its DER form, see
	// Fingerprint): that certificate alone is accepted, whatever its name and signer.
	Pin string
}

// Config returns the client's TLS settings.
func (c Client) Config() (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pool, err := LoadPool(c.CAFile)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = pool
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate file and its key file")
	}
	if c.CertFile != "" {
		pair, err := LoadKeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	if c.Pin != "" {
		pin, err := hex.DecodeString(c.Pin)
		if err != nil || len(pin) != sha256.Size {
			return nil, fmt.Errorf("certificate pin %q is not a hex SHA-256", c.Pin)
		}
		// The pin replaces the CA and the name: the certificate itself is what is trusted.
		conf.InsecureSkipVerify = true
		conf.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("the server presented no certificate")
			}
			sum := sha256.Sum256(raw[0])
			if subtle.ConstantTimeCompare(sum[:], pin) != 1 {
				return errors.New("the server's certificate is not the one pinned")
			}
			return nil
		}
	}
	return conf, nil
}

// Fingerprint is the hex SHA-256 of a key pair's leaf certificate, for Client.Pin.
func Fingerprint(pair tls.Certificate) string {
	if len(pair.Certificate) == 0 {
		return ""
	}
	sum := sha256.Sum256(pair.Certificate[0])
	return hex.EncodeToString(sum[:])
}

// Problems with a peer's certificate (PeerCertificate's errors).
var (
	// ErrNoCertificate: the call came over a connection without a client certificate
	// (or without TLS).
	ErrNoCertificate = errors.New("no client certificate")
	// ErrUntrusted: the certificate is not signed by the CA (or is expired, or not for
	// client authentication).
	ErrUntrusted = errors.New("client certificate not signed by the CA this service trusts")
)

// PeerCertificate returns the certificate the peer of a call presented, once checked
// against pool for client authentication (x509.ExtKeyUsageClientAuth, or no extended
// key usage). The error wraps ErrNoCertificate or ErrUntrusted with the reason.
func PeerCertificate(ctx context.Context, pool *x509.CertPool) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, ErrNoCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil, ErrNoCertificate
	}
	certs := info.State.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("%w (%s)", ErrUntrusted, strings.TrimPrefix(err.Error(), "x509: "))
	}
	return certs[0], nil
}

// Names are the identities a certificate gives: its subject's common name and its DNS
// names.
func Names(cert *x509.Certificate) []string {
	var names []string
	if cert.Subject.CommonName != "" {
		names = append(names, cert.Subject.CommonName)
	}
	for _, n := range cert.DNSNames {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}

// Matches reports whether the certificate names id (exactly: no wildcard, no case
// folding; an ID is not a host name).
func Matches(cert *x509.Certificate, id string) bool {
	return id != "" && slices.Contains(Names(cert), id)
}

// unwrapPath drops the operation and path an *os.PathError repeats.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
