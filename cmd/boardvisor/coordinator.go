package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/audit"
	"github.com/boardvisor/boardvisor/connector/connlimit"
	link "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func newCoordinator(g *globalFlags) *cobra.Command {
	var listen, stateDir, tokens, clientTokens, cert, key, metricsAddr, database string
	var grace, startBound, authDeadline time.Duration
	var profiling bool
	var maxQueued, maxWatchesPerUser, maxWatches, maxUnauth int
	cmd := &cobra.Command{
		Use:   "coordinator --state-dir DIR [--listen ADDR] [--supervisor-tokens FILE]",
		Short: "run the coordinator: board inventory, lease queue, supervisor links",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if stateDir == "" {
				return usageError{fmt.Errorf("--state-dir DIR is required")}
			}
			logger, err := newLogger(g, "", "")
			if err != nil {
				return err
			}
			opts := coordinator.Options{StateDir: stateDir, Logger: logger.Named("coordinator"), Grace: grace, StartBound: startBound,
				MaxQueuedPerUser: maxQueued, MaxWatchesPerUser: maxWatchesPerUser, MaxWatches: maxWatches,
				MaxUnauthenticatedPerPeer: maxUnauth, AuthDeadline: authDeadline}
			switch {
			case database == "":
			case strings.HasPrefix(database, "postgres://"), strings.HasPrefix(database, "postgresql://"):
				opts.Driver, opts.DB = "pgx", database
			default:
				return usageError{fmt.Errorf("--database %q: want a postgres:// URL (without it the coordinator keeps an SQLite file in --state-dir)", redactURL(database))}
			}
			if tokens != "" {
				table, err := readTokens(tokens)
				if err != nil {
					return err
				}
				opts.SupervisorAuth = link.StaticTokens(table)
			} else {
				logger.Warn("no --supervisor-tokens file: every supervisor is accepted (use only on a trusted network)")
			}
			if clientTokens != "" {
				users, err := readClientTokens(clientTokens)
				if err != nil {
					return err
				}
				opts.ClientTokens = users
			} else {
				logger.Warn("no --client-tokens file: every client is accepted and may change any lease (use only on a trusted network)")
			}
			var sopts []grpc.ServerOption
			if cert != "" || key != "" {
				pair, err := tls.LoadX509KeyPair(cert, key)
				if err != nil {
					return fmt.Errorf("TLS certificate: %w", err)
				}
				sopts = append(sopts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})))
			}
			if profiling && metricsAddr == "" {
				return usageError{fmt.Errorf("--pprof serves on the metrics listener: set --metrics ADDR too")}
			}
			return serveCoordinator(ctx, opts, serveOptions{listen: listen, metrics: metricsAddr, pprof: profiling, grpc: sopts})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7400", "address for supervisors and clients")
	f.StringVar(&stateDir, "state-dir", "", "directory for the coordinator's database (SQLite), audit log and lock (required)")
	f.StringVar(&database, "database", "", "a PostgreSQL URL (postgres://user@host/db) to keep the coordinator's state in instead of SQLite; a password in it is better in PGPASSWORD or ~/.pgpass")
	f.StringVar(&tokens, "supervisor-tokens", "", "file of `supervisor-id token` lines; only these supervisors are accepted")
	f.StringVar(&clientTokens, "client-tokens", "", "file of `user token [admin]` lines; only these clients are accepted")
	f.StringVar(&cert, "tls-cert", "", "TLS certificate (PEM); with --tls-key turns TLS on")
	f.StringVar(&key, "tls-key", "", "TLS private key (PEM)")
	f.DurationVar(&grace, "grace", 30*time.Second, "how long a supervisor may be gone before its boards show OFFLINE")
	f.DurationVar(&startBound, "start-bound", coordinator.DefaultStartBound,
		"how long an assigned lease may take to become READY (its beforeLease hook) before it is ended; its duration counts from READY")
	f.StringVar(&metricsAddr, "metrics", "", "address of the Prometheus endpoint (/metrics); empty: none")
	f.IntVar(&maxQueued, "max-queued-per-user", coordinator.DefaultMaxQueuedPerUser, "leases one user (or client name, without --client-tokens) may have waiting in the queue")
	f.IntVar(&maxWatchesPerUser, "max-watches-per-user", coordinator.DefaultMaxWatchesPerUser, "WatchLease streams one user (or address, without --client-tokens) may have open")
	f.IntVar(&maxWatches, "max-watches", coordinator.DefaultMaxWatches, "WatchLease streams open in all")
	f.IntVar(&maxUnauth, "max-unauthenticated-per-peer", connlimit.DefaultMaxPerPeer, "connections one address may hold before a call on them presents a valid token (with token files)")
	f.DurationVar(&authDeadline, "auth-deadline", connlimit.DefaultDeadline, "how long a connection may stay open without a call presenting a valid token (with token files)")
	f.BoolVar(&profiling, "pprof", false, "also serve Go's profiler (/debug/pprof/) on the metrics listener; admins only when --client-tokens is set")
	return cmd
}

