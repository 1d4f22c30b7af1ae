package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/client"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type coordFlags struct{ addr string }

func (c *coordFlags) add(cmd *cobra.Command) { c.addTo(cmd.Flags()) }

func (c *coordFlags) addPersistent(cmd *cobra.Command) { c.addTo(cmd.PersistentFlags()) }

func (c *coordFlags) addTo(f *pflag.FlagSet) {
	def := os.Getenv("BOARDVISOR_COORDINATOR")
	if def == "" {
		def = "127.0.0.1:7400"
	}
	f.StringVar(&c.addr, "coordinator", def, "coordinator address (env BOARDVISOR_COORDINATOR)")
}

// userToken sends the user's coordinator token (BOARDVISOR_USER_TOKEN) with every call.
type userToken string

func (t userToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (userToken) RequireTransportSecurity() bool { return false }

func (c *coordFlags) dial() (pb.LeaseServiceClient, func(), error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if t := os.Getenv("BOARDVISOR_USER_TOKEN"); t != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(userToken(t)))
	}
	conn, err := grpc.NewClient(c.addr, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("coordinator %s: %w", c.addr, err)
	}
	return pb.NewLeaseServiceClient(conn), func() { conn.Close() }, nil
}

func userName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "unknown"
}

func newShell() *cobra.Command {
	var cf coordFlags
	var selector, board, clientName, jsock, image string
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "shell (-l SELECTOR | --board NAME) [--image REGISTRY/REPO@sha256:...] [--duration D] [-- COMMAND...]",
		Short: "lease a board, show its hooks, and open a shell with the lease (or run COMMAND)",
		RunE: func(cmd *cobra.Command, args []string) error {
			if (selector == "") == (board == "") {
				return usageError{errors.New("give exactly one of -l SELECTOR and --board NAME")}
			}
			img, err := imageSpec(image)
			if err != nil {
				return err
			}
			leases, closeConn, err := cf.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			// Ctrl+C must not kill us while the shell runs (it is the shell's), and during
			// the afterLease hook it means "disconnect".
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, os.Interrupt)
			defer signal.Stop(sigs)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := &client.Client{Leases: leases, Out: os.Stdout}
			acquireCtx, stopAcquire := context.WithCancel(ctx)
			go func() {
				select {
				case <-sigs:
					stopAcquire()
				case <-acquireCtx.Done():
				}
			}()
			lease, err := c.Acquire(acquireCtx, client.Request{Selector: selector, Board: board, Duration: duration, Client: clientName, Image: img})
			if err != nil {
				stopAcquire()
				return err
			}
			// Upstream Jumpstarter's clients (j, its Python API, pexpect sessions) reach
			// the board through a socket (JUMPSTARTER_HOST); one asked for by path is
			// served from now on, so that a client polling it sees the hooks run.
			var up *client.UpstreamSocket
			if jsock != "" {
				if up, err = c.ServeUpstream(lease, jsock); err != nil {
					stopAcquire()
					leases.ReleaseLease(context.Background(), &pb.ReleaseLeaseRequest{Id: lease.GetId(), Reason: "client could not serve its Jumpstarter socket"})
					return err
				}
				defer up.Close()
			}
			s, err := c.Connect(acquireCtx, lease)
			stopAcquire()
			if errors.Is(err, client.ErrHookFailed) {
				if up != nil {
					// As upstream's exporter holds a failed status before it lets go, the
					// socket stays a moment, so that a client polling it sees why.
					lingerUpstream(sigs)
				}
				return exitError(1)
			}
			if err != nil {
				leases.ReleaseLease(context.Background(), &pb.ReleaseLeaseRequest{Id: lease.GetId(), Reason: "client could not connect"})
				return err
			}
			up, env := upstreamEnv(ctx, c, up, lease)
			if up != nil {
				defer up.Close()
			}
			code := runLeaseShell(lease, cf.addr, args, env...)
			relCtx, relCancel := context.WithCancel(ctx)
			go func() {
				select {
				case <-sigs:
					relCancel()
				case <-relCtx.Done():
				}
			}()
			err = s.Release(relCtx)
			relCancel()
			if err != nil {
				return err
			}
			if code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
	f := cmd.Flags()
	cf.add(cmd)
	f.StringVarP(&selector, "selector", "l", "", "label selector, e.g. device=rpi4")
	f.StringVar(&board, "board", "", "an exact board name")
	f.DurationVar(&duration, "duration", 30*time.Minute, "how long the lease may last")
	f.StringVar(&clientName, "client", userName(), "who the lease is for")
	f.StringVar(&jsock, "jumpstarter-socket", "", "serve upstream Jumpstarter clients at this Unix socket path from the moment the lease is granted (default: a private socket, from READY on, in the shell's JUMPSTARTER_HOST)")
	f.StringVar(&image, "image", "", "boot this image on the board first: REGISTRY/REPOSITORY@sha256:... (or :TAG, resolved to its digest)")
	return cmd
}

// upstreamLinger is how long the shell's Jumpstarter socket stays after a beforeLease
// hook failed the lease: longer than the supervisor holds the failed status.
const upstreamLinger = 3 * time.Second

func lingerUpstream(sigs <-chan os.Signal) {
	t := time.NewTimer(upstreamLinger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-sigs:
	}
}

// upstreamEnv serves the lease's Jumpstarter socket (if it is not served yet), prints
// the lease's message of the day, and returns what upstream's `jmp shell` puts in a
// shell's environment for it. Without a socket the shell runs on without them.
func upstreamEnv(ctx context.Context, c *client.Client, up *client.UpstreamSocket, lease *pb.Lease) (*client.UpstreamSocket, []string) {
	if up == nil {
		var err error
		if up, err = c.ServeUpstream(lease, ""); err != nil {
			fmt.Fprintf(os.Stderr, "boardvisor: upstream Jumpstarter clients are not served in this shell: %v\n", err)
			return nil, nil
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := up.Describe(dctx); err != nil {
		fmt.Fprintf(os.Stderr, "boardvisor: %v\n", err)
	}
	if up.Motd != "" {
		fmt.Println(up.Motd)
	}
	return up, up.Env(lease.GetBoard(), lease.GetId())
}

// runLeaseShell runs the user's shell (or args) with the lease in its environment, so
// boardvisor subcommands inside it reach the board. It returns the exit status.
func runLeaseShell(lease *pb.Lease, coordinator string, args []string, env ...string) int {
	if len(args) == 0 {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		args = []string{sh}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(),
		"BOARDVISOR_LEASE="+lease.GetId(),
		"BOARDVISOR_BOARD="+lease.GetBoard(),
		"BOARDVISOR_TOKEN="+lease.GetToken(),
		"BOARDVISOR_EXPORTER="+lease.GetExporterEndpoint(),
		"BOARDVISOR_COORDINATOR="+coordinator,
	)
	cmd.Env = append(cmd.Env, env...)
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				return 128 + int(ws.Signal())
			}
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "boardvisor: run %s: %v\n", args[0], err)
		return 127
	}
	return 0
}
