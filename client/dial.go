package client

import (
	"fmt"
	"strings"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// DialExporter connects to a supervisor's client service at endpoint, as the
// coordinator (or boardvisor shell, or a hook's environment) gives it: "host:port" is
// plaintext gRPC, "tls://host:port" gRPC over TLS, the supervisor's certificate checked
// as t says (its CA file, else the system's roots; a pin instead for a hook), with t's
// client certificate if it has one. No call is made yet.
func DialExporter(endpoint string, t tlsconf.Client) (*grpc.ClientConn, error) {
	addr, useTLS := tlsconf.SplitEndpoint(endpoint)
	creds := insecure.NewCredentials()
	if useTLS {
		conf, err := t.Config()
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(conf)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("supervisor address %q: %w", endpoint, err)
	}
	return conn, nil
}

// TLSProblem reports whether a failed call failed in a TLS handshake (an untrusted,
// expired or misnamed certificate, or a peer that does not speak TLS): retrying does
// not help, the user's settings must change.
func TLSProblem(err error) bool {
	if status.Code(err) != codes.Unavailable {
		return false
	}
	msg := status.Convert(err).Message()
	return strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:") || strings.Contains(msg, "authentication handshake failed")
}
