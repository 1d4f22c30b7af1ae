package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// escapeKey leaves `boardvisor console` on a terminal (Ctrl-], as in telnet): in raw mode
// Ctrl-C is the board's (it stops U-Boot's autoboot, a running command).
const escapeKey = 0x1d

func newConsole() *cobra.Command {
	var le leaseEnv
	cmd := &cobra.Command{
		Use:   "console",
		Short: "follow the leased board's console and type into it (on a terminal each key is sent as typed, Ctrl-] leaves; else input is sent as it comes, a newline as Enter; Ctrl+C leaves)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, closeConn, err := le.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			// Following the console first makes it attended: the supervisor reads it
			// at once from then on, so the echo of the first key is not held back.
			stream, err := c.StreamingDriverCall(le.ctx(ctx), &jpb.StreamingDriverCallRequest{Uuid: "console", Method: "stream"})
			if err != nil {
				return fmt.Errorf("console: %s", status.Convert(err).Message())
			}
			raw := false
			if restore, err := makeRaw(os.Stdin); err == nil {
				raw = true
				defer restore()
				fmt.Fprintf(os.Stderr, "Connected to the console of %s; Ctrl-] leaves.\r\n", le.board)
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() {
				if err := typeInto(ctx, os.Stdin, raw, func(p []byte) error {
					_, err := c.DriverCall(le.ctx(ctx), &jpb.DriverCallRequest{Uuid: "console", Method: "write",
						Args: []*structpb.Value{structpb.NewStringValue(string(p))}})
					return err
				}); err != nil && ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "boardvisor: console write: %s\r\n", status.Convert(err).Message())
				}
				if raw {
					cancel() // Ctrl-] (or the end of the terminal's input): leave
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
				if _, err := os.Stdout.Write(data); err != nil {
					return nil // whoever read our output is gone
				}
			}
		},
	}
	le.add(cmd)
	return cmd
}

// typeInto sends what is read from in to the console, each read as soon as it is read
// (a keystroke on a raw terminal, whatever a pipe holds), in order. Off a terminal a
// newline is sent as a carriage return, the Enter key of a serial console; on one the
// escape key ends it. It returns at the end of in (nil) or when a write fails.
func typeInto(ctx context.Context, in io.Reader, raw bool, write func([]byte) error) error {
	buf := make([]byte, 4096)
	for ctx.Err() == nil {
		n, err := in.Read(buf)
		p := buf[:n]
		leave := false
		if raw {
			if i := bytes.IndexByte(p, escapeKey); i >= 0 {
				p, leave = p[:i], true
			}
		} else {
			p = bytes.ReplaceAll(p, []byte("\n"), []byte("\r"))
		}
		if len(p) > 0 {
			if werr := write(p); werr != nil {
				return werr
			}
		}
		if leave || err != nil {
			return nil
		}
	}
	return nil
}

// makeRaw puts the terminal f in raw mode (each key read as typed, not echoed, no
// signals from Ctrl-C) and returns how to restore it; it fails if f is not a terminal.
func makeRaw(f *os.File) (restore func(), err error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		return nil, err
	}
	return func() { _ = unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
