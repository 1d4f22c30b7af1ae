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
	"github.com/boardvisor/boardvisor/cmd/boardvisor/internal/sdnotify"
	"github.com/boardvisor/boardvisor/connector/connlimit"
	link "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/web"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

func newCoordinator(g *globalFlags) *cobra.Command {
	var listen, stateDir, tokens, clientTokens, cert, key, metricsAddr, database, advertise string
	var grace, attachGrace, maxWait, startBound, authDeadline time.Duration
	var logs leaseLogFlags
	var dash webServe
	var profiling bool
	var maxQueued, maxWatchesPerUser, maxWatches, maxUnauth int
	var supervisorCA string // --tls-client-ca (coordtls.go)
	cmd := &cobra.Command{
		Use:   "coordinator --state-dir DIR [--listen ADDR] [--supervisor-tokens FILE]",
		Short: "run the coordinator: board inventory, lease queue, supervisor links",
		Args:  noArgs,
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
				AttachGrace: attachGrace, DetachedMaxWait: maxWait,
				MaxQueuedPerUser: maxQueued, MaxWatchesPerUser: maxWatchesPerUser, MaxWatches: maxWatches,
				MaxUnauthenticatedPerPeer: maxUnauth, AuthDeadline: authDeadline, Advertise: first(advertise, listen)}
			if opts.LeaseLogs, err = logs.options(); err != nil {
				return err
			}
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
				users, err := coordinator.ReadClientTokens(clientTokens)
				if err != nil {
					return err
				}
				opts.ClientTokens, opts.ClientTokensFile = users, clientTokens
			} else {
				logger.Warn("no --client-tokens file: every client is accepted and may change any lease (use only on a trusted network)")
			}
			if dash.addr != "" && clientTokens == "" {
				return usageError{fmt.Errorf("--web needs --client-tokens: users log in to the dashboard with their client tokens")}
			}
			if supervisorCA != "" && cert == "" {
				return usageError{fmt.Errorf("--tls-client-ca needs --tls-cert and --tls-key: supervisors present client certificates over TLS")}
			}
			var sopts []grpc.ServerOption
			if cert != "" || key != "" {
				pair, err := tls.LoadX509KeyPair(cert, key)
				if err != nil {
					return fmt.Errorf("TLS certificate: %w", err)
				}
				sopts = append(sopts, grpc.Creds(credentials.NewTLS(tlsconf.Server(pair, supervisorCA != ""))))
				dash.tls = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
				if supervisorCA != "" {
					pool, err := tlsconf.LoadPool(supervisorCA)
					if err != nil {
						return fmt.Errorf("--tls-client-ca: %w", err)
					}
					// Checked per link stream (connector/grpc/certauth.go), refusals audited
					// in the log serveCoordinator opens (coordtls.go).
					sopts = append(sopts, supervisorCerts(&opts, pool, logger.Named("link")))
				}
			}
			if profiling && metricsAddr == "" {
				return usageError{fmt.Errorf("--pprof serves on the metrics listener: set --metrics ADDR too")}
			}
			return serveCoordinator(ctx, opts, serveOptions{listen: listen, metrics: metricsAddr, pprof: profiling, grpc: sopts, web: dash})
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7400", "address for supervisors and clients")
	f.StringVar(&advertise, "advertise", "", "with --database: the address standby coordinators name when they send clients and supervisors to this one while it is active (default: --listen)")
	f.StringVar(&stateDir, "state-dir", "", "directory for the coordinator's database (SQLite), audit log and lock (required)")
	f.StringVar(&database, "database", "", "a PostgreSQL URL (postgres://user@host/db) to keep the coordinator's state in instead of SQLite; a password in it is better in PGPASSWORD or ~/.pgpass")
	f.StringVar(&tokens, "supervisor-tokens", "", "file of `supervisor-id token` lines; only these supervisors are accepted")
	f.StringVar(&clientTokens, "client-tokens", "", "file of `user token [admin]` lines; only these clients are accepted (boardvisor tokens manages it; reloaded when it changes and on SIGHUP)")
	f.StringVar(&cert, "tls-cert", "", "TLS certificate (PEM); with --tls-key turns TLS on")
	f.StringVar(&key, "tls-key", "", "TLS private key (PEM)")
	f.StringVar(&supervisorCA, "tls-client-ca", "", "CA certificates (PEM): supervisors must present a client certificate of this CA naming their supervisor ID (mTLS; needs --tls-cert)")
	f.DurationVar(&grace, "grace", 30*time.Second, "how long a supervisor may be gone before its boards show OFFLINE")
	f.DurationVar(&attachGrace, "attach-grace", coordinator.DefaultAttachGrace, "how long a lease that is not ready yet may be without its client (boardvisor shell gone) before it is withdrawn")
	f.DurationVar(&maxWait, "detached-max-wait", coordinator.DefaultDetachedMaxWait, "how long a detached lease (lease create --detach) may stay queued")
	addEnv(cmd, envNotifySocket, envWatchdogUsec)
	f.StringVar(&metricsAddr, "metrics", "", "address of the Prometheus endpoint (/metrics); empty: none")
	logs.addTo(f) // leaselogflags.go
	f.StringVar(&dash.addr, "web", "", "address of the web dashboard (e.g. 127.0.0.1:7480; HTTPS with --tls-cert); empty: none. Needs --client-tokens")
	f.DurationVar(&dash.session, "web-session", 12*time.Hour, "how long a dashboard login lasts")
	f.DurationVar(&startBound, "start-bound", coordinator.DefaultStartBound,
		"how long an assigned lease may take to become READY (its beforeLease hook) before it is ended; its duration counts from READY")
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

