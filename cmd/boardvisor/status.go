package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// enumName shortens a protobuf enum name: EXPORTER_STATUS_LEASE_READY -> LEASE_READY.
func enumName(s, prefix string) string { return strings.TrimPrefix(s, prefix) }

type boardRow struct {
	Name       string            `json:"name"`
	Supervisor string            `json:"supervisor"`
	Status     string            `json:"status"`
	Health     string            `json:"health"`
	Lease      string            `json:"lease,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
}

func newStatus() *cobra.Command {
	var cf coordFlags
	var selector, output string
	cmd := &cobra.Command{
		Use:   "status [-l SELECTOR] [-o table|json]",
		Short: "list boards with their status, health and current lease",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("unknown output %q (want table or json)", output)}
			}
			c, closeConn, err := cf.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{Selector: selector})
			if err != nil {
				return fmt.Errorf("list boards: %s", status.Convert(err).Message())
			}
			var rows []boardRow
			for _, b := range r.GetBoards() {
				rows = append(rows, boardRow{Name: b.GetName(), Supervisor: b.GetSupervisorId(),
					Status: enumName(b.GetStatus().String(), "EXPORTER_STATUS_"), Health: strings.ToLower(enumName(b.GetHealth().String(), "BOARD_HEALTH_")),
					Lease: b.GetCurrentLeaseId(), Labels: b.GetLabels()})
			}
			if output == "json" {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "BOARD\tSUPERVISOR\tSTATUS\tHEALTH\tLEASE")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Supervisor, r.Status, r.Health, r.Lease)
			}
			return w.Flush()
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "only boards matching this label selector")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func newLease() *cobra.Command {
	var cf coordFlags
	cmd := &cobra.Command{Use: "lease", Short: "create, list, show, extend and release leases (for scripts)"}
	var selector, board, clientName, image string
	var duration time.Duration
	create := &cobra.Command{
		Use:   "create (-l SELECTOR | --board NAME) [--image REGISTRY/REPO@sha256:...] [--duration D]",
		Short: "create a lease and print its ID and token (does not wait for the board)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (selector == "") == (board == "") {
				return usageError{fmt.Errorf("give exactly one of -l SELECTOR and --board NAME")}
			}
			img, err := imageSpec(image)
			if err != nil {
				return err
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.CreateLease(ctx, &pb.CreateLeaseRequest{Selector: selector, Board: board, Duration: durationpb.New(duration), ClientName: clientName, Image: img})
				if err != nil {
					return fmt.Errorf("create lease: %s", status.Convert(err).Message())
				}
				fmt.Printf("lease=%s\ntoken=%s\n", r.GetLease().GetId(), r.GetLease().GetToken())
				return nil
			})
		},
	}
	create.Flags().StringVarP(&selector, "selector", "l", "", "label selector")
	create.Flags().StringVar(&board, "board", "", "an exact board name")
	create.Flags().DurationVar(&duration, "duration", 30*time.Minute, "how long the lease may last")
	create.Flags().StringVar(&clientName, "client", userName(), "who the lease is for")
	create.Flags().StringVar(&image, "image", "", "boot this image on the board first: REGISTRY/REPOSITORY@sha256:... (or :TAG)")
	var all bool
	list := &cobra.Command{
		Use:   "list [--all]",
		Short: "list leases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListLeases(ctx, &pb.ListLeasesRequest{IncludeEnded: all})
				if err != nil {
					return fmt.Errorf("list leases: %s", status.Convert(err).Message())
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "LEASE\tBOARD\tCLIENT\tPHASE\tENDS")
				for _, l := range r.GetLeases() {
					ends := ""
					if l.GetEndsAt() != nil {
						ends = l.GetEndsAt().AsTime().Local().Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", l.GetId(), l.GetBoard(), l.GetClientName(), enumName(l.GetPhase().String(), "LEASE_PHASE_"), ends)
				}
				return w.Flush()
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "also list ended leases")
	var followRelease bool
	release := &cobra.Command{
		Use:   "release ID [--follow]",
		Short: "end a lease (its afterLease hook runs; --follow shows it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if followRelease {
				return releaseFollow(cf, args[0]) // leaseshow.go
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				if _, err := c.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: args[0], Reason: "released by " + userName()}); err != nil {
					return fmt.Errorf("release lease: %s", status.Convert(err).Message())
				}
				fmt.Printf("lease %s released\n", args[0])
				return nil
			})
		},
	}
	release.Flags().BoolVarP(&followRelease, "follow", "f", false, "show the afterLease hook until the lease has ended (Ctrl+C disconnects; the hook goes on)")
	var by time.Duration
	extend := &cobra.Command{
		Use:   "extend ID --by D",
		Short: "make a lease last longer",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ExtendLease(ctx, &pb.ExtendLeaseRequest{Id: args[0], By: durationpb.New(by)})
				if err != nil {
					return fmt.Errorf("extend lease: %s", status.Convert(err).Message())
				}
				fmt.Printf("lease %s now ends %s\n", args[0], r.GetLease().GetEndsAt().AsTime().Local().Format(time.DateTime))
				return nil
			})
		},
	}
	extend.Flags().DurationVar(&by, "by", 30*time.Minute, "how much longer")
	cf.addPersistent(cmd)
	cmd.AddCommand(create, list, release, extend, newLeaseShow(&cf))
	return cmd
}

func withLeases(cf coordFlags, fn func(ctx context.Context, c pb.LeaseServiceClient) error) error {
	c, closeConn, err := cf.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return fn(ctx, c)
}
