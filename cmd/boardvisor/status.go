package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/boardvisor/boardvisor/client"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
)

func newStatus() *cobra.Command {
	var cf coordFlags
	var selector string
	var out *outputFlag
	cmd := &cobra.Command{
		Use:   "status [-l SELECTOR] [-o table|wide|json|yaml]",
		Short: "list boards with their status, health and current lease (wide: labels too)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			return withLeases(&cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{Selector: selector})
				if err != nil {
					return rpcError(cf.peer(), "list boards", err)
				}
				rows := []boardRow{}
				for _, b := range r.GetBoards() {
					rows = append(rows, boardRowOf(b))
				}
				return printList(os.Stdout, out.format, rows, boardColumns)
			})
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "only boards matching this label selector")
	out = addOutput(cmd)
	completeSelector(cmd, &cf)
	return cmd
}

func newLease() *cobra.Command {
	var cf coordFlags
	cmd := &cobra.Command{Use: "lease", Short: "create, list, show, extend and release leases (for scripts)", Args: noArgs}
	cf.addPersistent(cmd)
	cmd.AddCommand(newLeaseCreate(&cf), newLeaseList(&cf), newLeaseShow(&cf), newLeaseRelease(&cf), newLeaseExtend(&cf))
	return cmd
}

func newLeaseCreate(cf *coordFlags) *cobra.Command {
	var selector, board, clientName, format, image string
	var duration, maxWait time.Duration
	var detach bool
	cmd := &cobra.Command{
		Use:   "create (-l SELECTOR | --board NAME) [--image REGISTRY/REPO@sha256:...] [--duration D] [--detach [--max-wait D]] [-o text|shell|json|yaml]",
		Short: "lease a board for later use: wait until it is ready (hooks on stderr), print what the other commands need",
		Long: `Lease a board for later use. Without --detach the command waits until the lease
is READY (the beforeLease hook's lines go to stderr); until then the lease is this
command's: Ctrl+C withdraws it. Once READY it lasts its --duration, whoever holds it.
With --detach the lease is created and the command returns at once: the lease waits in
the queue without anyone, for --max-wait at most, then lasts its --duration.

It prints the lease's ID, token, board and supervisor: -o shell prints them as export
lines for eval "$(boardvisor lease create ... -o shell)", after which boardvisor power,
console and logs -f act on the board.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (selector == "") == (board == "") {
				return usageError{errors.New("give exactly one of -l SELECTOR and --board NAME (boardvisor status lists the boards and their labels)")}
			}
			switch format {
			case "text", "shell", outJSON, outYAML:
			default:
				return usageError{fmt.Errorf("unknown output format %q (want text, shell, json or yaml)", format)}
			}
			if maxWait != 0 && !detach {
				return usageError{errors.New("--max-wait bounds a detached lease's wait: give --detach too (without it the lease waits for as long as this command does)")}
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
			if detach {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				req := &pb.CreateLeaseRequest{Selector: selector, Board: board, Duration: durationpb.New(duration), ClientName: first(clientName, userName()), Image: img}
				if maxWait > 0 {
					req.MaxWait = durationpb.New(maxWait)
				}
				r, err := leases.CreateLease(ctx, req)
				if err != nil {
					return rpcError(cf.peer(), "create lease", err)
				}
				if r.GetLease().GetQueued() {
					fmt.Fprintf(os.Stderr, "boardvisor: lease %s is queued (detached): it waits without you, at most %s, then lasts %s.\n",
						r.GetLease().GetId(), first(maxWait.String(), "the coordinator's bound"), duration)
				}
				return printCreated(format, r.GetLease())
			}
			return createAttached(leases, cf, client.Request{Selector: selector, Board: board, Duration: duration, Client: first(clientName, userName()), Image: img}, format)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&selector, "selector", "l", "", "label selector")
	f.StringVar(&board, "board", "", "an exact board name")
	f.DurationVar(&duration, "duration", 30*time.Minute, "how long the lease may last once ready")
	f.StringVar(&clientName, "client", "", "who the lease is for (default: your user name; with user tokens the coordinator records the token's user)")
	f.StringVar(&image, "image", "", "boot this image on the board first: REGISTRY/REPOSITORY@sha256:... (or :TAG, resolved to its digest)")
	f.BoolVar(&detach, "detach", false, "return at once: the lease waits in the queue without this command, bounded by --max-wait")
	f.DurationVar(&maxWait, "max-wait", 0, "with --detach: withdraw the lease if it is still queued after this long (default: the coordinator's bound, 1h)")
	f.StringVarP(&format, "output", "o", "text", "text (key=value lines), shell (export lines for eval), json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "shell", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	completeBoards(cmd, cf)
	return cmd
}

// createAttached creates an attached lease and waits, showing the hooks on stderr,
// until it is READY; Ctrl+C withdraws it.
func createAttached(leases pb.LeaseServiceClient, cf *coordFlags, req client.Request, format string) error {
	ctx, stop := signalContext()
	defer stop()
	c := &client.Client{Leases: leases, Out: os.Stderr}
	lease, err := c.Acquire(ctx, req)
	if lease == nil {
		return rpcError(cf.peer(), "create lease", err)
	}
	if err == nil {
		var s *client.Session
		s, err = c.Connect(ctx, lease)
		if err == nil {
			c.Detach()
			s.Close()
			return printCreated(format, lease)
		}
	}
	c.Detach()
	if errors.Is(err, client.ErrHookFailed) {
		return failf(exitFailed, "lease %s ended: its beforeLease hook failed", lease.GetId())
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "boardvisor: "+c.Withdraw(lease, "interrupted while waiting"))
		return exitError(exitInterrupted)
	}
	werr := rpcError(cf.peer(), "lease "+lease.GetId(), err)
	return failf(exitCodeOf(werr), "%s %s", werr.Error(), c.Withdraw(lease, "the client failed while waiting"))
}

// createdLease is what `lease create` prints: the lease and what reaches its board.
type createdLease struct {
	leaseRow
	Token string `json:"token"`
}

func printCreated(format string, l *pb.Lease) error {
	switch format {
	case outJSON, outYAML:
		return printData(os.Stdout, format, createdLease{leaseRowOf(l), l.GetToken()})
	case "shell":
		for _, kv := range [][2]string{{envLease, l.GetId()}, {envLeaseToken, l.GetToken()}, {envBoard, l.GetBoard()}, {envExporter, l.GetExporterEndpoint()}} {
			fmt.Printf("export %s=%s\n", kv[0], shellQuote(kv[1]))
		}
		return nil
	}
	fmt.Printf("lease=%s\ntoken=%s\nboard=%s\nexporter=%s\n", l.GetId(), l.GetToken(), l.GetBoard(), l.GetExporterEndpoint())
	return nil
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	out := "'"
	for _, r := range s {
		if r == '\'' {
			out += `'\''`
		} else {
			out += string(r)
		}
	}
	return out + "'"
}

func newLeaseList(cf *coordFlags) *cobra.Command {
	var all bool
	var board, who string
	var out *outputFlag
	cmd := &cobra.Command{
		Use:   "list [--all] [--board NAME] [--client NAME] [-o table|wide|json|yaml]",
		Short: "list leases (ended ones with --all)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListLeases(ctx, &pb.ListLeasesRequest{IncludeEnded: all, Board: board, ClientName: who})
				if err != nil {
					return rpcError(cf.peer(), "list leases", err)
				}
				rows := []leaseRow{}
				for _, l := range r.GetLeases() {
					rows = append(rows, leaseRowOf(l))
				}
				return printList(os.Stdout, out.format, rows, leaseColumns)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "also list ended leases")
	cmd.Flags().StringVar(&board, "board", "", "only the leases of this board")
	cmd.Flags().StringVar(&who, "client", "", "only the leases of this client")
	out = addOutput(cmd)
	completeBoards(cmd, cf)
	return cmd
}

func newLeaseRelease(cf *coordFlags) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "release ID [--follow]",
		Short: "end a lease (its afterLease hook runs; --follow shows it); a queued one is withdrawn",
		Args:  exactArgs(1, "a lease ID", "boardvisor lease list shows them"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if follow {
				return releaseFollow(cf, args[0]) // leaseshow.go
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: args[0], Reason: "released by " + userName()})
				if err != nil {
					return rpcError(cf.peer(), "release lease "+args[0], err)
				}
				l := r.GetLease()
				switch {
				case l.GetBoard() == "":
					fmt.Printf("lease %s withdrawn from the queue\n", args[0])
				case l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE || l.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED:
					fmt.Printf("lease %s had ended already: %s\n", args[0], l.GetStatusMessage())
				default:
					fmt.Printf("lease %s released; the afterLease hook runs on board %s\n", args[0], l.GetBoard())
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "show the afterLease hook until the lease has ended (Ctrl+C disconnects; the hook goes on)")
	cmd.ValidArgsFunction = completeLeases(cf)
	return cmd
}

func newLeaseExtend(cf *coordFlags) *cobra.Command {
	var by time.Duration
	cmd := &cobra.Command{
		Use:   "extend ID --by D",
		Short: "make a lease last longer",
		Args:  exactArgs(1, "a lease ID", "boardvisor lease list shows them"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ExtendLease(ctx, &pb.ExtendLeaseRequest{Id: args[0], By: durationpb.New(by)})
				if err != nil {
					return rpcError(cf.peer(), "extend lease "+args[0], err)
				}
				if r.GetLease().GetEndsAt() == nil {
					fmt.Printf("lease %s now lasts %s longer once ready\n", args[0], by)
					return nil
				}
				fmt.Printf("lease %s now ends %s\n", args[0], r.GetLease().GetEndsAt().AsTime().Local().Format(time.DateTime))
				return nil
			})
		},
	}
	cmd.Flags().DurationVar(&by, "by", 30*time.Minute, "how much longer")
	cmd.ValidArgsFunction = completeLeases(cf)
	return cmd
}

// withLeases dials the coordinator and runs fn with a bounded context (Ctrl+C ends it).
func withLeases(cf *coordFlags, fn func(ctx context.Context, c pb.LeaseServiceClient) error) error {
	c, closeConn, err := cf.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	sctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithTimeout(sctx, 30*time.Second)
	defer cancel()
	return fn(ctx, c)
}
