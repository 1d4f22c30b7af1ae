package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"

	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/audit"
	"github.com/boardvisor/boardvisor/cmd/boardvisor/internal/sdnotify"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/internal/diskspace"
	"github.com/boardvisor/boardvisor/jobs/journal"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/boardvisor/boardvisor/supervisor/devices"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/boardvisor/boardvisor/supervisor/metrics"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func newSupervise(g *globalFlags) *cobra.Command {
	var path string
	var up upstreamFlags
	cmd := &cobra.Command{
		Use:   "supervise --config FILE",
		Short: "run the supervisor daemon for the boards in FILE",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if path == "" {
				return usageError{errMissingConfig}
			}
			// Signals are caught from the start: a SIGTERM during start-up stops cleanly too.
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			logger, err := newLogger(g, cfg.Log.Level, cfg.Log.Format)
			if err != nil {
				return err
			}
			supervisorGC()
			supervisorProcs()
			return serveSupervisor(ctx, cfg, logger, nil, &up)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the supervisor's YAML config file (required; boardvisor config check FILE checks it)")
	up.add(cmd)
	up.peers.add(cmd)
	addEnv(cmd, envNotifySocket, envWatchdogUsec)
	return cmd
}

// SupervisorGOGC is the supervisor's garbage collector target (runtime/debug's
// SetGCPercent) unless GOGC is set in its environment. Console bytes stream through the
// daemon at up to 11.5 MB/s on a 1,000-board host, nearly all of it garbage a second
// later: at Go's default of 100 the collector was a quarter of the daemon's CPU on that
// path (supervisor 29.9 % of a core, against 22.6 % at 400, same-day console bench,
// 2026-12-01; on 2026-12-06, after the path's later changes, 15.7-18.7 % against
// 13.7-15.6 %). The price is memory: the heap may grow to five times what is live
// between collections (peak RSS 458-567 MB against 260-329 MB at 100, docs/operations.md).
const SupervisorGOGC = 400

// supervisorGC sets SupervisorGOGC unless the environment sets GOGC.
func supervisorGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(SupervisorGOGC)
	}
}

// SupervisorMinProcs is the fewest Ps (runtime.GOMAXPROCS) the supervisor runs with
// unless GOMAXPROCS is set in its environment. Go runs a goroutine on a P for up to
// 10 ms before it preempts it; with as many Ps as CPUs, a goroutine woken for an
// interactive console (the echo just read, the watcher it goes to) waits for a P held
// by the outbox's commit or the collector's marking, for tens of milliseconds while a
// thousand consoles stream. With more Ps than CPUs the kernel shares the CPUs among
// them at its finer grain: on the 2-core bench host keystroke echo p99 went from
// 83-128 ms to 22-35 ms (three runs each), for 1-2 points of a core more.
const SupervisorMinProcs = 8

// supervisorProcs raises GOMAXPROCS to SupervisorMinProcs unless the environment sets
// GOMAXPROCS.
func supervisorProcs() {
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && runtime.GOMAXPROCS(0) < SupervisorMinProcs {
		runtime.GOMAXPROCS(SupervisorMinProcs)
	}
}

