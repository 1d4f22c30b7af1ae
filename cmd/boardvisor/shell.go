package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"strings"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/client"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
)

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
		Long: `Lease a board, show its hooks as they run, and open a shell with the lease in its
environment (or run COMMAND): boardvisor power, console and logs -f act on the board.

While the lease waits for a board it belongs to this command: Ctrl+C (or the command
being killed, or its network gone for a few seconds) withdraws it from the queue, or
releases it if a board was assigned. Leaving the shell releases the lease; its
afterLease hook runs (Ctrl+C then leaves at once, the hook goes on).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (selector == "") == (board == "") {
				return usageError{errors.New("give exactly one of -l SELECTOR and --board NAME (boardvisor status lists the boards and their labels)")}
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
			// the afterLease hook it means "disconnect". Until the lease is READY, it (or
			// SIGTERM, or a hang-up) withdraws the lease.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			defer signal.Stop(sigs)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := &client.Client{Leases: leases, Out: os.Stdout}
			acquireCtx, stopAcquire := context.WithCancel(ctx)
			interrupted := make(chan os.Signal, 1)
			go func() {
				select {
				case sig := <-sigs:
					interrupted <- sig
					stopAcquire()
				case <-acquireCtx.Done():
				}
			}()
			// withdraw gives the lease up before READY and says what became of it.
			withdraw := func(lease *pb.Lease, why string, code int, err error) error {
				stopAcquire()
				msg := c.Withdraw(lease, why)
				if err != nil {
					return failf(code, "%s %s", strings.TrimSuffix(err.Error(), "."), msg)
				}
				fmt.Fprintln(os.Stderr, "boardvisor: "+msg)
				return exitError(code)
			}
			req := client.Request{Selector: selector, Board: board, Duration: duration, Client: first(clientName, userName()), Image: img}
			lease, err := c.Acquire(acquireCtx, req)
			if lease == nil {
				stopAcquire()
				return rpcError(cf.peer(), "create lease", err)
			}
			if err != nil {
				if acquireCtx.Err() != nil {
					return withdraw(lease, "interrupted while waiting ("+signalName(interrupted)+")", exitInterrupted, nil)
				}
				return withdraw(lease, "the client failed while waiting", exitCodeOf(rpcError(cf.peer(), "lease "+lease.GetId(), err)),
					rpcError(cf.peer(), "lease "+lease.GetId(), err))
			}
			// Upstream Jumpstarter's clients (j, its Python API, pexpect sessions) reach
			// the board through a socket (JUMPSTARTER_HOST); one asked for by path is
			// served from now on, so that a client polling it sees the hooks run.
			var up *client.UpstreamSocket
			if jsock != "" {
				if up, err = c.ServeUpstream(lease, jsock); err != nil {
					return withdraw(lease, "client could not serve its Jumpstarter socket", exitFailed, err)
				}
				defer up.Close()
			}
			s, err := c.Connect(acquireCtx, lease)
			if errors.Is(err, client.ErrHookFailed) {
				stopAcquire()
				c.Detach()
				if up != nil {
					// As upstream's exporter holds a failed status before it lets go, the
					// socket stays a moment, so that a client polling it sees why.
					lingerUpstream(sigs)
				}
				fmt.Fprintf(os.Stderr, "boardvisor: lease %s ended; board %s was not handed over.\n", lease.GetId(), lease.GetBoard())
				return exitError(exitFailed)
			}
			if err != nil {
				if acquireCtx.Err() != nil {
					return withdraw(lease, "interrupted while the board was prepared ("+signalName(interrupted)+")", exitInterrupted, nil)
				}
				ep := peer{role: "supervisor of board " + lease.GetBoard(), addr: lease.GetExporterEndpoint(),
					hint: "is the supervisor running, and reachable from here?"}
				werr := rpcError(ep, "connect to board "+lease.GetBoard(), err)
				return withdraw(lease, "client could not connect", exitCodeOf(werr), werr)
			}
			stopAcquire()
			// READY: from now on the lease is its session's.
			c.Detach()
			up, env := upstreamEnv(ctx, c, up, lease)
			if up != nil {
				defer up.Close()
			}
			code := runLeaseShell(lease, cf.addr, args, sigs, env...)
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
				return rpcError(peer{role: "supervisor of board " + lease.GetBoard(), addr: lease.GetExporterEndpoint(),
					hint: "the lease ends at its time anyway"}, "release lease "+lease.GetId(), err)
			}
			if code != 0 {
				return exitError(code)
			}
			return nil
		},
	}
	f := cmd.Flags()
	cf.add(cmd)
	addEnv(cmd, envShell)
	f.StringVarP(&selector, "selector", "l", "", "label selector, e.g. device=rpi4")
	f.StringVar(&board, "board", "", "an exact board name")
	f.DurationVar(&duration, "duration", 30*time.Minute, "how long the lease may last")
	f.StringVar(&clientName, "client", "", "who the lease is for (default: your user name; with user tokens the coordinator records the token's user)")
	f.StringVar(&jsock, "jumpstarter-socket", "", "serve upstream Jumpstarter clients at this Unix socket path from the moment the lease is granted (default: a private socket, from READY on, in the shell's JUMPSTARTER_HOST)")
	f.StringVar(&image, "image", "", "boot this image on the board first: REGISTRY/REPOSITORY@sha256:... (or :TAG, resolved to its digest)")
	completeBoards(cmd, &cf)
	return cmd
}

// signalName names the signal that interrupted, for the lease's release reason.
func signalName(ch <-chan os.Signal) string {
	select {
	case sig := <-ch:
		if sig == os.Interrupt {
			return "Ctrl+C"
		}
		return sig.String()
	default:
		return "cancelled"
	}
}

// exitCodeOf is the exit status an error stands for.
func exitCodeOf(err error) int {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code
	}
	return exitFailed
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
func runLeaseShell(lease *pb.Lease, coordinator string, args []string, sigs <-chan os.Signal, env ...string) int {
	interactive := len(args) == 0
	if interactive {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/sh"
		}
		args = []string{sh}
	}
	var prompt []string
	if interactive {
		var cleanup func()
		args, prompt, cleanup = markPrompt(args, lease.GetBoard())
		defer cleanup()
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
	cmd.Env = append(cmd.Env, prompt...)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "boardvisor: run %s: %v\n", args[0], err)
		return 127
	}
	// SIGTERM or a hang-up of boardvisor ends the shell, and so the lease (Ctrl+C is
	// the shell's own: the terminal sends it there too).
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case sig := <-sigs:
				if sig != os.Interrupt {
					cmd.Process.Signal(syscall.SIGHUP)
				}
			case <-stop:
				return
			}
		}
	}()
	if err := cmd.Wait(); err != nil {
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
