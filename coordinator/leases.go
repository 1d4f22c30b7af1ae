package coordinator

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxListedBoards bounds the boards named in an "unsatisfiable selector" message.
const maxListedBoards = 10

// CreateLease queues a lease on a board chosen by selector or by name and assigns it at
// once if a matching board is free. A request no known board can ever satisfy fails
// with FailedPrecondition. The response carries the lease token; nothing else does.
func (c *Coordinator) CreateLease(ctx context.Context, req *pb.CreateLeaseRequest) (*pb.CreateLeaseResponse, error) {
	selector, board := strings.TrimSpace(req.GetSelector()), strings.TrimSpace(req.GetBoard())
	switch {
	case selector != "" && board != "":
		return nil, status.Error(codes.InvalidArgument, "set either a selector or a board name, not both")
	case selector == "" && board == "":
		return nil, status.Error(codes.InvalidArgument, "a lease needs a selector (e.g. device=rpi4) or a board name")
	}
	sel, err := ParseSelector(selector)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	d, err := c.checkDuration(req.GetDuration(), "duration")
	if err != nil {
		return nil, err
	}
	token, err := c.newToken()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "generate a lease token: %v", err)
	}
	if err := checkImage(req.GetImage()); err != nil {
		return nil, err
	}
	m := matcher{board: board, sel: sel, image: req.GetImage()}
	want := "a free board matching " + sel.String()
	if board != "" {
		want = "board " + board + " to be free"
	}
	if m.image != nil {
		want += " that runs image " + m.image.GetManifestDigest() + " (" + imageNeeds(m.image) + ")"
	}
	client := req.GetClientName()
	if u, ok := userOf(ctx); ok {
		client = u.Name // an authenticated lease is recorded under its user's name
	}
	l := &leaseRow{
		ID: uuid.NewString(), Selector: sel.String(), WantBoard: board, Client: client, Token: token,
		DurationNS: int64(d), State: stateQueued, Phase: int32(pb.LeasePhase_LEASE_PHASE_CREATED),
		StatusMessage: "queued: waiting for " + want, CreatedAt: c.now().UnixNano(),
	}
	err = c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		boards, err := queryBoards(ctx, tx, "")
		if err != nil {
			return err
		}
		if err := satisfiable(m, boards); err != nil {
			return err
		}
		if err := insertLease(ctx, tx, l); err != nil {
			return err
		}
		if err := insertLeaseImage(ctx, tx, l.ID, req.GetImage()); err != nil {
			return err
		}
		if err := c.holdLease(ctx, tx, l.ID, req); err != nil {
			return err
		}
		return c.assignQueued(ctx, tx, fx)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease requested", "job", l.ID, "selector", l.Selector, "board", board, "client", l.Client, "duration", d.String())
	got, err := getLease(ctx, c.db, l.ID)
	if err != nil || got == nil {
		return nil, rpcError(errors.Join(err, errors.New("lease vanished after creation")))
	}
	resp := leaseProto(got, true)
	c.createdHold(ctx, resp, req)
	return &pb.CreateLeaseResponse{Lease: resp}, nil
}

// satisfiable fails with FailedPrecondition when no known board matches m, connected or
// not, healthy or not (a board may come back; an unknown one never will).
func satisfiable(m matcher, boards []*boardRow) error {
	for _, b := range boards {
		if m.matches(b) {
			return nil
		}
	}
	what := "no board matches " + m.sel.String()
	if m.board != "" {
		what = "no board named " + m.board
	}
	if m.image != nil {
		if plain := (matcher{board: m.board, sel: m.sel}); satisfiable(plain, boards) == nil {
			what = "no board that matches can run image " + m.image.GetManifestDigest() + ": it needs a board labelled " + imageNeeds(m.image)
		}
	}
	if len(boards) == 0 {
		return status.Errorf(codes.FailedPrecondition, "%s: the coordinator knows no boards yet (no supervisor has connected)", what)
	}
	var known []string
	for i, b := range boards {
		if i == maxListedBoards {
			known = append(known, fmt.Sprintf("and %d more", len(boards)-i))
			break
		}
		known = append(known, fmt.Sprintf("%s (%s)", b.Name, formatLabels(b.Labels)))
	}
	return status.Errorf(codes.FailedPrecondition, "%s; known boards: %s", what, strings.Join(known, ", "))
}

func (c *Coordinator) checkDuration(d *durationpb.Duration, what string) (time.Duration, error) {
	if d == nil {
		return 0, status.Errorf(codes.InvalidArgument, "%s is required", what)
	}
	if err := d.CheckValid(); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "%s: %v", what, err)
	}
	v := d.AsDuration()
	if v <= 0 {
		return 0, status.Errorf(codes.InvalidArgument, "%s must be positive, not %s", what, v)
	}
	if v > c.opts.MaxDuration {
		return 0, status.Errorf(codes.InvalidArgument, "%s %s exceeds the maximum of %s", what, v, c.opts.MaxDuration)
	}
	return v, nil
}

