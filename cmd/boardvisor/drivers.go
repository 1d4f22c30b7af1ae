package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/client"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// leaseEnv is the lease a driver command acts on, from the environment that
// `boardvisor shell` sets (or the flags), and how the lease's supervisor is reached
// over TLS (the CA file of the coordinator's commands; a hook's pin).
type leaseEnv struct {
	exporter, board, token string
	tls                    *tlsFlags
}

func (l *leaseEnv) add(cmd *cobra.Command) { l.addTo(cmd, cmd.Flags(), nil) }

// addTo adds the flags to f; t, if not nil, are TLS flags the command has already
// (logs: its coordinator's).
func (l *leaseEnv) addTo(cmd *cobra.Command, f *pflag.FlagSet, t *tlsFlags) {
	addEnv(cmd, envExporter, envBoard, envLeaseToken, envBoardName, envExporterPin)
	f.StringVar(&l.exporter, "exporter", "", "the board's supervisor, host:port or tls://host:port (default $BOARDVISOR_EXPORTER)")
	f.StringVar(&l.board, "board", "", "the board (default $BOARDVISOR_BOARD, or $BOARD_NAME in a hook)")
	f.StringVar(&l.token, "token", "", "the lease token (default $BOARDVISOR_TOKEN)")
	if t == nil {
		t = &tlsFlags{}
		t.addTo(cmd, f)
	}
	l.tls = t
}

func (l *leaseEnv) dial() (jpb.ExporterServiceClient, func(), error) {
	conn, closeConn, err := l.dialConn()
	if err != nil {
		return nil, nil, err
	}
	return jpb.NewExporterServiceClient(conn), closeConn, nil
}

// dialConn dials the lease's supervisor.
func (l *leaseEnv) dialConn() (*grpc.ClientConn, func(), error) {
	l.exporter = first(l.exporter, os.Getenv(envExporter))
	l.board = first(l.board, os.Getenv(envBoard), os.Getenv(envBoardName))
	l.token = first(l.token, os.Getenv(envLeaseToken))
	if l.exporter == "" || l.board == "" || l.token == "" {
		return nil, nil, usageError{errors.New("no lease: run this inside `boardvisor shell`, after eval \"$(boardvisor lease create ... -o shell)\", or give --exporter, --board and --token")}
	}
	if err := l.tls.resolve(); err != nil {
		return nil, nil, err
	}
	t := l.tls.client()
	// A hook trusts its own supervisor's certificate by its fingerprint, whatever the
	// address it dials.
	t.Pin = os.Getenv(envExporterPin)
	conn, err := client.DialExporter(l.exporter, t)
	if err != nil {
		return nil, nil, failf(exitUsage, "%s", oneLine(err.Error()))
	}
	return conn, func() { conn.Close() }, nil
}

// peer describes the lease's supervisor, for error messages.
func (l *leaseEnv) peer() peer {
	return peer{role: "supervisor of board " + l.board, addr: l.exporter, caFile: l.tls.caFile,
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

// newConsole is `boardvisor console`: the console's byte stream both ways, over one
// RouterService.Stream (upstream's serial "connect"), so that a key costs a DATA frame
// on a stream already open, and its echo comes back on the same one.
func newConsole() *cobra.Command {
	var le leaseEnv
	cmd := &cobra.Command{
		Use:   "console",
		Short: "the leased board's console: what it prints, and what you type goes to it (Ctrl+] leaves)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conn, closeConn, err := le.dialConn()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			md := metadata.AppendToOutgoingContext(le.ctx(ctx), exporter.MDStreamRequest, exporter.ConsoleStreamRequest(le.board))
			stream, err := jpb.NewRouterServiceClient(conn).Stream(md)
			if err == nil {
				// The supervisor sends the headers once the console is open: a refusal
				// (no lease, too many consoles) comes before the banner, not after it.
				var h metadata.MD
				if h, err = stream.Header(); err == nil && h == nil {
					_, err = stream.Recv() // ended without headers: the status says why
				}
			}
			if err != nil {
				return rpcError(le.peer(), "console of board "+le.board, err)
			}
			raw, restore := consoleTerminal(le.board)
			defer restore()
			return runConsole(ctx, stop, stream, os.Stdin, raw, os.Stdout, le.board, le.peer())
		},
	}
	le.add(cmd)
	return cmd
}

// consoleStream is what runConsole uses of the exporter's console stream
// (RouterService.Stream, opened with ctx).
type consoleStream interface {
	Send(*jpb.StreamRequest) error
	Recv() (*jpb.StreamResponse, error)
	CloseSend() error
}

// runConsole is `boardvisor console` once the board's console is open: what is typed on
// in goes to stream (consoleInput), and what the board prints comes out on out, until the
// lease ends, the escape key is typed or ctx ends (stop cancels ctx). Its error is the
// one sentence the user sees: a send that failed with anything but the stream's end
// (io.EOF, whose reason Recv gives) ends the console with that failure and its exit
// status, not with the 0 of someone who left.
func runConsole(ctx context.Context, stop func(), stream consoleStream, in io.Reader, raw bool, out io.Writer, board string, p peer) error {
	sendErr := make(chan error, 1) // what typing failed with, if it did
	go func() {
		escaped, err := consoleInput(in, raw, func(b []byte) error {
			return stream.Send(&jpb.StreamRequest{Payload: b, FrameType: jpb.FrameType_FRAME_TYPE_DATA})
		})
		if errors.Is(err, io.EOF) {
			return // the stream is over: Recv says why
		}
		if err != nil {
			sendErr <- err
		}
		if escaped || err != nil {
			stop() // the escape key leaves; the end of input does not
			return
		}
		// The end of input: the board is still shown (`boardvisor console < keys > file`).
		_ = stream.CloseSend()
	}()
	for {
		r, err := stream.Recv()
		if ctx.Err() != nil {
			select {
			case err := <-sendErr:
				return rpcError(p, "console of board "+board+": sending what was typed", err)
			default:
				return nil // left with the escape key, or interrupted
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return rpcError(p, "console of board "+board, err)
		}
		switch r.GetFrameType() {
		case jpb.FrameType_FRAME_TYPE_DATA:
			if _, err := out.Write(r.GetPayload()); err != nil {
				// Nothing the board prints is dropped without a word: a full disk
				// under `boardvisor console > file` ends the command, non-zero.
				return failf(exitFailed, "console of board %s: cannot write what the board prints to standard output (%s): free space or send it elsewhere, and run boardvisor console again",
					board, oneLine(err.Error()))
			}
		case jpb.FrameType_FRAME_TYPE_GOAWAY, jpb.FrameType_FRAME_TYPE_RST_STREAM:
			return nil // the lease ended
		}
	}
}
