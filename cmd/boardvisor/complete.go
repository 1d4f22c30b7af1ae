package main

// Shell completion of what lives at the coordinator: board names, labels (as
// key=value selectors), lease IDs and supervisor IDs. Each asks the coordinator (bounded
// by a few seconds; nothing is completed when it cannot be reached).

import (
	"context"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
)

type completer func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective)

// askCoordinator runs fn against the coordinator for a completion.
func askCoordinator(cf *coordFlags, fn func(ctx context.Context, c pb.LeaseServiceClient) []string) []string {
	c, closeConn, err := cf.dial()
	if err != nil {
		return nil
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return fn(ctx, c)
}

func boardNames(cf *coordFlags) []string {
	return askCoordinator(cf, func(ctx context.Context, c pb.LeaseServiceClient) []string {
		r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{})
		if err != nil {
			return nil
		}
		var out []string
		for _, b := range r.GetBoards() {
			out = append(out, b.GetName()+"\t"+labelsCell(b.GetLabels()))
		}
		return out
	})
}

// completeBoards completes the --board flag of cmd with board names.
func completeBoards(cmd *cobra.Command, cf *coordFlags) {
	_ = cmd.RegisterFlagCompletionFunc("board", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return boardNames(cf), cobra.ShellCompDirectiveNoFileComp
	})
	completeSelector(cmd, cf)
}

// completeBoardArg completes a board name as the command's argument.
func completeBoardArg(cf *coordFlags, position int) completer {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) != position {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return boardNames(cf), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeSelector completes the -l flag with the labels boards have, as key=value,
// after any terms already typed (comma-separated).
func completeSelector(cmd *cobra.Command, cf *coordFlags) {
	if cmd.Flags().Lookup("selector") == nil {
		return
	}
	_ = cmd.RegisterFlagCompletionFunc("selector", func(_ *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		prefix := ""
		if i := strings.LastIndex(toComplete, ","); i >= 0 {
			prefix = toComplete[:i+1]
		}
		pairs := askCoordinator(cf, func(ctx context.Context, c pb.LeaseServiceClient) []string {
			r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{})
			if err != nil {
				return nil
			}
			seen := map[string]bool{}
			var out []string
			for _, b := range r.GetBoards() {
				for k, v := range b.GetLabels() {
					if kv := k + "=" + v; !seen[kv] {
						seen[kv] = true
						out = append(out, kv)
					}
				}
			}
			sort.Strings(out)
			return out
		})
		for i := range pairs {
			pairs[i] = prefix + pairs[i]
		}
		return pairs, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	})
}

// completeLeases completes a lease ID as the first argument.
func completeLeases(cf *coordFlags) completer {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) != 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return askCoordinator(cf, func(ctx context.Context, c pb.LeaseServiceClient) []string {
			r, err := c.ListLeases(ctx, &pb.ListLeasesRequest{})
			if err != nil {
				return nil
			}
			var out []string
			for _, l := range r.GetLeases() {
				desc := l.GetClientName() + " " + first(l.GetBoard(), "(queued)") + " " + enumName(l.GetPhase().String(), "LEASE_PHASE_")
				out = append(out, l.GetId()+"\t"+desc)
			}
			return out
		}), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeSupervisors completes a supervisor ID as the first argument.
func completeSupervisors(cf *coordFlags) completer {
	return func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) != 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return askCoordinator(cf, func(ctx context.Context, c pb.LeaseServiceClient) []string {
			r, err := c.ListSupervisors(ctx, &pb.ListSupervisorsRequest{})
			if err != nil {
				return nil
			}
			var out []string
			for _, s := range r.GetSupervisors() {
				out = append(out, s.GetId())
			}
			return out
		}), cobra.ShellCompDirectiveNoFileComp
	}
}

// signalContext is a context that Ctrl+C or SIGTERM ends.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
