package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	bvgrpc "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/credentials"
)

// Link is a supervisor's connection to its coordinator: the client and its queue.
type Link struct {
	Client *bvgrpc.Client
	Queue  *bvgrpc.Queue
}

// Close closes the queue (after the client has stopped).
func (l *Link) Close() error { return l.Queue.Close() }

// OpenLink prepares the coordinator link a config describes: the outbox queue in the
// state directory, the token, TLS. endpoint is the address of the client service that
// clients are told to use; version is reported to the coordinator; disk (may be nil)
// watches the state directory's space.
func OpenLink(cfg *config.Config, endpoint, version string, logger hclog.Logger, disk *diskspace.Monitor) (*Link, error) {
	co := cfg.Coordinator
	id := co.SupervisorID
	if id == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("%s: coordinator.supervisorId not set and the host name is unknown: %w", cfg.Path, err)
		}
		id = h
	}
	var token string
	if co.TokenFile != "" {
		b, err := os.ReadFile(co.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("coordinator token: %w", err)
		}
		token = strings.TrimSpace(string(b))
		if token == "" {
			return nil, fmt.Errorf("coordinator token file %s is empty", co.TokenFile)
		}
	}
	var creds credentials.TransportCredentials
	if co.CAFile != "" {
		// The coordinator's certificate is checked against caFile; this supervisor's own
		// (certFile, keyFile) is presented if the coordinator asks for one.
		conf, err := tlsconf.Client{CAFile: co.CAFile, CertFile: co.CertFile, KeyFile: co.KeyFile}.Config()
		if err != nil {
			return nil, fmt.Errorf("%s: coordinator TLS: %w", cfg.Path, err)
		}
		creds = credentials.NewTLS(conf)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	q, err := bvgrpc.OpenQueue(filepath.Join(cfg.StateDir, "outbox.db"), bvgrpc.QueueOptions{MaxBytes: co.OutboxMaxBytes,
		Disk: disk, Logger: logger.Named("outbox")})
	if err != nil {
		return nil, err
	}
	var boards []bvgrpc.BoardInfo
	for _, b := range cfg.Resolve() {
		boards = append(boards, bvgrpc.BoardInfo{Name: b.Name, Labels: b.Labels, Endpoint: endpoint})
	}
	addrs := co.AddressList()
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s: coordinator.address is not set", cfg.Path)
	}
	c := bvgrpc.NewClient(bvgrpc.ClientOptions{Address: addrs[0], Addresses: addrs, Token: token, SupervisorID: id, Boards: boards,
		Queue: q, Creds: creds, CAFile: co.CAFile, Version: version, Logger: logger.Named("link"),
		MaxBackoff: co.ReconnectMaxBackoff.Std(), RefusedBackoff: co.RefusedBackoff.Std()})
	return &Link{Client: c, Queue: q}, nil
}
