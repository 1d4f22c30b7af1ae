package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

// upstreamFlags are the supervisor's options for upstream Jumpstarter clients
// (docs/jumpstarter.md): one upstream-style endpoint per board, on a Unix socket (its
// file permissions authenticate) or a TCP address (the lease token authenticates, as
// upstream's passphrase), and how long failed statuses and ended leases stay visible.
type upstreamFlags struct {
	socketDir  string
	socketMode string
	listen     []string
	logGrace   time.Duration
	hold       time.Duration
}

func (f *upstreamFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.socketDir, "jumpstarter-socket-dir", "", "serve each board to upstream Jumpstarter clients on DIR/<board>.sock (whoever may open the socket acts for the board's lease)")
	fl.StringVar(&f.socketMode, "jumpstarter-socket-mode", "0600", "file mode of the per-board sockets (0660 lets the socket's group in)")
	fl.StringArrayVar(&f.listen, "jumpstarter-listen", nil, "serve BOARD to upstream Jumpstarter clients on HOST:PORT, authenticated by the lease token as upstream's passphrase (BOARD=HOST:PORT, repeatable)")
	fl.DurationVar(&f.logGrace, "log-grace", exporter.DefaultLogGrace, "how long an ended lease's log and status stay readable with its token (0: not at all)")
	fl.DurationVar(&f.hold, "failed-status-hold", exporter.DefaultFailedStatusHold, "how long a failed hook's status is shown at least")
}

// configure applies the durations to the client service.
func (f *upstreamFlags) configure(svc *exporter.Service) {
	if f == nil {
		return
	}
	svc.LogGrace = f.logGrace
	if f.logGrace == 0 {
		svc.LogGrace = -1
	}
	svc.FailedStatusHold = f.hold
}

// serve starts the per-board endpoints; stop stops them and removes the sockets.
func (f *upstreamFlags) serve(svc *exporter.Service, boards map[string]bool, logger hclog.Logger) (stop func(), err error) {
	var servers []*grpc.Server
	var sockets []string
	stop = func() {
		for _, g := range servers {
			g.Stop()
		}
		for _, s := range sockets {
			os.Remove(s)
		}
	}
	if f == nil {
		return stop, nil
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	start := func(board string, lis net.Listener, bySocket bool) {
		g := supervisor.NewGRPCServer(svc.EndpointOptions(board, bySocket)...)
		svc.Register(g)
		servers = append(servers, g)
		go g.Serve(lis)
	}
	if f.socketDir != "" {
		mode, err := strconv.ParseUint(f.socketMode, 8, 32)
		if err != nil || mode&^0o777 != 0 {
			return stop, fmt.Errorf("--jumpstarter-socket-mode %q: want an octal file mode such as 0600 or 0660", f.socketMode)
		}
		if err := os.MkdirAll(f.socketDir, 0o750); err != nil {
			return stop, fmt.Errorf("jumpstarter sockets: %w", err)
		}
		for board := range boards {
			path := filepath.Join(f.socketDir, board+".sock")
			// A socket left by an earlier run is replaced; anything else is not touched.
			if fi, err := os.Lstat(path); err == nil {
				if fi.Mode()&os.ModeSocket == 0 {
					return stop, fmt.Errorf("jumpstarter socket %s: a file that is not a socket is in the way", path)
				}
				os.Remove(path)
			}
			lis, err := net.Listen("unix", path)
			if err != nil {
				return stop, fmt.Errorf("jumpstarter socket for board %s: %w", board, err)
			}
			sockets = append(sockets, path)
			if err := os.Chmod(path, os.FileMode(mode)); err != nil {
				lis.Close()
				return stop, fmt.Errorf("jumpstarter socket for board %s: %w", board, err)
			}
			start(board, lis, true)
			logger.Info("serving upstream Jumpstarter clients", "board", board, "socket", path)
		}
	}
	for _, l := range f.listen {
		board, addr, ok := strings.Cut(l, "=")
		if !ok || !boards[board] {
			return stop, fmt.Errorf("--jumpstarter-listen %q: want BOARD=HOST:PORT with a configured board", l)
		}
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return stop, fmt.Errorf("jumpstarter endpoint for board %s: %w", board, err)
		}
		start(board, lis, false)
		logger.Info("serving upstream Jumpstarter clients", "board", board, "address", lis.Addr().String())
	}
	return stop, nil
}
