package main

import (
	"crypto/x509"
	"sync"

	"github.com/boardvisor/boardvisor/audit"
	link "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
)

// The coordinator's --tls-client-ca: supervisors' client certificates, checked per
// link stream (connector/grpc's RequireCertificates), their refusals in the
// coordinator's audit log.

// supervisorCerts is the server option that requires supervisors' certificates of
// pool; its refusals are audited in the log serveCoordinator opens for opts.
func supervisorCerts(opts *coordinator.Options, pool *x509.CertPool, logger hclog.Logger) grpc.ServerOption {
	la := &lateAuditor{}
	opts.Audit = la
	return link.RequireCertificates(pool, la, logger)
}

// lateAuditor is an audit log given before it is opened: records before are dropped
// (none are: the server starts after the log is open).
type lateAuditor struct {
	mu sync.Mutex
	al *audit.Log
}

func (l *lateAuditor) Refused(who, board, job, reason string) {
	l.mu.Lock()
	al := l.al
	l.mu.Unlock()
	if al != nil {
		al.Refused(who, board, job, reason)
	}
}

// setAudit makes al the coordinator's audit log, and that of the lateAuditor opts had.
func setAudit(opts *coordinator.Options, al *audit.Log) {
	if la, ok := opts.Audit.(*lateAuditor); ok {
		la.mu.Lock()
		la.al = al
		la.mu.Unlock()
	}
	opts.Audit = al
}
