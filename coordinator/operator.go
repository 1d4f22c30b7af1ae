package coordinator

// Operators' requests and the answers that explain a wait: why a lease waits
// (ExplainWait), clearing a board's quarantine, draining a supervisor, listing
// supervisors, and user tokens added, listed and revoked without editing files by hand.
// Every change is audited (the coordinator's audit.jsonl) and admin-only when client
// authentication is on.
//
// These read the coordinator's tables with their own queries and change state through
// the coordinator's own requests (SetBoardMaintenance, ReleaseLease), so they hold no
// rule of the lease queue themselves.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// drainPrefix starts the maintenance reason of a board its supervisor's drain put in
// maintenance: undrain takes out of maintenance only those.
const drainPrefix = "drained: "

// ops is the coordinator's state for these requests.
type ops struct {
	c     *Coordinator
	holds *holds

	tokens     atomic.Pointer[ClientTokens] // nil: client authentication is off
	tokensMu   sync.Mutex                   // serializes writes and reloads of the tokens file
	tokensSeen fileStamp
}

// fileStamp tells whether a file changed since it was read.
type fileStamp struct {
	ino, size uint64
	mtime     int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

func newOps(c *Coordinator) *ops {
	o := &ops{c: c, holds: newHolds()}
	if c.opts.ClientTokens != nil {
		t := c.opts.ClientTokens
		o.tokens.Store(&t)
	}
	if c.opts.ClientTokensFile != "" {
		o.tokensSeen, _ = stampOf(c.opts.ClientTokensFile)
	}
	return o
}

// clientTokens are the tokens in force; nil when client authentication is off.
func (c *Coordinator) clientTokens() ClientTokens {
	if c.ops == nil {
		return c.opts.ClientTokens
	}
	if t := c.ops.tokens.Load(); t != nil {
		return *t
	}
	return nil
}

type auditEntry struct{ kind, who, board, job, reason string }

// requester is what the audit log has for requests (audit.Log.Request).
type requester interface {
	Request(who, board, job, what, reason string)
}

func (o *ops) audit(e auditEntry) {
	if r, ok := o.c.opts.Audit.(requester); ok {
		r.Request(e.who, e.board, e.job, e.kind, e.reason)
	}
}

// caller names who makes a request: the authenticated user, else "an operator".
func caller(ctx context.Context) string {
	if u, ok := userOf(ctx); ok {
		return u.Name
	}
	return "operator"
}

// requireAdmin refuses a non-admin when client authentication is on (audited).
func (c *Coordinator) requireAdmin(ctx context.Context, what string) error {
	u, ok := userOf(ctx)
	if !ok || u.Admin {
		return nil
	}
	c.refused(ctx, what+" by a non-admin: "+u.Name, what)
	return status.Errorf(codes.PermissionDenied, "only an admin may %s (%s is not one)", what, u.Name)
}

// ---- why a lease waits ----

// opsBoard is a board as these requests read it.
type opsBoard struct {
	name, supervisor  string
	labels            map[string]string
	status, health    int32
	maintenance       bool
	maintenanceReason string
	connected         bool
	lastContact       int64
}

func (c *Coordinator) opsBoards(ctx context.Context, where string, args ...any) ([]*opsBoard, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT b.name, b.supervisor_id, b.labels, b.status, b.health, b.maintenance,
		b.maintenance_reason, COALESCE(s.connected, FALSE), COALESCE(s.last_contact, 0)
		FROM boards b LEFT JOIN supervisors s ON s.id = b.supervisor_id `+where+` ORDER BY b.name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*opsBoard
	for rows.Next() {
		var b opsBoard
		var labels string
		if err := rows.Scan(&b.name, &b.supervisor, &labels, &b.status, &b.health, &b.maintenance, &b.maintenanceReason,
			&b.connected, &b.lastContact); err != nil {
			return nil, err
		}
		b.labels = map[string]string{}
		_ = json.Unmarshal([]byte(labels), &b.labels)
		out = append(out, &b)
	}
	return out, rows.Err()
}

// opsLease is a lease as these requests read it.
type opsLease struct {
	id, selector, wantBoard, board, client, state string
	endsAt                                        int64
}

func (c *Coordinator) opsLeases(ctx context.Context, where string, args ...any) ([]*opsLease, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT id, selector, want_board, board, client, state, ends_at FROM leases `+where+` ORDER BY queue_pos`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*opsLease
	for rows.Next() {
		var l opsLease
		if err := rows.Scan(&l.id, &l.selector, &l.wantBoard, &l.board, &l.client, &l.state, &l.endsAt); err != nil {
			return nil, err
		}
		out = append(out, &l)
	}
	return out, rows.Err()
}

// matchOf is what boards a lease may go to.
func matchOf(selector, wantBoard string) func(b *opsBoard) bool {
	if wantBoard != "" {
		return func(b *opsBoard) bool { return b.name == wantBoard }
	}
	sel, err := ParseSelector(selector)
	if err != nil {
		return func(*opsBoard) bool { return false }
	}
	return func(b *opsBoard) bool { return sel.Matches(b.labels) }
}

// boardMessage is why the board has its health: the message of its last status event
// with that health that says one (a later status change of the same health may say
// nothing).
func (c *Coordinator) boardMessage(ctx context.Context, b *opsBoard) string {
	rows, err := c.db.QueryContext(ctx, `SELECT payload FROM events WHERE supervisor_id = $1 AND board = $2 AND kind = $3
		ORDER BY seq DESC LIMIT 50`, b.supervisor, b.name, "board_status")
	if err != nil {
		return ""
	}
	defer rows.Close()
	for rows.Next() {
		var payload string
		if rows.Scan(&payload) != nil {
			return ""
		}
		var bs pb.BoardStatus
		if protojson.Unmarshal([]byte(payload), &bs) != nil {
			continue
		}
		if int32(bs.GetHealth()) != b.health {
			return "" // the health changed since: what was said then is stale
		}
		if bs.GetMessage() != "" {
			return bs.GetMessage()
		}
	}
	return ""
}

// ExplainWait says why a lease waits: its place among the queued leases that want a
// board it wants, and each board it may have with its holder or why it is unavailable.
func (c *Coordinator) ExplainWait(ctx context.Context, req *pb.ExplainWaitRequest) (*pb.ExplainWaitResponse, error) {
	l, err := c.lease(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	boards, err := c.opsBoards(ctx, "")
	if err != nil {
		return nil, rpcError(err)
	}
	live, err := c.opsLeases(ctx, `WHERE state IN ($1, $2, $3)`, stateQueued, stateAssigned, stateActive)
	if err != nil {
		return nil, rpcError(err)
	}
	mine := matchOf(l.Selector, l.WantBoard)
	wanted := map[string]bool{}
	out := &pb.ExplainWaitResponse{Lease: leaseProto(l, false)}
	holders := map[string]*opsLease{}
	for _, o := range live {
		if o.state != stateQueued && o.board != "" {
			if _, ok := holders[o.board]; !ok {
				holders[o.board] = o
			}
		}
	}
	now := c.now()
	for _, b := range boards {
		if !mine(b) {
			continue
		}
		wanted[b.name] = true
		bw := &pb.BoardWait{Name: b.name, SupervisorId: b.supervisor, Status: jpb.ExporterStatus(b.status),
			Health: pb.BoardHealth(b.health), SupervisorConnected: b.connected}
		if b.lastContact != 0 {
			bw.SupervisorLastContact = timestamppb.New(time.Unix(0, b.lastContact))
		}
		gone := !b.connected && now.Sub(time.Unix(0, b.lastContact)) > c.opts.Grace
		switch {
		case gone:
			bw.Status = jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE
			bw.Reason = fmt.Sprintf("supervisor %s gone since %s", b.supervisor, time.Unix(0, b.lastContact).Format(time.DateTime))
		case b.maintenance:
			bw.Health = pb.BoardHealth_BOARD_HEALTH_MAINTENANCE
			bw.Reason = "in maintenance"
			if b.maintenanceReason != "" {
				bw.Reason += ": " + b.maintenanceReason
			}
		case b.health == int32(pb.BoardHealth_BOARD_HEALTH_BAD):
			bw.Reason = "quarantined"
			if m := c.boardMessage(ctx, b); m != "" {
				bw.Reason += ": " + m
			}
		case b.health == int32(pb.BoardHealth_BOARD_HEALTH_UNKNOWN):
			bw.Reason = "not ready"
			if m := c.boardMessage(ctx, b); m != "" {
				bw.Reason += ": " + m
			}
		case !b.connected:
			bw.Reason = fmt.Sprintf("supervisor %s disconnected since %s (within its grace)", b.supervisor, time.Unix(0, b.lastContact).Format(time.DateTime))
		}
		if h := holders[b.name]; h != nil {
			bw.HolderLeaseId, bw.HolderClient = h.id, h.client
			if h.endsAt != 0 {
				bw.HolderEndsAt = timestamppb.New(time.Unix(0, h.endsAt))
			}
		}
		out.Boards = append(out.Boards, bw)
	}
	if l.State == stateQueued {
		// The queued leases that compete with this one: they want a board it wants.
		for _, o := range live {
			if o.state != stateQueued {
				continue
			}
			theirs := matchOf(o.selector, o.wantBoard)
			competes := o.id == l.ID
			for _, b := range boards {
				if !competes && wanted[b.name] && theirs(b) {
					competes = true
				}
			}
			if !competes {
				continue
			}
			out.Queued++
			if o.id == l.ID {
				out.Position = out.Queued
			}
		}
	}
	out.Summary = waitSummary(l, out)
	return out, nil
}

// waitSummary is ExplainWait's one sentence.
func waitSummary(l *leaseRow, r *pb.ExplainWaitResponse) string {
	what := "boards matching " + l.Selector
	if l.WantBoard != "" {
		what = "board " + l.WantBoard
	}
	if l.State != stateQueued {
		if l.Board == "" {
			return "the lease is " + l.State
		}
		return fmt.Sprintf("the lease has board %s (%s)", l.Board, phaseName(pb.LeasePhase(l.Phase)))
	}
	if len(r.Boards) == 0 {
		return "no board matches " + what + " any more"
	}
	var unavailable, busy []string
	for _, b := range r.GetBoards() {
		switch {
		case b.GetReason() != "" && b.GetHolderLeaseId() == "":
			unavailable = append(unavailable, b.GetName()+" "+b.GetReason())
		case b.GetHolderLeaseId() != "":
			busy = append(busy, b.GetName()+" held by "+b.GetHolderClient())
		}
	}
	if len(unavailable) == len(r.Boards) {
		return fmt.Sprintf("every one of the %s is unavailable: %s", what, strings.Join(unavailable, "; "))
	}
	s := fmt.Sprintf("number %d of %d in the queue for %s", r.Position, r.Queued, what)
	if len(busy) > 0 {
		s += "; " + strings.Join(busy, ", ")
	}
	if len(unavailable) > 0 {
		s += "; unavailable: " + strings.Join(unavailable, "; ")
	}
	return s
}

// ---- quarantine ----

// ClearQuarantine asks a board's supervisor to clear its quarantine. The request goes
// down the supervisor link; the board's health follows in a BoardStatus event.
func (c *Coordinator) ClearQuarantine(ctx context.Context, req *pb.ClearQuarantineRequest) (*pb.ClearQuarantineResponse, error) {
	if err := c.requireAdmin(ctx, "clear a quarantine"); err != nil {
		return nil, err
	}
	name := strings.TrimSpace(req.GetBoard())
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "a board name is required")
	}
	bs, err := c.opsBoards(ctx, `WHERE b.name = $1`, name)
	if err != nil {
		return nil, rpcError(err)
	}
	if len(bs) == 0 {
		return nil, status.Errorf(codes.NotFound, "no board named %s", name)
	}
	b := bs[0]
	if b.health != int32(pb.BoardHealth_BOARD_HEALTH_BAD) {
		return nil, status.Errorf(codes.FailedPrecondition, "board %s is not quarantined (health %s): nothing to clear",
			name, strings.ToLower(strings.TrimPrefix(pb.BoardHealth(b.health).String(), "BOARD_HEALTH_")))
	}
	c.mu.Lock()
	s := c.sessions[b.supervisor]
	c.mu.Unlock()
	if s == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "the supervisor of board %s (%s) is not connected: clear the quarantine once it is back (a restart of the supervisor clears it too)", name, b.supervisor)
	}
	who := caller(ctx)
	reason := strings.TrimSpace(req.GetReason())
	if err := s.ClearQuarantine(&pb.ClearQuarantine{Board: name, Reason: reason, By: who}); err != nil {
		return nil, status.Errorf(codes.Unavailable, "the request did not reach supervisor %s: %v", b.supervisor, err)
	}
	c.log.Info("quarantine cleared by an operator", "board", name, "supervisor", b.supervisor, "by", who, "reason", reason)
	c.ops.audit(auditEntry{kind: "clear-quarantine", who: who, board: name, reason: reason})
	return &pb.ClearQuarantineResponse{Board: &pb.Board{Name: name, SupervisorId: b.supervisor, Labels: b.labels,
		Status: jpb.ExporterStatus(b.status), Health: pb.BoardHealth(b.health)}}, nil
}

// ---- supervisors ----

// ListSupervisors lists the supervisors the coordinator knows, by ID.
func (c *Coordinator) ListSupervisors(ctx context.Context, _ *pb.ListSupervisorsRequest) (*pb.ListSupervisorsResponse, error) {
	infos, err := c.supervisorInfos(ctx, "")
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.ListSupervisorsResponse{Supervisors: infos}, nil
}

func (c *Coordinator) supervisorInfos(ctx context.Context, only string) ([]*pb.SupervisorInfo, error) {
	where, args := "", []any{}
	if only != "" {
		where, args = "WHERE id = $1", []any{only}
	}
	rows, err := c.db.QueryContext(ctx, `SELECT id, connected, last_contact, version FROM supervisors `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	var infos []*pb.SupervisorInfo
	for rows.Next() {
		var s pb.SupervisorInfo
		var last int64
		if err := rows.Scan(&s.Id, &s.Connected, &last, &s.Version); err != nil {
			rows.Close()
			return nil, err
		}
		if last != 0 {
			s.LastContact = timestamppb.New(time.Unix(0, last))
		}
		infos = append(infos, &s)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	boards, err := c.opsBoards(ctx, "")
	if err != nil {
		return nil, err
	}
	live, err := c.opsLeases(ctx, `WHERE state IN ($1, $2)`, stateAssigned, stateActive)
	if err != nil {
		return nil, err
	}
	for _, s := range infos {
		drained := 0
		for _, b := range boards {
			if b.supervisor != s.Id {
				continue
			}
			s.Boards++
			if b.maintenance && strings.HasPrefix(b.maintenanceReason, drainPrefix) {
				drained++
			}
			for _, l := range live {
				if l.board == b.name {
					s.LiveLeases++
				}
			}
		}
		s.Drained = s.Boards > 0 && drained == int(s.Boards)
	}
	return infos, nil
}

// DrainSupervisor drains a supervisor (every board of it goes into maintenance: no new
// lease, the live ones finish) or undrains it (the boards its drain put in maintenance
// come out; a board put in maintenance for another reason stays).
func (c *Coordinator) DrainSupervisor(ctx context.Context, req *pb.DrainSupervisorRequest) (*pb.DrainSupervisorResponse, error) {
	if err := c.requireAdmin(ctx, "drain a supervisor"); err != nil {
		return nil, err
	}
	id := strings.TrimSpace(req.GetSupervisorId())
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "a supervisor ID is required")
	}
	infos, err := c.supervisorInfos(ctx, id)
	if err != nil {
		return nil, rpcError(err)
	}
	if len(infos) == 0 {
		all, _ := c.supervisorInfos(ctx, "")
		var known []string
		for _, s := range all {
			known = append(known, s.GetId())
		}
		return nil, status.Errorf(codes.NotFound, "no supervisor %s (known: %s)", id, strings.Join(known, ", "))
	}
	boards, err := c.opsBoards(ctx, `WHERE b.supervisor_id = $1`, id)
	if err != nil {
		return nil, rpcError(err)
	}
	reason := strings.TrimSpace(req.GetReason())
	if reason == "" {
		reason = "by " + caller(ctx)
	}
	for _, b := range boards {
		var change *pb.SetBoardMaintenanceRequest
		switch {
		case req.GetOn() && !b.maintenance:
			change = &pb.SetBoardMaintenanceRequest{Board: b.name, On: true, Reason: drainPrefix + reason}
		case !req.GetOn() && b.maintenance && strings.HasPrefix(b.maintenanceReason, drainPrefix):
			change = &pb.SetBoardMaintenanceRequest{Board: b.name, On: false}
		}
		if change == nil {
			continue
		}
		if _, err := c.SetBoardMaintenance(ctx, change); err != nil {
			return nil, err
		}
	}
	what := "drain"
	if !req.GetOn() {
		what = "undrain"
	}
	c.log.Info("supervisor "+what+"ed", "supervisor", id, "boards", len(boards), "by", caller(ctx), "reason", reason)
	c.ops.audit(auditEntry{kind: what, who: caller(ctx), reason: "supervisor " + id + ": " + reason})
	infos, err = c.supervisorInfos(ctx, id)
	if err != nil || len(infos) == 0 {
		return nil, rpcError(errors.Join(err, errors.New("supervisor vanished")))
	}
	return &pb.DrainSupervisorResponse{Supervisor: infos[0]}, nil
}

// ---- user tokens ----

// ReadClientTokens reads a client tokens file: "user token [admin]" lines, '#' starts
// a comment.
func ReadClientTokens(path string) (ClientTokens, error) {
	lines, err := readTokenLines(path)
	if err != nil {
		return nil, err
	}
	users := ClientTokens{}
	for _, tl := range lines {
		if tl.comment {
			continue
		}
		if tl.bad {
			return nil, fmt.Errorf("%s:%d: want `user token` or `user token admin`", path, tl.n)
		}
		users[tl.token] = User{Name: tl.user, Admin: tl.admin}
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("client tokens %s: no tokens", path)
	}
	return users, nil
}

// tokenLine is one line of a tokens file, kept as written for rewrites.
type tokenLine struct {
	n            int
	text         string
	comment, bad bool
	user, token  string
	admin        bool
}

func readTokenLines(path string) ([]tokenLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("client tokens: %w", err)
	}
	defer f.Close()
	var out []tokenLine
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		tl := tokenLine{n: n, text: sc.Text()}
		line := strings.TrimSpace(tl.text)
		if line == "" || strings.HasPrefix(line, "#") {
			tl.comment = true
			out = append(out, tl)
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 || len(fields) > 3 || (len(fields) == 3 && fields[2] != "admin") {
			tl.bad = true
		} else {
			tl.user, tl.token, tl.admin = fields[0], fields[1], len(fields) == 3
		}
		out = append(out, tl)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("client tokens %s: %w", path, err)
	}
	return out, nil
}

// writeTokenLines replaces the tokens file atomically (a file beside it, synced, renamed
// over it, the directory synced): a crash leaves the old file or the new one.
func writeTokenLines(path string, lines []tokenLine) error {
	var b strings.Builder
	for _, tl := range lines {
		b.WriteString(tl.text)
		b.WriteByte('\n')
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.WriteString(b.String()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Fingerprint is how a token is named in listings and logs: the first 12 hex digits of
// its SHA-256.
func Fingerprint(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])[:12]
}

// NewToken returns a new random token (32 bytes, hex).
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// AddTokenLine adds a user's token to a tokens file (created if missing) and returns it.
func AddTokenLine(path, user string, admin bool) (string, error) {
	if err := checkUserName(user); err != nil {
		return "", err
	}
	lines, err := readTokenLines(path)
	if errors.Is(err, fs.ErrNotExist) {
		lines, err = []tokenLine{{comment: true, text: "# boardvisor client tokens: user token [admin]"}}, nil
	}
	if err != nil {
		return "", err
	}
	token, err := NewToken()
	if err != nil {
		return "", err
	}
	text := user + " " + token
	if admin {
		text += " admin"
	}
	lines = append(lines, tokenLine{text: text, user: user, token: token, admin: admin})
	return token, writeTokenLines(path, lines)
}

// RevokeTokenLines removes a user's tokens (only the one with fingerprint, if given)
// from a tokens file. It refuses to leave no token, or no admin's token.
func RevokeTokenLines(path, user, fingerprint string) (int, error) {
	lines, err := readTokenLines(path)
	if err != nil {
		return 0, err
	}
	var keep []tokenLine
	revoked, admins, left := 0, 0, 0
	for _, tl := range lines {
		if !tl.comment && !tl.bad && tl.user == user && (fingerprint == "" || Fingerprint(tl.token) == fingerprint) {
			revoked++
			continue
		}
		if !tl.comment && !tl.bad {
			left++
			if tl.admin {
				admins++
			}
		}
		keep = append(keep, tl)
	}
	if revoked == 0 {
		if fingerprint != "" {
			return 0, fmt.Errorf("user %s has no token with fingerprint %s", user, fingerprint)
		}
		return 0, fmt.Errorf("no token of user %s", user)
	}
	if left == 0 {
		return 0, errors.New("that would leave no token at all, and the coordinator would accept nobody: add another first")
	}
	if admins == 0 {
		return 0, errors.New("that would leave no admin: add another admin's token first")
	}
	return revoked, writeTokenLines(path, keep)
}

func checkUserName(user string) error {
	if user == "" || len(user) > 64 || strings.ContainsFunc(user, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._@-", r))
	}) {
		return fmt.Errorf("user name %q: want 1 to 64 of A-Z a-z 0-9 . _ @ -", user)
	}
	return nil
}

// tokensFile is the tokens file, or an error saying why the token requests cannot work.
func (c *Coordinator) tokensFile() (string, error) {
	if c.clientTokens() == nil {
		return "", status.Error(codes.FailedPrecondition, "client authentication is off: start the coordinator with --client-tokens FILE (`boardvisor tokens add --file FILE --admin NAME` makes its first admin)")
	}
	if c.opts.ClientTokensFile == "" {
		return "", status.Error(codes.FailedPrecondition, "the coordinator's tokens were not read from a file: nothing to change")
	}
	return c.opts.ClientTokensFile, nil
}

// reload reads the tokens file again and puts it in force. o.tokensMu is held.
func (o *ops) reload() error {
	path := o.c.opts.ClientTokensFile
	st, _ := stampOf(path)
	t, err := ReadClientTokens(path)
	if err != nil {
		return err
	}
	o.tokens.Store(&t)
	o.tokensSeen = st
	return nil
}

// reloadTokensIfChanged puts a tokens file edited by hand (or by `boardvisor tokens
// --file`) in force. A file that no longer reads is logged, and the tokens in force
// stay.
func (o *ops) reloadTokensIfChanged() {
	path := o.c.opts.ClientTokensFile
	if path == "" || o.tokens.Load() == nil {
		return
	}
	st, err := stampOf(path)
	o.tokensMu.Lock()
	defer o.tokensMu.Unlock()
	if err != nil || st == o.tokensSeen {
		return
	}
	if err := o.reload(); err != nil {
		o.tokensSeen = st // said once per change
		o.c.log.Error("client tokens file changed but does not read: the tokens in force stay", "file", path, "error", err)
		return
	}
	o.c.log.Info("client tokens reloaded", "file", path, "users", len(*o.tokens.Load()))
	o.audit(auditEntry{kind: "tokens-reloaded", who: "coordinator", reason: "the file changed: " + path})
}

// ReloadClientTokens reads the tokens file again now (SIGHUP).
func (c *Coordinator) ReloadClientTokens() error {
	if c.opts.ClientTokensFile == "" || c.ops.tokens.Load() == nil {
		return nil
	}
	c.ops.tokensMu.Lock()
	defer c.ops.tokensMu.Unlock()
	return c.ops.reload()
}

// AddClientToken adds a user's token to the tokens file and puts it in force.
func (c *Coordinator) AddClientToken(ctx context.Context, req *pb.AddClientTokenRequest) (*pb.AddClientTokenResponse, error) {
	if err := c.requireAdmin(ctx, "add a user token"); err != nil {
		return nil, err
	}
	path, err := c.tokensFile()
	if err != nil {
		return nil, err
	}
	c.ops.tokensMu.Lock()
	defer c.ops.tokensMu.Unlock()
	token, err := AddTokenLine(path, req.GetUser(), req.GetAdmin())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "add a token for %s: %v", req.GetUser(), err)
	}
	if err := c.ops.reload(); err != nil {
		return nil, status.Errorf(codes.Internal, "the token was written but the file does not read back: %v", err)
	}
	c.log.Info("user token added", "user", req.GetUser(), "admin", req.GetAdmin(), "fingerprint", Fingerprint(token), "by", caller(ctx))
	c.ops.audit(auditEntry{kind: "token-added", who: caller(ctx), reason: fmt.Sprintf("user %s (admin %t), fingerprint %s", req.GetUser(), req.GetAdmin(), Fingerprint(token))})
	return &pb.AddClientTokenResponse{Token: &pb.ClientTokenInfo{User: req.GetUser(), Admin: req.GetAdmin(), Fingerprint: Fingerprint(token), Token: token}}, nil
}

