package exporter

import (
	"context"
	"crypto/hmac"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// What the service knows of the connections its calls come over: whether a call on one
// authenticated it (PeerAuthenticated, for a cap on the connections a peer holds before
// it authenticates), and, with ClientCAs, whether its client certificate is the CA's.

// ServerOptions are the options of a gRPC server on a network address (not a Unix
// socket, whose permissions authenticate): with ClientCAs, every call needs a client
// certificate signed by one of them, except a hook's calls with its hook token.
func (s *Service) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := s.checkClientCert(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := s.checkClientCert(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// checkClientCert admits a call under the ClientCAs rule; a refusal is audited.
func (s *Service) checkClientCert(ctx context.Context) error {
	if s.ClientCAs == nil {
		return nil
	}
	_, err := tlsconf.PeerCertificate(ctx, s.ClientCAs)
	if err == nil {
		s.authenticated(ctx)
		return nil
	}
	if s.isHookToken(ctx) {
		return nil // a hook has no certificate; its token is checked by the call
	}
	s.refused(ctx, boardName(ctx), "", err.Error())
	return status.Errorf(codes.Unauthenticated, "this supervisor takes calls only with a client certificate signed by its clients' CA (%v): "+
		"give yours with --cert-file and --key-file (or $BOARDVISOR_CERT_FILE and $BOARDVISOR_KEY_FILE, or certFile: and keyFile: in the client config)", err)
}

// isHookToken reports whether the call presents the hook token of a lease on its board.
func (s *Service) isHookToken(ctx context.Context) bool {
	tok, board := token(ctx), boardName(ctx)
	if tok == "" || len(s.HookKey) == 0 {
		return false
	}
	s.mu.Lock()
	var jobs []string
	for _, l := range s.leases {
		if l.board == board {
			jobs = append(jobs, l.job)
		}
	}
	s.mu.Unlock()
	for _, j := range jobs {
		if hmac.Equal([]byte(tok), []byte(s.HookToken(j))) {
			return true
		}
	}
	return false
}

// authenticated tells PeerAuthenticated that the call's connection proved itself.
func (s *Service) authenticated(ctx context.Context) {
	if s.PeerAuthenticated != nil {
		s.PeerAuthenticated(peerOf(ctx))
	}
}