func (c *Coordinator) newToken() (string, error) {
	b := make([]byte, c.opts.TokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// GetLease returns one lease (without its token).
func (c *Coordinator) GetLease(ctx context.Context, req *pb.GetLeaseRequest) (*pb.GetLeaseResponse, error) {
	l, err := c.lease(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &pb.GetLeaseResponse{Lease: leaseProto(l, false)}, nil
}

func (c *Coordinator) lease(ctx context.Context, id string) (*leaseRow, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "a lease ID is required")
	}
	l, err := getLease(ctx, c.db, id)
	if err != nil {
		return nil, rpcError(err)
	}
	if l == nil {
		return nil, status.Errorf(codes.NotFound, "lease %s not found", id)
	}
	return l, nil
}

// ReleaseLease ends a lease early: a queued lease is cancelled at once; an assigned one
// gets a StopJob (its afterLease hook still runs) and ends when its supervisor says so.
// Releasing an ended lease changes nothing.
func (c *Coordinator) ReleaseLease(ctx context.Context, req *pb.ReleaseLeaseRequest) (*pb.ReleaseLeaseResponse, error) {
	reason := strings.TrimSpace(req.GetReason())
	if reason == "" {
		reason = "released by the client"
	}
	var out *leaseRow
	err := c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		l, err := getLease(ctx, tx, req.GetId())
		if err != nil {
			return err
		}
		if l == nil {
			return status.Errorf(codes.NotFound, "lease %s not found", req.GetId())
		}
		if err := mayChange(ctx, l.Client); err != nil {
			return err
		}
		out = l
		switch l.State {
		case stateEnded:
			return nil
		case stateQueued:
			endLease(l, pb.LeasePhase_LEASE_PHASE_DONE, c.now().UnixNano(), "cancelled before a board was assigned: "+reason)
		default:
			if l.StopAt == 0 {
				l.StopAt, l.StopReason = c.now().UnixNano(), reason
			}
			l.StatusMessage = "ending: " + reason
			fx.stopJob(l.SupervisorID, l.ID, reason)
		}
		if err := noteRelease(ctx, tx, l.ID); err != nil { // who released it, for LeaseLog (leaselog.go)
			return err
		}
		fx.leaseChanged(l.ID)
		return saveLease(ctx, tx, l)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease released", "job", out.ID, "state", out.State, "reason", reason)
	return &pb.ReleaseLeaseResponse{Lease: leaseProto(out, false)}, nil
}

// ExtendLease moves a lease's end later. The coordinator's expiry timer follows the new
// end; the total duration stays within Options.MaxDuration.
func (c *Coordinator) ExtendLease(ctx context.Context, req *pb.ExtendLeaseRequest) (*pb.ExtendLeaseResponse, error) {
	by, err := c.checkDuration(req.GetBy(), "extension")
	if err != nil {
		return nil, err
	}
	var out *leaseRow
	err = c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		l, err := getLease(ctx, tx, req.GetId())
		if err != nil {
			return err
		}
		if l != nil {
			if err := mayChange(ctx, l.Client); err != nil {
				return err
			}
		}
		switch {
		case l == nil:
			return status.Errorf(codes.NotFound, "lease %s not found", req.GetId())
		case l.State == stateEnded:
			return status.Errorf(codes.FailedPrecondition, "lease %s has ended", l.ID)
		case l.StopAt != 0:
			return status.Errorf(codes.FailedPrecondition, "lease %s is already ending (%s)", l.ID, l.StopReason)
		}
		total := time.Duration(l.DurationNS+l.ExtraNS) + by
		if total > c.opts.MaxDuration {
			return status.Errorf(codes.InvalidArgument, "extending lease %s by %s would make it %s long; the maximum is %s",
				l.ID, by, total, c.opts.MaxDuration)
		}
		l.ExtraNS += int64(by)
		remaining := time.Duration(l.DurationNS + l.ExtraNS)
		if l.EndsAt != 0 {
			l.EndsAt += int64(by)
			remaining = time.Duration(l.EndsAt - c.opts.Now().UnixNano())
		}
		// The supervisor bounds the lease too: it must hear of the extension.
		if l.SupervisorID != "" {
			fx.extendJob(l.SupervisorID, &pb.ExtendJob{JobId: l.ID, Remaining: durationpb.New(remaining)})
		}
		out = l
		fx.leaseChanged(l.ID)
		fx.wake = true
		return saveLease(ctx, tx, l)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease extended", "job", out.ID, "by", by.String())
	return &pb.ExtendLeaseResponse{Lease: leaseProto(out, false)}, nil
}

// ListBoards lists the boards matching a selector (all when it is empty), by name. A
// board whose supervisor has been gone longer than the grace period shows OFFLINE; a
// board in maintenance shows health MAINTENANCE.
func (c *Coordinator) ListBoards(ctx context.Context, req *pb.ListBoardsRequest) (*pb.ListBoardsResponse, error) {
	sel, err := ParseSelector(req.GetSelector())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	boards, err := queryBoards(ctx, c.db, "")
	if err != nil {
		return nil, rpcError(err)
	}
	busy, err := busyBoards(ctx, c.db)
	if err != nil {
		return nil, rpcError(err)
	}
	now := c.now()
	out := &pb.ListBoardsResponse{}
	for _, b := range boards {
		if sel.Matches(b.Labels) {
			out.Boards = append(out.Boards, c.boardProto(b, busy, now))
		}
	}
	return out, nil
}

// ListLeases lists leases, oldest first, filtered by board and client; ended leases
// only when asked for.
func (c *Coordinator) ListLeases(ctx context.Context, req *pb.ListLeasesRequest) (*pb.ListLeasesResponse, error) {
	var conds []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		conds = append(conds, fmt.Sprintf(cond, len(args)))
	}
	if req.GetBoard() != "" {
		args = append(args, req.GetBoard())
		conds = append(conds, fmt.Sprintf("(l.board = $%d OR l.want_board = $%d)", len(args), len(args)))
	}
	if req.GetClientName() != "" {
		add("l.client = $%d", req.GetClientName())
	}
	if !req.GetIncludeEnded() {
		add("l.state <> $%d", stateEnded)
	}
	where := ""
	if len(conds) > 0 {
		where = "WHERE " + strings.Join(conds, " AND ")
	}
	leases, err := queryLeases(ctx, c.db, where, args...)
	if err != nil {
		return nil, rpcError(err)
	}
	out := &pb.ListLeasesResponse{}
	for _, l := range leases {
		out.Leases = append(out.Leases, leaseProto(l, false))
	}
	return out, nil
}

