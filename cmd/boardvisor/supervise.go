package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/connector/local"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/config"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/spf13/cobra"
)

func newSupervise(g *globalFlags) *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "supervise --config FILE",
		Short: "run the supervisor daemon for the boards in FILE",
		Args:  cobra.NoArgs,
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
			boards, notes := supervisor.BoardsFromConfig(cfg)
			for _, n := range notes {
				logger.Warn(n)
			}
			var conn connector.SupervisorConnector = local.New()
			if cfg.Coordinator != nil {
				link, err := supervisor.OpenLink(cfg, version, logger)
				if err != nil {
					return err
				}
				defer link.Close()
				conn = link.Client
			} else {
				logger.Info("no coordinator configured: jobs come only from this process (embedded mode)")
			}
			labels := map[string]map[string]string{}
			for _, b := range boards {
				labels[b.Name] = b.Labels
			}
			var sup *supervisor.Supervisor
			svc := exporter.New(labels, enderFunc(func(ctx context.Context, board, job string) error {
				return sup.EndSession(ctx, board, job)
			}), nil)
			lis, err := net.Listen("tcp", cfg.Listen)
			if err != nil {
				return fmt.Errorf("client service: listen on %s: %w", cfg.Listen, err)
			}
			sup, err = supervisor.Start(supervisor.Options{Boards: boards, StateDir: cfg.StateDir, Conn: conn, Logger: logger, Exporter: svc})
			if err != nil {
				lis.Close()
				return err
			}
			g := supervisor.NewGRPCServer()
			svc.Register(g)
			go g.Serve(lis)
			defer g.Stop()
			logger.Info("client service listening", "address", lis.Addr().String())
			logger.Info("supervising", "boards", len(boards), "stateDir", cfg.StateDir, "config", path)
			err = sup.Run(ctx)
			logger.Info("stopped")
			return err
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "the supervisor's YAML config file (required)")
	return cmd
}

var errMissingConfig = usageErrorText("--config FILE is required")

type usageErrorText string

func (e usageErrorText) Error() string { return string(e) }

// enderFunc adapts a function to exporter.Ender.
type enderFunc func(ctx context.Context, board, job string) error

func (f enderFunc) EndSession(ctx context.Context, board, job string) error {
	return f(ctx, board, job)
}