// readTokens reads "supervisor-id token" lines ('#' starts a comment).
func readTokens(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("supervisor tokens: %w", err)
	}
	defer f.Close()
	table := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("%s:%d: want `supervisor-id token`", path, n)
		}
		table[fields[1]] = fields[0]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("supervisor tokens %s: %w", path, err)
	}
	if len(table) == 0 {
		return nil, fmt.Errorf("supervisor tokens %s: no tokens", path)
	}
	return table, nil
}

// serveOptions say where and how a coordinator serves.
type serveOptions struct {
	listen, metrics string
	pprof           bool // Go's profiler on the metrics listener
	grpc            []grpc.ServerOption
	// ready, if not nil, is called with the listening address.
	ready func(addr string)
}

// serveCoordinator runs a coordinator until ctx is done.
func serveCoordinator(ctx context.Context, opts coordinator.Options, so serveOptions) error {
	listen, metricsAddr, sopts, ready := so.listen, so.metrics, so.grpc, so.ready
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	al, err := audit.Open(filepath.Join(opts.StateDir, "audit.jsonl"), audit.Who("coordinator"))
	if err != nil {
		return err
	}
	defer al.Close()
	opts.Audit = al
	c, err := coordinator.New(opts)
	if err != nil {
		return err
	}
	defer c.Close()
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	srv := supervisor.NewGRPCServer(append(sopts, c.ServerOptions()...)...)
	c.Register(srv)
	go srv.Serve(c.Listener(lis))
	defer srv.Stop()
	if metricsAddr != "" {
		mlis, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: listen on %s: %w", metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", c.MetricsHandler())
		if so.pprof {
			// The handlers of net/http/pprof, on this mux only (never the default one).
			mux.Handle("/debug/pprof/", c.AdminOnly(http.HandlerFunc(pprof.Index)))
			mux.Handle("/debug/pprof/cmdline", c.AdminOnly(http.HandlerFunc(pprof.Cmdline)))
			mux.Handle("/debug/pprof/profile", c.AdminOnly(http.HandlerFunc(pprof.Profile)))
			mux.Handle("/debug/pprof/symbol", c.AdminOnly(http.HandlerFunc(pprof.Symbol)))
			mux.Handle("/debug/pprof/trace", c.AdminOnly(http.HandlerFunc(pprof.Trace)))
			opts.Logger.Info("profiler on the metrics listener", "path", "/debug/pprof/", "admin_only", opts.ClientTokens != nil)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(mlis)
		defer hs.Close()
		opts.Logger.Info("metrics", "address", mlis.Addr().String())
	}
	db := "sqlite in the state directory"
	if opts.DB != "" {
		db = redactURL(opts.DB)
	}
	opts.Logger.Info("coordinator listening", "address", lis.Addr().String(), "stateDir", opts.StateDir, "database", db)
	if ready != nil {
		ready(lis.Addr().String())
	}
	err = c.Run(ctx)
	opts.Logger.Info("stopped")
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// readClientTokens reads "user token [admin]" lines ('#' starts a comment).
func readClientTokens(path string) (coordinator.ClientTokens, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("client tokens: %w", err)
	}
	defer f.Close()
	users := coordinator.ClientTokens{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || len(fields) > 3 || (len(fields) == 3 && fields[2] != "admin") {
			return nil, fmt.Errorf("%s:%d: want `user token` or `user token admin`", path, n)
		}
		users[fields[1]] = coordinator.User{Name: fields[0], Admin: len(fields) == 3}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("client tokens %s: %w", path, err)
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("client tokens %s: no tokens", path)
	}
	return users, nil
}

// redactURL drops a URL's password, for messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