// SetBoardMaintenance puts a board into maintenance (no new lease goes to it; a lease
// it holds goes on) or takes it out, which may let a queued lease have it.
func (c *Coordinator) SetBoardMaintenance(ctx context.Context, req *pb.SetBoardMaintenanceRequest) (*pb.SetBoardMaintenanceResponse, error) {
	name := strings.TrimSpace(req.GetBoard())
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "a board name is required")
	}
	err := c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		res, err := tx.ExecContext(ctx, `UPDATE boards SET maintenance = $1, maintenance_reason = $2 WHERE name = $3`,
			req.GetOn(), req.GetReason(), name)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n == 0 {
			return status.Errorf(codes.NotFound, "board %s not found", name)
		}
		if req.GetOn() {
			return nil
		}
		return c.assignQueued(ctx, tx, fx)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("board maintenance set", "board", name, "on", req.GetOn(), "reason", req.GetReason())
	b, err := getBoard(ctx, c.db, name)
	if err != nil || b == nil {
		return nil, rpcError(errors.Join(err, errors.New("board vanished")))
	}
	busy, err := busyBoards(ctx, c.db)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.SetBoardMaintenanceResponse{Board: c.boardProto(b, busy, c.now())}, nil
}

// rpcError passes gRPC statuses through and reports anything else as Internal.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, errClosed) {
		return status.Error(codes.Unavailable, "the coordinator is shutting down")
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, "request cancelled")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return status.Error(codes.DeadlineExceeded, "request deadline exceeded")
	}
	return status.Errorf(codes.Internal, "coordinator database: %s", strings.ReplaceAll(err.Error(), "\n", " "))
}

func durationProto(ns int64) *durationpb.Duration { return durationpb.New(time.Duration(ns)) }

func tsProto(ns int64) *timestamppb.Timestamp {
	if ns == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, ns))
}

// leaseProto renders a lease; the token only for its creator.
func leaseProto(l *leaseRow, withToken bool) *pb.Lease {
	p := &pb.Lease{
		Id:               l.ID,
		Board:            l.Board,
		Selector:         l.Selector,
		ClientName:       l.Client,
		Phase:            pb.LeasePhase(l.Phase),
		ExporterStatus:   jpb.ExporterStatus(l.ExporterStatus),
		ExporterEndpoint: l.Endpoint,
		CreatedAt:        tsProto(l.CreatedAt),
		BeginsAt:         tsProto(l.BeginsAt),
		EndsAt:           tsProto(l.EndsAt),
		StatusMessage:    l.StatusMessage,
		Queued:           l.State == stateQueued,
	}
	if withToken {
		p.Token = l.Token
	}
	return p
}

func (c *Coordinator) boardProto(b *boardRow, busy map[string]string, now time.Time) *pb.Board {
	st := jpb.ExporterStatus(b.Status)
	if !b.Connected && now.Sub(time.Unix(0, b.LastContact)) > c.opts.Grace {
		st = jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE
	}
	health := pb.BoardHealth(b.Health)
	if b.Maintenance {
		health = pb.BoardHealth_BOARD_HEALTH_MAINTENANCE
	}
	cur := busy[b.Name]
	if cur == "" {
		cur = b.CurrentJob
	}
	return &pb.Board{
		Name:           b.Name,
		Labels:         b.Labels,
		SupervisorId:   b.SupervisorID,
		Status:         st,
		Health:         health,
		CurrentLeaseId: cur,
		Endpoint:       b.Endpoint,
	}
}
