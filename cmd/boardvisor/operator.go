package main

// Operators' commands: boards in and out of maintenance, a quarantine cleared,
// supervisors drained, user tokens added, listed and revoked. With client tokens on,
// the coordinator takes them from admins only, and audits each.

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/coordinator"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
)

func newBoard() *cobra.Command {
	var cf coordFlags
	cmd := &cobra.Command{Use: "board", Short: "operators: boards in and out of maintenance, quarantines cleared", Args: noArgs}
	cf.addPersistent(cmd)
	cmd.AddCommand(newBoardShow(&cf), newBoardMaintenance(&cf), newBoardClear(&cf))
	return cmd
}

func newBoardShow(cf *coordFlags) *cobra.Command {
	var out *outputFlag
	cmd := &cobra.Command{
		Use:               "show BOARD [-o table|wide|json|yaml]",
		Short:             "show one board: status, health, lease, labels",
		Args:              exactArgs(1, "a board name", "boardvisor status lists the boards"),
		ValidArgsFunction: completeBoardArg(cf, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.check(); err != nil {
				return err
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{})
				if err != nil {
					return rpcError(cf.peer(), "board "+args[0], err)
				}
				for _, b := range r.GetBoards() {
					if b.GetName() == args[0] {
						return printOne(os.Stdout, out.format, boardRowOf(b), boardColumns)
					}
				}
				return failf(exitNotFound, "no board named %s (boardvisor status lists the boards)", args[0])
			})
		},
	}
	out = addOutput(cmd)
	return cmd
}

func newBoardMaintenance(cf *coordFlags) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "maintenance on|off BOARD [--reason TEXT]",
		Short: "put a board into maintenance (no new lease; a live one goes on) or take it out",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := exactArgs(2, "on or off and a board name", "boardvisor status lists the boards")(cmd, args); err != nil {
				return err
			}
			if args[0] != "on" && args[0] != "off" {
				return usageError{fmt.Errorf("%s: want on or off, not %q", cmd.CommandPath(), args[0])}
			}
			return nil
		},
		ValidArgsFunction: func(cmd *cobra.Command, args []string, s string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{"on", "off"}, cobra.ShellCompDirectiveNoFileComp
			}
			return completeBoardArg(cf, 1)(cmd, args, s)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			on, board := args[0] == "on", args[1]
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.SetBoardMaintenance(ctx, &pb.SetBoardMaintenanceRequest{Board: board, On: on, Reason: first(reason, "by "+userName())})
				if err != nil {
					return rpcError(cf.peer(), "maintenance "+args[0]+" for board "+board, err)
				}
				b := r.GetBoard()
				if on {
					msg := fmt.Sprintf("board %s is in maintenance: it takes no new lease", board)
					if b.GetCurrentLeaseId() != "" {
						msg += fmt.Sprintf("; lease %s goes on until it ends", b.GetCurrentLeaseId())
					}
					fmt.Println(msg)
					return nil
				}
				fmt.Printf("board %s is out of maintenance (status %s, health %s)\n", board, enumName(b.GetStatus().String(), "EXPORTER_STATUS_"),
					strings.ToLower(enumName(b.GetHealth().String(), "BOARD_HEALTH_")))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, shown to users waiting for the board")
	return cmd
}