// serveSupervisor runs a supervisor for cfg until ctx is done. ready, if not nil, is
// called with the client service's address once everything is up.
func serveSupervisor(ctx context.Context, cfg *config.Config, logger hclog.Logger, ready func(addr string), up *upstreamFlags) error {
	if err := cfg.CheckHookPrivileges(os.Geteuid()); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// The state directory holds the journal, the hook spools and hook.key: the daemon's
	// user's alone, never a hook's.
	if err := private(cfg.StateDir, 0o700, logger); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	// The state directory's space: a reserve released on the first full-disk failure, and
	// the state (low, full) the journal, the outbox and the recordings shed by.
	disk, err := diskspace.Open(diskspace.Options{Dir: cfg.StateDir, Logger: logger.Named("statedir")})
	if err != nil {
		return err
	}
	defer disk.Close()
	// The journal's lock is the state directory's: taken before anything else in it is
	// touched (devices remove stale run directories).
	jr, err := openJournal(filepath.Join(cfg.StateDir, "journal.db"), logger, disk)
	if err != nil {
		return err
	}
	defer jr.Close()
	// Devices are closed after every actor has stopped (deferred after the journal, so
	// closed before it).
	dev, err := devices.Build(cfg, logger.Named("devices"), disk)
	if err != nil {
		return err
	}
	defer dev.Close()
	boards := supervisor.BoardsFromConfig(cfg, dev)
	srvTLS, err := loadServiceTLS(cfg)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("client service: listen on %s: %w", cfg.Listen, err)
	}
	defer lis.Close()
	// What the coordinator tells clients, and hooks get: tls://HOST:PORT over TLS.
	endpoint := tlsconf.Endpoint(lis.Addr().String(), srvTLS != nil)
	var conn connector.SupervisorConnector = local.New()
	mopts := metrics.Options{StateDir: disk}
	for _, b := range boards {
		mopts.Boards = append(mopts.Boards, b.Name)
	}
	if cfg.Coordinator != nil {
		link, err := supervisor.OpenLink(cfg, endpoint, versionString(), logger, disk)
		if err != nil {
			return err
		}
		defer link.Close()
		conn = link.Client
		mopts.Outbox, mopts.Link = link.Queue, link.Client
	} else {
		logger.Info("no coordinator configured: jobs come only from this process (embedded mode)")
	}
	labels := map[string]map[string]string{}
	for _, b := range boards {
		labels[b.Name] = b.Labels
	}
	// Every lease transition and every refused access goes to the audit log.
	al, err := audit.Open(filepath.Join(cfg.StateDir, "audit.jsonl"), audit.Who("supervisor"))
	if err != nil {
		return err
	}
	defer al.Close()
	met := metrics.New(mopts)
	var sup *supervisor.Supervisor
	svc := exporter.New(labels, exporter.EnderFunc(func(ctx context.Context, board, job string) error {
		return sup.EndSession(ctx, board, job)
	}), dev)
	svc.Audit = al
	up.configure(svc)
	// Connections that no call has authenticated yet are counted per peer address, on
	// every TCP listener of the client service.
	peers := up.limiter(logger.Named("connections"), al)
	svc.PeerAuthenticated = peers.Authenticated
	var netOpts []grpc.ServerOption // of the servers on TCP addresses (not Unix sockets)
	if srvTLS != nil {
		netOpts = append(netOpts, grpc.Creds(credentials.NewTLS(srvTLS.conf)))
		svc.ClientCAs = srvTLS.clientCAs
	}
	netOpts = append(netOpts, svc.ServerOptions()...)
	// Hooks may call the board's drivers while they run, with a token of their own and
	// the same commands a user has in `boardvisor shell`.
	if svc.HookKey, err = hookKey(filepath.Join(cfg.StateDir, "hook.key"), logger); err != nil {
		return err
	}
	self, _ := os.Executable()
	hookEnv := func(job string) []string {
		env := []string{envExporter + "=" + endpoint, envLeaseToken + "=" + svc.HookToken(job), "BOARDVISOR_CLI=" + self}
		if srvTLS != nil {
			// A hook trusts this supervisor's certificate itself: no CA file to read, and
			// the address it dials need not be a name in the certificate.
			env = append(env, envExporterPin+"="+srvTLS.pin)
		}
		return append(env, dev.HookEnv(job)...)
	}
	sup, err = supervisor.Start(supervisor.Options{Boards: boards, StateDir: cfg.StateDir, Conn: conn, Logger: logger,
		Exporter: svc, Store: jr, Sinks: []outbox.Sink{dev.Sink, met.Sink, al.Sink}, HookEnv: hookEnv, HookCgroup: cfg.HookCgroup, Images: dev})
	if err != nil {
		return err
	}
	if cfg.Metrics != "" {
		mlis, err := net.Listen("tcp", cfg.Metrics)
		if err != nil {
			sup.Stop()
			return fmt.Errorf("metrics: listen on %s: %w", cfg.Metrics, err)
		}
		go func() {
			if err := met.Serve(ctx, mlis); err != nil {
				logger.Error("metrics endpoint", "error", err)
			}
		}()
		logger.Info("metrics", "address", mlis.Addr().String())
	}
	dev.PowerOn(ctx)
	g := supervisor.NewGRPCServer(netOpts...)
	svc.Register(g)
	go g.Serve(peers.Listener(lis))
	defer g.Stop()
	names := map[string]bool{}
	for _, b := range boards {
		names[b.Name] = true
	}
	stopUpstream, err := up.serve(svc, names, logger.Named("jumpstarter"), netOpts, peers.Listener)
	if err != nil {
		sup.Stop()
		return err
	}
	defer stopUpstream()
	logger.Info("supervising", "boards", len(boards), "stateDir", cfg.StateDir, "config", cfg.Path, "listen", lis.Addr().String(),
		"endpoint", endpoint, "tls", srvTLS != nil, "client_certificates", srvTLS != nil && srvTLS.clientCAs != nil, "version", versionString())
	if ready != nil {
		ready(lis.Addr().String())
	}
	notifyReady(logger)
	// The watchdog is pinged while the actor tree answers.
	go sdnotify.Watchdog(ctx, func(context.Context) error {
		_, err := sup.Board(boards[0].Name)
		return err
	})
	err = sup.Run(ctx)
	notifyStopping(logger)
	logger.Info("stopped")
	return err
}

