package grpc

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Supervisors' client certificates (mTLS): with RequireCertificates, a supervisor's link
// stream is served only if the supervisor presented, in the TLS handshake, a client
// certificate signed by the coordinator's supervisors' CA that names (as its common
// name or a DNS name) the supervisor ID its Hello gives. The certificate comes on top of
// the supervisor's token, if the coordinator has a tokens file: both must hold.
//
// The coordinator's TLS asks for a certificate without requiring it
// (tlsconf.Server(pair, true)): clients of the lease service have none, and a
// supervisor without one is refused here with a sentence that names the config keys to
// set, and an audit record, rather than a handshake failure it cannot explain.

// CertificateRefusal starts the message of a supervisor refused for its certificate
// (refusalOf tells it from a refused token by it).
const CertificateRefusal = "this coordinator takes supervisors only with a client certificate"

// RequireCertificates is the server option that makes every SupervisorLink stream show
// a client certificate of pool naming the stream's supervisor ID; a refusal is logged
// and audited (audit may be nil). Other services' calls are not affected.
func RequireCertificates(pool *x509.CertPool, audit Auditor, logger hclog.Logger) ggrpc.ServerOption {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	refuse := func(ctx context.Context, reason string) {
		logger.Warn("supervisor refused: client certificate", "peer", peerOf(ctx), "reason", reason)
		if audit != nil {
			audit.Refused(peerOf(ctx), "", "", reason)
		}
	}
	return ggrpc.ChainStreamInterceptor(func(srv any, ss ggrpc.ServerStream, info *ggrpc.StreamServerInfo, h ggrpc.StreamHandler) error {
		if info.FullMethod != pb.SupervisorLink_Connect_FullMethodName {
			return h(srv, ss)
		}
		cert, err := tlsconf.PeerCertificate(ss.Context(), pool)
		if err != nil {
			refuse(ss.Context(), "supervisor link: "+err.Error())
			return status.Errorf(codes.Unauthenticated, "%s signed by its supervisors' CA (%v): set coordinator.certFile and coordinator.keyFile in the supervisor's config to a certificate of that CA naming its supervisorId",
				CertificateRefusal, err)
		}
		return h(srv, &certStream{ServerStream: ss, cert: cert, refuse: refuse})
	})
}

// certStream checks the Hello of a stream against its certificate.
type certStream struct {
	ggrpc.ServerStream
	cert   *x509.Certificate
	refuse func(ctx context.Context, reason string)
	once   sync.Once
	err    error
}

// RecvMsg receives the stream's messages; the first, the Hello, must claim an ID the
// certificate names (else the stream gets PermissionDenied instead of its Hello).
func (s *certStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	s.once.Do(func() {
		msg, ok := m.(*pb.SupervisorMessage)
		if !ok {
			return
		}
		// A first message that is no Hello is refused by the server itself.
		if h := msg.GetHello(); h != nil && !tlsconf.Matches(s.cert, h.GetSupervisorId()) {
			names := strings.Join(tlsconf.Names(s.cert), ", ")
			s.refuse(s.Context(), fmt.Sprintf("supervisor link: claimed to be supervisor %q with a client certificate for %s", h.GetSupervisorId(), names))
			s.err = status.Errorf(codes.PermissionDenied, "%s naming its supervisor ID: this one names %s, not %q; set coordinator.supervisorId to the certificate's name, or give the supervisor a certificate of its own",
				CertificateRefusal, names, h.GetSupervisorId())
		}
	})
	return s.err
}
