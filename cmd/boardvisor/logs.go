package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/client"
	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/emptypb"
)

func newLogs() *cobra.Command {
	var stateDir, board, lease string
	var console, follow bool
	var le leaseEnv
	cmd := &cobra.Command{
		Use:   "logs (-f | --console --lease ID --state-dir DIR [--board NAME])",
		Short: "follow the lease's hook and phase log (-f), or print a lease's recorded console",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if follow {
				return followLog(le)
			}
			if !console || lease == "" || stateDir == "" {
				return usageError{errors.New("give -f (inside `boardvisor shell`), or --console, --lease ID and --state-dir DIR")}
			}
			boards := []string{board}
			if board == "" {
				dirs, err := os.ReadDir(filepath.Join(stateDir, "console"))
				if err != nil {
					return fmt.Errorf("no console recordings in %s: %w", stateDir, err)
				}
				boards = boards[:0]
				for _, d := range dirs {
					boards = append(boards, d.Name())
				}
			}
			for _, b := range boards {
				r, err := recording.ReadLease(stateDir, b, lease)
				if err != nil {
					continue
				}
				_, err = io.Copy(os.Stdout, r)
				r.Close()
				return err
			}
			return fmt.Errorf("no console recording of lease %s in %s", lease, stateDir)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "follow the lease's log (hook lines and phases) until it ends")
	le.addTo(cmd, f)
	f.BoolVar(&console, "console", false, "the lease's console")
	f.StringVar(&lease, "lease", "", "the lease ID")
	f.StringVar(&stateDir, "state-dir", "", "the supervisor's state directory")
	f.StringVar(&board, "recorded-board", "", "with --console: the board (default: look in every board's recordings)")
	return cmd
}

// followLog prints the lease's log as it comes: hook lines and phase changes.
func followLog(le leaseEnv) error {
	c, closeConn, err := le.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	stream, err := c.LogStream(le.ctx(ctx), &emptypb.Empty{})
	if err != nil {
		return rpcError(le.peer(), "log of board "+le.board, err)
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return rpcError(le.peer(), "log of board "+le.board, err)
		}
		if r.GetMissed() > 0 {
			fmt.Printf("(%d lines missed)\n", r.GetMissed())
		}
		src := strings.TrimPrefix(r.GetSource().String(), "LOG_SOURCE_")
		fmt.Printf("%s %-17s %-5s %s\n", time.Now().Format("15:04:05.000"), src, client.DisplaySeverity(r.GetSeverity()), r.GetMessage())
	}
}