func newBoardClear(cf *coordFlags) *cobra.Command {
	var reason string
	var noWait bool
	cmd := &cobra.Command{
		Use:   "clear BOARD [--reason TEXT]",
		Short: "clear the quarantine of a board whose hook failed with onFailure: exit",
		Long: `Clear the quarantine of a board: a hook that failed with onFailure: exit took it
offline (health bad), and it takes no lease until an operator looked at it and clears
it here. The request goes to the board's supervisor, which must be connected; the
command waits until the coordinator shows the board healthy again.`,
		Args:              exactArgs(1, "a board name", "boardvisor status lists the boards and their health"),
		ValidArgsFunction: completeBoardArg(cf, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			board := args[0]
			c, closeConn, err := cf.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signalContext()
			defer stop()
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if _, err := c.ClearQuarantine(rctx, &pb.ClearQuarantineRequest{Board: board, Reason: first(reason, "cleared by "+userName())}); err != nil {
				return rpcError(cf.peer(), "clear the quarantine of board "+board, err)
			}
			if noWait {
				fmt.Printf("board %s: the quarantine clearing was sent to its supervisor\n", board)
				return nil
			}
			for {
				r, err := c.ListBoards(rctx, &pb.ListBoardsRequest{})
				if err != nil {
					return rpcError(cf.peer(), "board "+board, err)
				}
				for _, b := range r.GetBoards() {
					if b.GetName() == board && b.GetHealth() != pb.BoardHealth_BOARD_HEALTH_BAD {
						fmt.Printf("board %s: quarantine cleared (status %s, health %s)\n", board, enumName(b.GetStatus().String(), "EXPORTER_STATUS_"),
							strings.ToLower(enumName(b.GetHealth().String(), "BOARD_HEALTH_")))
						return nil
					}
				}
				select {
				case <-rctx.Done():
					return failf(exitFailed, "board %s is still quarantined: its supervisor did not clear it (see its log; a board quarantined for a failing driver needs the supervisor restarted once the device is fixed)", board)
				case <-time.After(200 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (audited)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "do not wait for the board to be healthy again")
	return cmd
}

// supervisorRow is a supervisor as the commands print it.
type supervisorRow struct {
	ID          string     `json:"id"`
	Connected   bool       `json:"connected"`
	LastContact *time.Time `json:"lastContact,omitempty"`
	Version     string     `json:"version,omitempty"`
	Boards      uint32     `json:"boards"`
	LiveLeases  uint32     `json:"liveLeases"`
	Drained     bool       `json:"drained"`
}

func supervisorRowOf(s *pb.SupervisorInfo) supervisorRow {
	return supervisorRow{ID: s.GetId(), Connected: s.GetConnected(), LastContact: tsTime(s.GetLastContact()), Version: s.GetVersion(),
		Boards: s.GetBoards(), LiveLeases: s.GetLiveLeases(), Drained: s.GetDrained()}
}

var supervisorColumns = []Column[supervisorRow]{
	{Header: "SUPERVISOR", Cell: func(r supervisorRow) string { return r.ID }},
	{Header: "CONNECTED", Cell: func(r supervisorRow) string { return yesNo(r.Connected) }},
	{Header: "BOARDS", Cell: func(r supervisorRow) string { return fmt.Sprint(r.Boards) }},
	{Header: "LEASES", Cell: func(r supervisorRow) string { return fmt.Sprint(r.LiveLeases) }},
	{Header: "DRAINED", Cell: func(r supervisorRow) string { return yesNo(r.Drained) }},
	{Header: "VERSION", Wide: true, Cell: func(r supervisorRow) string { return r.Version }},
	{Header: "LAST CONTACT", Wide: true, Cell: func(r supervisorRow) string { return timeCell(r.LastContact) }},
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func newSupervisorCmd() *cobra.Command {
	var cf coordFlags
	cmd := &cobra.Command{Use: "supervisor", Short: "operators: list, drain and undrain supervisors", Args: noArgs}
	cf.addPersistent(cmd)
	var out *outputFlag
	list := &cobra.Command{
		Use:   "list [-o table|wide|json|yaml]",
		Short: "list the supervisors the coordinator knows",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			return withLeases(&cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListSupervisors(ctx, &pb.ListSupervisorsRequest{})
				if err != nil {
					return rpcError(cf.peer(), "list supervisors", err)
				}
				rows := []supervisorRow{}
				for _, s := range r.GetSupervisors() {
					rows = append(rows, supervisorRowOf(s))
				}
				return printList(os.Stdout, out.format, rows, supervisorColumns)
			})
		},
	}
	out = addOutput(list)
	cmd.AddCommand(list, newDrain(&cf, true), newDrain(&cf, false))
	return cmd
}

func newDrain(cf *coordFlags, on bool) *cobra.Command {
	var reason string
	var wait bool
	use, short := "drain", "drain a supervisor: its boards take no new lease, live ones finish (--wait: until they have)"
	if !on {
		use, short = "undrain", "undrain a supervisor: its boards drained take leases again"
	}
	cmd := &cobra.Command{
		Use:               use + " SUPERVISOR",
		Short:             short,
		Args:              exactArgs(1, "a supervisor ID", "boardvisor supervisor list shows them"),
		ValidArgsFunction: completeSupervisors(cf),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			c, closeConn, err := cf.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx, stop := signalContext()
			defer stop()
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			r, err := c.DrainSupervisor(rctx, &pb.DrainSupervisorRequest{SupervisorId: id, On: on, Reason: reason})
			cancel()
			if err != nil {
				return rpcError(cf.peer(), use+" supervisor "+id, err)
			}
			s := r.GetSupervisor()
			if !on {
				fmt.Printf("supervisor %s undrained: its %d board(s) take leases again\n", id, s.GetBoards())
				return nil
			}
			fmt.Printf("supervisor %s drained: its %d board(s) take no new lease; %d lease(s) still live\n", id, s.GetBoards(), s.GetLiveLeases())
			if !wait {
				return nil
			}
			// With --wait, the answer is the same whether the last lease ended before
			// the drain or after it.
			for s.GetLiveLeases() > 0 {
				select {
				case <-ctx.Done():
					return failf(exitInterrupted, "stopped waiting: supervisor %s still has %d live lease(s); it stays drained", id, s.GetLiveLeases())
				case <-time.After(time.Second):
				}
				qctx, qcancel := context.WithTimeout(ctx, 30*time.Second)
				lr, err := c.ListSupervisors(qctx, &pb.ListSupervisorsRequest{})
				qcancel()
				if err != nil {
					return rpcError(cf.peer(), "list supervisors", err)
				}
				for _, x := range lr.GetSupervisors() {
					if x.GetId() == id {
						s = x
					}
				}
			}
			fmt.Printf("supervisor %s has no live lease left: it may be stopped\n", id)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (shown to users as the boards' maintenance reason)")
	if on {
		cmd.Flags().BoolVar(&wait, "wait", false, "wait until its live leases have ended")
	}
	return cmd
}

// tokenRow is a user token as listed.
type tokenRow struct {
	User        string `json:"user"`
	Admin       bool   `json:"admin"`
	Fingerprint string `json:"fingerprint"`
}

var tokenColumns = []Column[tokenRow]{
	{Header: "USER", Cell: func(r tokenRow) string { return r.User }},
	{Header: "ADMIN", Cell: func(r tokenRow) string { return yesNo(r.Admin) }},
	{Header: "FINGERPRINT", Cell: func(r tokenRow) string { return r.Fingerprint }},
}

func newTokens() *cobra.Command {
	var cf coordFlags
	var file string
	cmd := &cobra.Command{
		Use:   "tokens",
		Short: "operators: add, list and revoke user tokens (through the coordinator, or in its tokens file)",
		Long: `Add, list and revoke the user tokens of the coordinator's --client-tokens file
(lines "user token [admin]"). Through the coordinator (an admin's token needed), the
change is in force at once. With --file FILE, the file is changed directly (on the
coordinator's host, before its first start for instance); a running coordinator
reloads the file within seconds.`,
		Args: noArgs,
	}
	cf.addPersistent(cmd)
	cmd.PersistentFlags().StringVar(&file, "file", "", "change this tokens file directly instead of asking the coordinator")
	var admin bool
	add := &cobra.Command{
		Use:   "add USER [--admin]",
		Short: "add a token for USER and print it (once: it is not shown again)",
		Args:  exactArgs(1, "a user name", ""),
		RunE: func(cmd *cobra.Command, args []string) error {
			var token, fp string
			if file != "" {
				t, err := coordinator.AddTokenLine(file, args[0], admin)
				if err != nil {
					return failf(exitFailed, "add a token for %s to %s: %v", args[0], file, err)
				}
				token, fp = t, coordinator.Fingerprint(t)
			} else {
				err := withLeases(&cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
					r, err := c.AddClientToken(ctx, &pb.AddClientTokenRequest{User: args[0], Admin: admin})
					if err != nil {
						return rpcError(cf.peer(), "add a token for "+args[0], err)
					}
					token, fp = r.GetToken().GetToken(), r.GetToken().GetFingerprint()
					return nil
				})
				if err != nil {
					return err
				}
			}
			fmt.Fprintf(os.Stderr, "boardvisor: token for %s added (fingerprint %s); give it to them: it is not shown again\n", args[0], fp)
			fmt.Println(token)
			return nil
		},
	}
	add.Flags().BoolVar(&admin, "admin", false, "an admin's token (maintenance, quarantines, drains, tokens, anyone's leases)")
	var out *outputFlag
	list := &cobra.Command{
		Use:   "list [-o table|wide|json|yaml]",
		Short: "list users and their tokens' fingerprints (never the tokens)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := out.check(); err != nil {
				return err
			}
			rows := []tokenRow{}
			if file != "" {
				t, err := coordinator.ReadClientTokens(file)
				if err != nil {
					return failf(exitFailed, "%v", err)
				}
				for tok, u := range t {
					rows = append(rows, tokenRow{User: u.Name, Admin: u.Admin, Fingerprint: coordinator.Fingerprint(tok)})
				}
				sortTokenRows(rows)
				return printList(os.Stdout, out.format, rows, tokenColumns)
			}
			return withLeases(&cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.ListClientTokens(ctx, &pb.ListClientTokensRequest{})
				if err != nil {
					return rpcError(cf.peer(), "list tokens", err)
				}
				for _, t := range r.GetTokens() {
					rows = append(rows, tokenRow{User: t.GetUser(), Admin: t.GetAdmin(), Fingerprint: t.GetFingerprint()})
				}
				return printList(os.Stdout, out.format, rows, tokenColumns)
			})
		},
	}
	out = addOutput(list)
	var fingerprint string
	revoke := &cobra.Command{
		Use:   "revoke USER [--fingerprint F]",
		Short: "revoke USER's tokens (or the one with fingerprint F)",
		Args:  exactArgs(1, "a user name", "boardvisor tokens list shows them"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file != "" {
				n, err := coordinator.RevokeTokenLines(file, args[0], fingerprint)
				if err != nil {
					return failf(exitFailed, "revoke %s's tokens in %s: %v", args[0], file, err)
				}
				fmt.Printf("%d token(s) of %s revoked\n", n, args[0])
				return nil
			}
			return withLeases(&cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.RevokeClientToken(ctx, &pb.RevokeClientTokenRequest{User: args[0], Fingerprint: fingerprint})
				if err != nil {
					return rpcError(cf.peer(), "revoke "+args[0]+"'s tokens", err)
				}
				fmt.Printf("%d token(s) of %s revoked\n", r.GetRevoked(), args[0])
				return nil
			})
		},
	}
	revoke.Flags().StringVar(&fingerprint, "fingerprint", "", "only the token with this fingerprint (boardvisor tokens list)")
	cmd.AddCommand(add, list, revoke)
	return cmd
}

func sortTokenRows(rows []tokenRow) {
	slices.SortFunc(rows, func(a, b tokenRow) int {
		return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Fingerprint, b.Fingerprint))
	})
}