var errMissingConfig = usageErrorText("--config FILE is required")

type usageErrorText string

func (e usageErrorText) Error() string { return string(e) }

// openJournal opens the lease journal. A damaged one is reported, moved aside, and
// replaced by an empty one: the daemon still serves its boards, and the coordinator
// learns that the leases it held are gone because they are missing from the Hello.
func openJournal(path string, logger hclog.Logger, disk *diskspace.Monitor) (*journal.Journal, error) {
	opts := journal.Options{Disk: disk, Logger: logger.Named("journal")}
	j, err := journal.Open(path, opts)
	var de *journal.DamagedError
	if !errors.As(err, &de) {
		return j, err
	}
	moved, rerr := journal.Recover(path)
	if rerr != nil {
		return nil, fmt.Errorf("%v; moving it aside failed too: %w", err, rerr)
	}
	logger.Error("lease journal damaged: moved aside, starting with an empty journal; its leases cannot be resumed",
		"file", path, "problem", de.Reason, "moved_to", moved)
	return journal.Open(path, opts)
}

// hookKey reads the key of hook tokens from path, creating it (32 random bytes, 0600) the
// first time: it outlives restarts, so re-adopted hooks keep their tokens. A key left
// readable by others (an older install) is made the daemon's user's alone.
func hookKey(path string, logger hclog.Logger) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil && len(key) >= 32 {
		if err := private(path, 0o600, logger); err != nil {
			return nil, fmt.Errorf("hook key: %w", err)
		}
		return key, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hook key: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("hook key: %w", err)
	}
	if err := os.WriteFile(path, key, 0o600); err != nil {
		return nil, fmt.Errorf("hook key: %w", err)
	}
	return key, nil
}

// private makes path (a directory or file of the daemon's) accessible to its owner
// alone: mode perm, if its mode gives anything to the group or others.
func private(path string, perm os.FileMode, logger hclog.Logger) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	logger.Warn("making a file of the daemon's private: hooks and other users must not read it", "path", path,
		"mode", fi.Mode().Perm().String(), "new_mode", perm.String())
	return os.Chmod(path, perm)
}

// serviceTLS is the client service's TLS, from the config's tls block.
type serviceTLS struct {
	conf      *tls.Config
	pin       string         // the certificate's SHA-256, for hooks (tlsconf.Client.Pin)
	clientCAs *x509.CertPool // nil: no client certificate needed
}

// loadServiceTLS loads the tls block's files (nil, nil without the block).
func loadServiceTLS(cfg *config.Config) (*serviceTLS, error) {
	t := cfg.TLS
	if t == nil {
		return nil, nil
	}
	pair, err := tlsconf.LoadKeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s: tls: %w", cfg.Path, err)
	}
	s := &serviceTLS{conf: tlsconf.Server(pair, t.ClientCAFile != ""), pin: tlsconf.Fingerprint(pair)}
	if t.ClientCAFile != "" {
		if s.clientCAs, err = tlsconf.LoadPool(t.ClientCAFile); err != nil {
			return nil, fmt.Errorf("%s: tls.clientCAFile: %w", cfg.Path, err)
		}
	}
	return s, nil
}