// ListClientTokens lists the tokens in force by user, with fingerprints only.
func (c *Coordinator) ListClientTokens(ctx context.Context, _ *pb.ListClientTokensRequest) (*pb.ListClientTokensResponse, error) {
	if err := c.requireAdmin(ctx, "list user tokens"); err != nil {
		return nil, err
	}
	t := c.clientTokens()
	if t == nil {
		return nil, status.Error(codes.FailedPrecondition, "client authentication is off: the coordinator has no user tokens (start it with --client-tokens FILE)")
	}
	out := &pb.ListClientTokensResponse{}
	for tok, u := range t {
		out.Tokens = append(out.Tokens, &pb.ClientTokenInfo{User: u.Name, Admin: u.Admin, Fingerprint: Fingerprint(tok)})
	}
	sort.Slice(out.Tokens, func(i, j int) bool {
		a, b := out.Tokens[i], out.Tokens[j]
		return a.User < b.User || a.User == b.User && a.Fingerprint < b.Fingerprint
	})
	return out, nil
}

// RevokeClientToken removes a user's tokens from the tokens file and from force.
func (c *Coordinator) RevokeClientToken(ctx context.Context, req *pb.RevokeClientTokenRequest) (*pb.RevokeClientTokenResponse, error) {
	if err := c.requireAdmin(ctx, "revoke a user token"); err != nil {
		return nil, err
	}
	path, err := c.tokensFile()
	if err != nil {
		return nil, err
	}
	c.ops.tokensMu.Lock()
	defer c.ops.tokensMu.Unlock()
	n, err := RevokeTokenLines(path, req.GetUser(), req.GetFingerprint())
	if err != nil {
		code := codes.FailedPrecondition
		if strings.HasPrefix(err.Error(), "no token") || strings.Contains(err.Error(), "has no token") {
			code = codes.NotFound
		}
		return nil, status.Errorf(code, "revoke: %v", err)
	}
	if err := c.ops.reload(); err != nil {
		return nil, status.Errorf(codes.Internal, "the file was written but does not read back: %v", err)
	}
	c.log.Info("user token revoked", "user", req.GetUser(), "count", n, "by", caller(ctx))
	c.ops.audit(auditEntry{kind: "token-revoked", who: caller(ctx), reason: fmt.Sprintf("user %s: %d token(s)", req.GetUser(), n)})
	return &pb.RevokeClientTokenResponse{Revoked: uint32(n)}, nil
}

// Healthy answers nil while the coordinator's database answers (systemd's watchdog
// probe).
func (c *Coordinator) Healthy(ctx context.Context) error {
	return c.db.PingContext(ctx)
}
