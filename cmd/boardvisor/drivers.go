package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// leaseEnv is the lease a driver command acts on, from the environment that
// `boardvisor shell` sets (or the flags).
type leaseEnv struct{ exporter, board, token string }

func (l *leaseEnv) add(cmd *cobra.Command) { l.addTo(cmd.Flags()) }

func (l *leaseEnv) addTo(f *pflag.FlagSet) {
	f.StringVar(&l.exporter, "exporter", os.Getenv("BOARDVISOR_EXPORTER"), "the board's supervisor (env BOARDVISOR_EXPORTER)")
	board := os.Getenv("BOARDVISOR_BOARD")
	if board == "" {
		board = os.Getenv("BOARD_NAME") // in a hook
	}
	f.StringVar(&l.board, "board", board, "the board (env BOARDVISOR_BOARD, or BOARD_NAME in a hook)")
	f.StringVar(&l.token, "token", os.Getenv("BOARDVISOR_TOKEN"), "the lease token (env BOARDVISOR_TOKEN)")
}

func (l *leaseEnv) dial() (jpb.ExporterServiceClient, func(), error) {
	if l.exporter == "" || l.board == "" || l.token == "" {
		return nil, nil, usageError{errors.New("no lease: run this inside `boardvisor shell`, or give --exporter, --board and --token")}
	}
	conn, err := grpc.NewClient(l.exporter, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return jpb.NewExporterServiceClient(conn), func() { conn.Close() }, nil
}

func (l *leaseEnv) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, l.board, "authorization", "Bearer "+l.token)
}

func newPower() *cobra.Command {
	var le leaseEnv
	cmd := &cobra.Command{
		Use:       "power on|off|cycle",
		Short:     "switch the leased board's power",
		Args:      cobra.ExactArgs(1),
		ValidArgs: []string{"on", "off", "cycle"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "on", "off", "cycle":
			default:
				return usageError{fmt.Errorf("unknown power action %q (want on, off or cycle)", args[0])}
			}
			c, closeConn, err := le.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if _, err := c.DriverCall(le.ctx(ctx), &jpb.DriverCallRequest{Uuid: "power", Method: args[0]}); err != nil {
				return fmt.Errorf("power %s: %s", args[0], status.Convert(err).Message())
			}
			fmt.Printf("board %s: power %s\n", le.board, args[0])
			return nil
		},
	}
	le.add(cmd)
	return cmd
}

func newConsole() *cobra.Command {
	var le leaseEnv
	cmd := &cobra.Command{
		Use:   "console",
		Short: "follow the leased board's console; lines typed are sent to it (Ctrl+C leaves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, closeConn, err := le.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			stream, err := c.StreamingDriverCall(le.ctx(ctx), &jpb.StreamingDriverCallRequest{Uuid: "console", Method: "stream"})
			if err != nil {
				return fmt.Errorf("console: %s", status.Convert(err).Message())
			}
			go func() {
				sc := bufio.NewScanner(os.Stdin)
				for sc.Scan() {
					arg := structpb.NewStringValue(sc.Text() + "\r")
					if _, err := c.DriverCall(le.ctx(ctx), &jpb.DriverCallRequest{Uuid: "console", Method: "write", Args: []*structpb.Value{arg}}); err != nil {
						fmt.Fprintf(os.Stderr, "boardvisor: console write: %s\n", status.Convert(err).Message())
						return
					}
				}
			}()
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) || ctx.Err() != nil {
					return nil
				}
				if err != nil {
					return fmt.Errorf("console: %s", status.Convert(err).Message())
				}
				data, err := base64.StdEncoding.DecodeString(r.GetResult().GetStringValue())
				if err != nil {
					return fmt.Errorf("console: bad chunk from the supervisor: %w", err)
				}
				os.Stdout.Write(data)
			}
		},
	}
	le.add(cmd)
	return cmd
}