// webServe says where and how the coordinator serves its web dashboard (package web).
type webServe struct {
	addr    string        // "" for no dashboard
	tls     *tls.Config   // HTTPS (and so HTTP/2) when set
	session time.Duration // how long a login lasts
}

// serveOptions say where and how a coordinator serves.
type serveOptions struct {
	listen, metrics string
	pprof           bool // Go's profiler on the metrics listener
	grpc            []grpc.ServerOption
	web             webServe // the dashboard; zero: none
	// ready, if not nil, is called with the listening address.
	ready func(addr string)
}

// serveCoordinator runs a coordinator until ctx is done.
func serveCoordinator(ctx context.Context, opts coordinator.Options, so serveOptions) error {
	listen, metricsAddr, sopts, ready, dash := so.listen, so.metrics, so.grpc, so.ready, so.web
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	al, err := audit.Open(filepath.Join(opts.StateDir, "audit.jsonl"), audit.Who("coordinator"))
	if err != nil {
		return err
	}
	defer al.Close()
	setAudit(&opts, al) // coordtls.go
	c, err := coordinator.New(opts)
	if err != nil {
		return err
	}
	defer c.Close()
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", listen, err)
	}
	// Pings find a client whose network is gone: its AttachLease stream ends, and a
	// lease it waited for is withdrawn.
	sopts = append(sopts, grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}))
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
		mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { serveHealth(c, w, r) })
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
	if dash.addr != "" {
		stop, err := serveDashboard(c, al, opts, dash)
		if err != nil {
			return err
		}
		defer stop()
	}
	db := "sqlite in the state directory"
	if opts.DB != "" {
		db = redactURL(opts.DB)
	}
	opts.Logger.Info("coordinator listening", "address", lis.Addr().String(), "stateDir", opts.StateDir, "database", db, "version", versionString())
	if ready != nil {
		ready(lis.Addr().String())
	}
	// SIGHUP reloads the client tokens file (systemctl reload).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				if err := c.ReloadClientTokens(); err != nil {
					opts.Logger.Error("SIGHUP: client tokens not reloaded; the tokens in force stay", "error", err)
				} else {
					opts.Logger.Info("SIGHUP: client tokens reloaded")
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	notifyReady(opts.Logger)
	go sdnotify.Watchdog(ctx, c.Healthy)
	err = c.Run(ctx)
	notifyStopping(opts.Logger)
	opts.Logger.Info("stopped")
	if err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// notifyReady tells systemd the daemon serves (Type=notify); without systemd, nothing.
func notifyReady(logger hclog.Logger) {
	if err := sdnotify.Ready(); err != nil {
		logger.Warn("could not tell systemd the daemon is ready", "error", err)
	}
}

func notifyStopping(logger hclog.Logger) {
	if err := sdnotify.Stopping(); err != nil {
		logger.Warn("could not tell systemd the daemon stops", "error", err)
	}
}

// serveDashboard serves the web dashboard of c on dash.addr; stop ends it (the HTTP
// server first, then the dashboard's streams and watchers).
func serveDashboard(c *coordinator.Coordinator, al *audit.Log, opts coordinator.Options, dash webServe) (stop func(), err error) {
	d, err := web.New(web.Options{Coordinator: c, StateDir: opts.StateDir, Logger: opts.Logger.Named("web"), Audit: al, SessionTTL: dash.session})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", dash.addr)
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("web dashboard: listen on %s: %w", dash.addr, err)
	}
	hs := &http.Server{Handler: d.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 64 << 10, TLSConfig: dash.tls, ErrorLog: opts.Logger.Named("web").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	scheme := "http"
	if dash.tls != nil {
		scheme = "https"
		go hs.ServeTLS(lis, "", "")
	} else {
		go hs.Serve(lis)
	}
	opts.Logger.Info("web dashboard", "address", scheme+"://"+lis.Addr().String())
	return func() {
		_ = hs.Close()
		_ = d.Close()
	}, nil
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

// serveHealth answers /health on the metrics listener: 200 and "active" or "standby"
// (with the active coordinator's address) while the database answers, 503 otherwise.
func serveHealth(c *coordinator.Coordinator, w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := c.Healthy(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unhealthy: the database does not answer: %v\n", err)
		return
	}
	role := c.Role()
	switch {
	case role.Active:
		fmt.Fprintf(w, "active (term %d)\n", role.Term)
	case role.ActiveAddr != "":
		fmt.Fprintf(w, "standby (the active coordinator is %s)\n", role.ActiveAddr)
	default:
		fmt.Fprintln(w, "standby (no coordinator is active right now)")
	}
}
