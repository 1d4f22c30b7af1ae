package main

import (
	"bufio"
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
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

func newLogs() *cobra.Command {
	var stateDir, board, lease, after string
	var console, follow, showPos bool
	var le leaseEnv
	var cf coordFlags
	cmd := &cobra.Command{
		Use: "logs --lease ID [-f] [--console] [--after POS] | -f | --console --lease ID --state-dir DIR",
		Short: "a lease's log from the coordinator (phases, hook lines, errors; -f follows it; --console its console), " +
			"the log of the lease of `boardvisor shell` (-f), or a console recording on a lab host (--state-dir)",
		Long: `With --lease ID, the lease's log as the coordinator stored it: each phase change, hook line and
error, in order; -f follows it live until the lease ends. It needs only the coordinator's
address (--coordinator, BOARDVISOR_COORDINATOR) and your token (BOARDVISOR_USER_TOKEN); only
the lease's holder and admins may read it. --console prints the lease's console bytes
instead, raw. --show-position starts each line with its position: --after POS goes on
after that line, missing nothing and repeating nothing.

Without --lease, -f follows the log of the lease of the enclosing ` + "`boardvisor shell`" + ` from
its supervisor. With --state-dir DIR (on the lab host), --console --lease ID prints the
lease's console recording kept there.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case stateDir != "":
				if !console || lease == "" {
					return usageError{errors.New("--state-dir reads a console recording on the lab host: give --console and --lease ID too")}
				}
				return printRecording(stateDir, board, lease)
			case lease != "":
				if showPos && console {
					return usageError{errors.New("--show-position is for the log's lines, not for --console's raw bytes")}
				}
				return printLeaseLog(&cf, &pb.LeaseLogRequest{LeaseId: lease, After: after, Console: console, Follow: follow}, showPos)
			case follow:
				return followLog(le)
			}
			return usageError{errors.New("give --lease ID (the lease's log from the coordinator), -f (inside `boardvisor shell`), or --console --lease ID --state-dir DIR")}
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "follow the log until the lease ends")
	le.addTo(cmd, f)
	cf.addTo(cmd, f)
	f.BoolVar(&console, "console", false, "the lease's console bytes (raw) instead of its log")
	f.StringVar(&lease, "lease", "", "the lease ID")
	f.StringVar(&after, "after", "", "with --lease: go on after this position (from --show-position)")
	f.BoolVar(&showPos, "show-position", false, "with --lease: start each line with its position in the log")
	f.StringVar(&stateDir, "state-dir", "", "read the console recording in this supervisor state directory, on the lab host")
	f.StringVar(&board, "recorded-board", "", "with --state-dir: the board (default: look in every board's recordings)")
	return cmd
}

// printLeaseLog prints a lease's log from the coordinator: its lines, or with Console
// its raw console bytes. Ctrl+C stops following.
func printLeaseLog(cf *coordFlags, req *pb.LeaseLogRequest, showPos bool) error {
	leases, closeConn, err := cf.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	var end *pb.LeaseLogEnd
	err = client.FollowLog(ctx, leases, req, func(e *pb.LeaseLogEntry) error {
		if b, ok := e.GetBody().(*pb.LeaseLogEntry_End); ok {
			end = b.End
		}
		switch {
		case req.GetConsole():
			switch b := e.GetBody().(type) {
			case *pb.LeaseLogEntry_Console:
				if _, err := w.Write(b.Console); err != nil {
					return err
				}
			case *pb.LeaseLogEntry_ConsoleGap:
				if err := w.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "boardvisor: %d console bytes of lease %s were dropped here (the lab host's outbox was full)\n", b.ConsoleGap, req.GetLeaseId())
			}
		case showPos:
			fmt.Fprintf(w, "%s %s\n", first(e.GetPosition(), "-"), client.FormatLogEntry(e))
		default:
			fmt.Fprintln(w, client.FormatLogEntry(e))
		}
		if req.GetFollow() {
			return w.Flush() // live: each entry as it comes
		}
		return nil
	})
	if ferr := w.Flush(); err == nil {
		err = ferr
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	if err != nil {
		return err
	}
	if end == nil && !req.GetFollow() {
		fmt.Fprintf(os.Stderr, "boardvisor: lease %s has not ended: its log goes on (follow it with -f)\n", req.GetLeaseId())
	}
	return nil
}

// printRecording prints a lease's console recording from a supervisor's state directory.
func printRecording(stateDir, board, lease string) error {
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
		return fmt.Errorf("log: %s", status.Convert(err).Message())
	}
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("log: %s", status.Convert(err).Message())
		}
		if r.GetMissed() > 0 {
			fmt.Printf("(%d lines missed)\n", r.GetMissed())
		}
		src := strings.TrimPrefix(r.GetSource().String(), "LOG_SOURCE_")
		fmt.Printf("%s %-17s %-5s %s\n", time.Now().Format("15:04:05.000"), src, client.DisplaySeverity(r.GetSeverity()), client.Visible(r.GetMessage()))
	}
}
