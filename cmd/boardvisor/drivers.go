package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
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

func (l *leaseEnv) add(cmd *cobra.Command) { l.addTo(cmd, cmd.Flags()) }

func (l *leaseEnv) addTo(cmd *cobra.Command, f *pflag.FlagSet) {
	addEnv(cmd, envExporter, envBoard, envLeaseToken, envBoardName)
	f.StringVar(&l.exporter, "exporter", "", "the board's supervisor, host:port (default $BOARDVISOR_EXPORTER)")
	f.StringVar(&l.board, "board", "", "the board (default $BOARDVISOR_BOARD, or $BOARD_NAME in a hook)")
	f.StringVar(&l.token, "token", "", "the lease token (default $BOARDVISOR_TOKEN)")
}

func (l *leaseEnv) dial() (jpb.ExporterServiceClient, func(), error) {
	l.exporter = first(l.exporter, os.Getenv(envExporter))
	l.board = first(l.board, os.Getenv(envBoard), os.Getenv(envBoardName))
	l.token = first(l.token, os.Getenv(envLeaseToken))
	if l.exporter == "" || l.board == "" || l.token == "" {
		return nil, nil, usageError{errors.New("no lease: run this inside `boardvisor shell`, after eval \"$(boardvisor lease create ... -o shell)\", or give --exporter, --board and --token")}
	}
	conn, err := grpc.NewClient(l.exporter, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, failf(exitUsage, "supervisor address %q: %s", l.exporter, lastPart(err.Error()))
	}
	return jpb.NewExporterServiceClient(conn), func() { conn.Close() }, nil
}

// peer describes the lease's supervisor, for error messages.
func (l *leaseEnv) peer() peer {
	return peer{role: "supervisor of board " + l.board, addr: l.exporter,
		hint: "is it running? (the lease's supervisor comes from boardvisor shell or lease create: $" + envExporter + ")"}
}

func (l *leaseEnv) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, l.board, "authorization", "Bearer "+l.token)
}

func newPower() *cobra.Command {
	var le leaseEnv
	cmd := &cobra.Command{
		Use:       "power on|off|cycle",
		Short:     "switch the leased board's power",
		Args:      exactArgs(1, "on, off or cycle", ""),
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
				return rpcError(le.peer(), "power "+args[0]+" of board "+le.board, err)
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
		Short: "the leased board's console: what it prints, and what you type goes to it (Ctrl+] leaves)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, closeConn, err := le.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			stream, err := c.StreamingDriverCall(le.ctx(ctx), &jpb.StreamingDriverCallRequest{Uuid: "console", Method: "stream"})
			if err != nil {
				return rpcError(le.peer(), "console of board "+le.board, err)
			}
			raw, restore := consoleTerminal(le.board)
			defer restore()
			go func() {
				escaped, err := consoleInput(os.Stdin, raw, func(text string) error {
					arg := structpb.NewStringValue(text)
					_, err := c.DriverCall(le.ctx(ctx), &jpb.DriverCallRequest{Uuid: "console", Method: "write", Args: []*structpb.Value{arg}})
					return err
				})
				if err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "\r\nboardvisor: console write: %s\r\n", status.Convert(err).Message())
				}
				if escaped || err != nil {
					stop() // the escape key leaves; the end of input does not
				}
			}()
			for {
				r, err := stream.Recv()
				if errors.Is(err, io.EOF) || ctx.Err() != nil {
					return nil
				}
				if err != nil {
					return rpcError(le.peer(), "console of board "+le.board, err)
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
