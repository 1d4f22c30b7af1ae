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

	"github.com/boardvisor/boardvisor/jobs"
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
	if err := c.validateCreate(ctx, req); err != nil {
		return nil, err
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
		ID: uuid.NewString(), Selector: sel.String(), WantBoard: board, Client: client, TokenHash: jobs.TokenHash(token),
		DurationNS: int64(d), State: stateQueued, Phase: int32(pb.LeasePhase_LEASE_PHASE_CREATED),
		StatusMessage: "queued: waiting for " + want, CreatedAt: c.now().UnixNano(), Params: req.GetParameters(),
		Image: req.GetImage(),
	}
	var out *pb.Lease
	uctx := ctx
	err = c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		// Whether any board, free or not, could ever serve it: from the index.
		if !c.fleet.anyMatch(m) {
			return status.Error(codes.FailedPrecondition, c.fleet.unsatisfiable(m))
		}
		b := c.fleet.bestFree(m)
		if b == nil && c.queue.perUser[client] >= c.opts.MaxQueuedPerUser {
			c.auditRefusal(who(uctx), "", "", fmt.Sprintf("CreateLease: %s has %d leases queued, the most allowed", client, c.queue.perUser[client]))
			return status.Errorf(codes.ResourceExhausted,
				"%s already has %d leases waiting in the queue, the most allowed (coordinator --max-queued-per-user): release some or wait for them",
				client, c.queue.perUser[client])
		}
		l.QueuePos = c.nextPos
		c.nextPos++
		if err := insertLeaseImage(ctx, tx, l.ID, l.Image); err != nil {
			return err
		}
		if err := c.holdLease(ctx, tx, l.ID, req); err != nil {
			return err
		}
		if b != nil {
			c.take(l, b)
			if err := insertLease(ctx, c.cached(tx), l, c.stepTerm); err != nil {
				return err
			}
			if err := c.assigned(ctx, tx, fx, l, b); err != nil {
				return err
			}
		} else {
			c.live[l.ID] = l
			c.queue.push(l)
			if err := insertLease(ctx, c.cached(tx), l, c.stepTerm); err != nil {
				return err
			}
			fx.leaseChanged(l)
		}
		out = leaseProto(l, false)
		return nil
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease requested", "job", l.ID, "selector", l.Selector, "board", board, "client", l.Client, "duration", d.String())
	out.Token = token // once, here; the coordinator keeps only its hash
	c.createdHold(ctx, out, req)
	return &pb.CreateLeaseResponse{Lease: out}, nil
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
	if err := c.checkClientText(ctx, "reason", reason, maxReason); err != nil {
		return nil, err
	}
	if reason == "" {
		reason = "released by the client"
	}
	var out *pb.Lease
	state := ""
	err := c.do(ctx, func(tctx context.Context, tx *sql.Tx, fx *effects) error {
		l, err := c.leaseFor(tctx, tx, ctx, req.GetId(), "release")
		if err != nil {
			return err
		}
		state = l.State
		switch l.State {
		case stateEnded:
			out = leaseProto(l, false)
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
		if err := noteRelease(tctx, tx, l.ID, ctx); err != nil { // who released it, for LeaseLog (leaselog.go)
			return err
		}
		out = leaseProto(l, false)
		return c.saveChanged(tctx, tx, fx, l)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease released", "job", out.GetId(), "state", state, "reason", reason)
	return &pb.ReleaseLeaseResponse{Lease: out}, nil
}

// ExtendLease moves a lease's end later. The coordinator's expiry timer follows the new
// end; the total duration stays within Options.MaxDuration.
func (c *Coordinator) ExtendLease(ctx context.Context, req *pb.ExtendLeaseRequest) (*pb.ExtendLeaseResponse, error) {
	by, err := c.checkDuration(req.GetBy(), "extension")
	if err != nil {
		return nil, err
	}
	var out *pb.Lease
	err = c.do(ctx, func(tctx context.Context, tx *sql.Tx, fx *effects) error {
		l, err := c.leaseOf(tctx, tx, req.GetId())
		if err != nil {
			return err
		}
		if l != nil {
			if err := c.mayChange(ctx, l, "extend"); err != nil {
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
		if l.EndsAt != 0 {
			l.EndsAt += int64(by)
		}
		// The supervisor bounds the lease too: it must hear of the extension (before
		// READY it hears of it at READY, with the lease's ends_at).
		c.syncEnd(fx, l)
		out = leaseProto(l, false)
		return c.saveChanged(tctx, tx, fx, l)
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("lease extended", "job", out.GetId(), "by", by.String())
	return &pb.ExtendLeaseResponse{Lease: out}, nil
}

// ListBoards lists the boards matching a selector (all when it is empty), by name. A
// board whose supervisor has been gone longer than the grace period shows OFFLINE; a
// board in maintenance shows health MAINTENANCE.
func (c *Coordinator) ListBoards(ctx context.Context, req *pb.ListBoardsRequest) (*pb.ListBoardsResponse, error) {
	sel, err := ParseSelector(req.GetSelector())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	boards, err := queryBoards(ctx, c.db, &c.rowsRead, "")
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
	if err := c.checkClientText(ctx, "reason", req.GetReason(), maxReason); err != nil {
		return nil, err
	}
	err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		b := c.fleet.get(name)
		if b == nil {
			return status.Errorf(codes.NotFound, "board %s not found", name)
		}
		b.Maintenance, b.MaintenanceReason = req.GetOn(), req.GetReason()
		c.refresh(b)
		c.markBoard(b)
		return nil
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("board maintenance set", "board", name, "on", req.GetOn(), "reason", req.GetReason())
	b, err := c.committedBoard(ctx, name)
	if err != nil {
		return nil, err
	}
	return &pb.SetBoardMaintenanceResponse{Board: b}, nil
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
	if errors.Is(err, errNotLeader) {
		return status.Error(codes.Unavailable, "this coordinator is no longer the active one: retry (with every coordinator's address, the client finds the active one)")
	}
	if dbConnLost(err) {
		return status.Error(codes.Unavailable, "the coordinator lost its database connection: retry in a few seconds")
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

// MoveBoard gives a board name to another supervisor, or frees it (admins only; the
// check is in authenticate). A board holding a lease is not moved.
func (c *Coordinator) MoveBoard(ctx context.Context, req *pb.MoveBoardRequest) (*pb.MoveBoardResponse, error) {
	name, to := strings.TrimSpace(req.GetBoard()), strings.TrimSpace(req.GetToSupervisorId())
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "a board name is required")
	}
	if to != "" && !jobs.ValidName(to) {
		return nil, status.Errorf(codes.InvalidArgument, "supervisor ID %q is not valid (want 1 to 64 of A-Z a-z 0-9 . _ -)", to)
	}
	from := ""
	err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		b := c.fleet.get(name)
		if b == nil {
			return status.Errorf(codes.NotFound, "board %s not found", name)
		}
		if b.lease != "" {
			return status.Errorf(codes.FailedPrecondition, "board %s holds lease %s: release it before moving the board", name, b.lease)
		}
		from = b.SupervisorID
		if to == "" {
			c.fleet.remove(b)
			_, err := tx.ExecContext(ctx, `DELETE FROM boards WHERE name = $1`, name)
			return err
		}
		row := b.boardRow
		row.SupervisorID = to
		row.Status = int32(jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE) // until its new supervisor announces it
		if err := saveBoard(ctx, tx, &row); err != nil {
			return err
		}
		c.refresh(c.fleet.put(row))
		return nil
	})
	if err != nil {
		return nil, rpcError(err)
	}
	c.log.Info("board moved by an admin", "board", name, "from", from, "to", to, "by", who(ctx))
	if to == "" {
		return &pb.MoveBoardResponse{}, nil
	}
	b, err := c.committedBoard(ctx, name)
	if err != nil {
		return nil, err
	}
	return &pb.MoveBoardResponse{Board: b}, nil
}

// committedBoard reads a board as committed (after a change of it), for a response.
func (c *Coordinator) committedBoard(ctx context.Context, name string) (*pb.Board, error) {
	b, err := getBoard(ctx, c.db, &c.rowsRead, name)
	if err != nil || b == nil {
		return nil, rpcError(errors.Join(err, errors.New("board vanished")))
	}
	busy, err := busyBoards(ctx, c.db)
	if err != nil {
		return nil, rpcError(err)
	}
	return c.boardProto(b, busy, c.now()), nil
}
