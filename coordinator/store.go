package coordinator

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"strings"
	"sync"
	"sync/atomic"
)

// Lease states in the leases table.
const (
	stateQueued   = "queued"   // waiting for a free matching board
	stateAssigned = "assigned" // StartJob sent, not READY yet
	stateActive   = "active"   // READY was reported
	stateEnded    = "ended"    // DONE, FAILED or cancelled
)

// leaseRow is one row of the leases table.
type leaseRow struct {
	ID, Selector, WantBoard, Board, SupervisorID, Client     string
	TokenHash                                                string // jobs.TokenHash of the token; the token itself is never stored
	DurationNS, ExtraNS                                      int64
	State                                                    string
	Phase, ExporterStatus                                    int32
	StatusMessage                                            string
	CreatedAt, AssignedAt, BeginsAt, EndsAt, EndedAt, StopAt int64
	StopReason                                               string
	QueuePos                                                 int64
	// Params are the job parameters the client asked for.
	Params map[string]string
	// Offers are the supervisors and boards the lease was given to ("supervisor/board",
	// newest last): a supervisor may adopt a queued lease only where it was offered it.
	Offers []string
	// Endpoint is the assigned board's client endpoint (joined, not a column of leases).
	Endpoint string
	// Token is the plain token, known only to the request that created the lease (it is
	// returned once, then forgotten).
	Token string
	// Image is the image the lease boots (nil: none). It is kept in lease_images
	// (images.go) and read with the live leases, not with every lease.
	Image *pb.ImageSpecification
}

// maxOffers bounds the offers remembered per lease.
const maxOffers = 8

// offered reports whether the lease was offered to sup for board.
func (l *leaseRow) offered(sup, board string) bool {
	for _, o := range l.Offers {
		if o == sup+"/"+board {
			return true
		}
	}
	return false
}

const leaseCols = `l.id, l.selector, l.want_board, l.board, l.supervisor_id, l.client, l.token_hash,
	l.duration_ns, l.extra_ns, l.state, l.phase, l.exporter_status, l.status_message,
	l.created_at, l.assigned_at, l.begins_at, l.ends_at, l.ended_at, l.stop_at, l.stop_reason,
	l.queue_pos, l.params, l.offers, COALESCE(b.endpoint, '')`

const leaseFrom = ` FROM leases l LEFT JOIN boards b ON b.name = l.board AND b.supervisor_id = l.supervisor_id `

type scanner interface{ Scan(dest ...any) error }

func scanLease(s scanner) (*leaseRow, error) {
	var l leaseRow
	var params, offers string
	err := s.Scan(&l.ID, &l.Selector, &l.WantBoard, &l.Board, &l.SupervisorID, &l.Client, &l.TokenHash,
		&l.DurationNS, &l.ExtraNS, &l.State, &l.Phase, &l.ExporterStatus, &l.StatusMessage,
		&l.CreatedAt, &l.AssignedAt, &l.BeginsAt, &l.EndsAt, &l.EndedAt, &l.StopAt, &l.StopReason,
		&l.QueuePos, &params, &offers, &l.Endpoint)
	if err != nil {
		return nil, err
	}
	if params != "" && params != "{}" {
		if err := json.Unmarshal([]byte(params), &l.Params); err != nil {
			return nil, fmt.Errorf("lease %s: bad parameters in the database: %w", l.ID, err)
		}
	}
	if offers != "" {
		l.Offers = strings.Split(offers, ",")
	}
	return &l, nil
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// getLease reads one lease; nil, nil when there is none.
func getLease(ctx context.Context, q querier, id string) (*leaseRow, error) {
	l, err := scanLease(q.QueryRowContext(ctx, `SELECT `+leaseCols+leaseFrom+`WHERE l.id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return l, err
}

// queryLeases reads the leases matching a WHERE clause (on alias l), in queue order.
func queryLeases(ctx context.Context, q querier, where string, args ...any) ([]*leaseRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+leaseCols+leaseFrom+where+` ORDER BY l.queue_pos`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*leaseRow
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// insertLease writes a new lease; its QueuePos is set by the caller.
func insertLease(ctx context.Context, q querier, l *leaseRow, term int64) error {
	_, err := q.ExecContext(ctx, insertLeaseSQL, term,
		l.ID, l.Selector, l.WantBoard, l.Board, l.SupervisorID, l.Client, l.TokenHash,
		l.DurationNS, l.ExtraNS, l.State, l.Phase, l.ExporterStatus, l.StatusMessage, l.CreatedAt, l.AssignedAt,
		l.BeginsAt, l.EndsAt, l.EndedAt, l.StopAt, l.StopReason, l.QueuePos, labelsJSON(l.Params), strings.Join(l.Offers, ","))
	return err
}

// boardRow is one row of the boards table, with its supervisor's connection state.
type boardRow struct {
	Name, SupervisorID string
	Labels             map[string]string
	Status, Health     int32
	Maintenance        bool
	MaintenanceReason  string
	CurrentJob         string
	Endpoint           string
	HoldUntil          int64
	LastLeaseAt        int64
	// From supervisors:
	Connected   bool
	LastContact int64
}

const boardCols = `b.name, b.supervisor_id, b.labels, b.status, b.health, b.maintenance, b.maintenance_reason,
	b.current_job, b.endpoint, b.hold_until, b.last_lease_at, COALESCE(s.connected, FALSE), COALESCE(s.last_contact, 0)`

const boardFrom = ` FROM boards b LEFT JOIN supervisors s ON s.id = b.supervisor_id `

func scanBoard(s scanner) (*boardRow, error) {
	var b boardRow
	var labels string
	if err := s.Scan(&b.Name, &b.SupervisorID, &labels, &b.Status, &b.Health, &b.Maintenance, &b.MaintenanceReason,
		&b.CurrentJob, &b.Endpoint, &b.HoldUntil, &b.LastLeaseAt, &b.Connected, &b.LastContact); err != nil {
		return nil, err
	}
	b.Labels = map[string]string{}
	if labels != "" {
		if err := json.Unmarshal([]byte(labels), &b.Labels); err != nil {
			return nil, fmt.Errorf("board %s: bad labels in the database: %w", b.Name, err)
		}
	}
	return &b, nil
}

// queryBoards reads the boards matching a WHERE clause (on aliases b and s), by name,
// adding the rows read to *count (a cost the tests watch).
func queryBoards(ctx context.Context, q querier, count *atomic.Int64, where string, args ...any) ([]*boardRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+boardCols+boardFrom+where+` ORDER BY b.name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*boardRow
	for rows.Next() {
		b, err := scanBoard(rows)
		if err != nil {
			return nil, err
		}
		count.Add(1)
		out = append(out, b)
	}
	return out, rows.Err()
}

func getBoard(ctx context.Context, q querier, count *atomic.Int64, name string) (*boardRow, error) {
	bs, err := queryBoards(ctx, q, count, `WHERE b.name = $1`, name)
	if err != nil || len(bs) == 0 {
		return nil, err
	}
	return bs[0], nil
}

// saveBoard writes every mutable column of a board back (its supervisor's columns are
// not the board's).
func saveBoard(ctx context.Context, q querier, b *boardRow) error {
	_, err := q.ExecContext(ctx, saveBoardSQL,
		b.Name, b.SupervisorID, labelsJSON(b.Labels), b.Status, b.Health, b.Maintenance, b.MaintenanceReason,
		b.CurrentJob, b.Endpoint, b.HoldUntil, b.LastLeaseAt)
	return err
}

func labelsJSON(labels map[string]string) string {
	if labels == nil {
		labels = map[string]string{}
	}
	b, _ := json.Marshal(labels) // a map[string]string always marshals
	return string(b)
}

// busyBoards returns, per board name, the unended lease assigned to it.
func busyBoards(ctx context.Context, q querier) (map[string]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT board, id FROM leases WHERE state IN ($1, $2) ORDER BY queue_pos`, stateAssigned, stateActive)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var b, id string
		if err := rows.Scan(&b, &id); err != nil {
			return nil, err
		}
		if _, ok := out[b]; !ok {
			out[b] = id
		}
	}
	return out, rows.Err()
}

// isSQLite reports whether the driver name is one of SQLite's.
func isSQLite(driver string) bool { return strings.Contains(strings.ToLower(driver), "sqlite") }

// stmtCache keeps the writer's prepared statements, prepared once at start (the writer
// pool has one connection, busy inside every transaction, so they cannot be prepared
// later): SQLite parses a statement again on every Exec otherwise (pgx caches its own).
type stmtCache struct {
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

// prepare prepares the hot statements of the state loop on db.
func (s *stmtCache) prepare(ctx context.Context, db *sql.DB, more ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range append([]string{insertLeaseSQL, saveBoardSQL}, more...) {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		s.stmts[q] = st
	}
	return nil
}

func (s *stmtCache) get(query string) *sql.Stmt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stmts[query]
}

func (s *stmtCache) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.stmts {
		_ = st.Close()
	}
	s.stmts = nil
}

// cachedTx runs a writer transaction's fixed statements from the cache.
type cachedTx struct {
	*sql.Tx
	cache *stmtCache
}

func (t cachedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := t.cache.get(query); st != nil {
		return t.Tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, query, args...)
}

// The state loop's hot statements (prepared once: stmtCache).
const (
	insertLeaseSQL = `INSERT INTO leases (id, selector, want_board, board, supervisor_id, client, token_hash,
		duration_ns, extra_ns, state, phase, exporter_status, status_message, created_at, assigned_at, begins_at,
		ends_at, ended_at, stop_at, stop_reason, queue_pos, params, offers, term)
		VALUES ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $1)`
	saveBoardSQL = `INSERT INTO boards (name, supervisor_id, labels, status, health, maintenance,
		maintenance_reason, current_job, endpoint, hold_until, last_lease_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
		ON CONFLICT (name) DO UPDATE SET supervisor_id = excluded.supervisor_id, labels = excluded.labels,
			status = excluded.status, health = excluded.health, maintenance = excluded.maintenance,
			maintenance_reason = excluded.maintenance_reason, current_job = excluded.current_job,
			endpoint = excluded.endpoint, hold_until = excluded.hold_until, last_lease_at = excluded.last_lease_at`
)

// upsertLeases writes leases (all columns) in one statement.
func upsertLeases(ctx context.Context, tx *sql.Tx, ls []*leaseRow, term int64) error {
	const cols = 24
	var q strings.Builder
	q.WriteString(`INSERT INTO leases (id, selector, want_board, board, supervisor_id, client, token_hash,
		duration_ns, extra_ns, state, phase, exporter_status, status_message, created_at, assigned_at, begins_at,
		ends_at, ended_at, stop_at, stop_reason, queue_pos, params, offers, term) VALUES `)
	args := make([]any, 0, cols*len(ls))
	for i, l := range ls {
		if i > 0 {
			q.WriteString(", ")
		}
		placeholders(&q, len(args), cols)
		args = append(args, l.ID, l.Selector, l.WantBoard, l.Board, l.SupervisorID, l.Client, l.TokenHash,
			l.DurationNS, l.ExtraNS, l.State, l.Phase, l.ExporterStatus, l.StatusMessage, l.CreatedAt, l.AssignedAt,
			l.BeginsAt, l.EndsAt, l.EndedAt, l.StopAt, l.StopReason, l.QueuePos, labelsJSON(l.Params), strings.Join(l.Offers, ","), term)
	}
	q.WriteString(` ON CONFLICT (id) DO UPDATE SET board = excluded.board, supervisor_id = excluded.supervisor_id,
		extra_ns = excluded.extra_ns, state = excluded.state, phase = excluded.phase, exporter_status = excluded.exporter_status,
		status_message = excluded.status_message, assigned_at = excluded.assigned_at, begins_at = excluded.begins_at,
		ends_at = excluded.ends_at, ended_at = excluded.ended_at, stop_at = excluded.stop_at, stop_reason = excluded.stop_reason,
		offers = excluded.offers, term = excluded.term`)
	_, err := tx.ExecContext(ctx, q.String(), args...)
	return err
}

// upsertBoards writes boards (all their own columns) in one statement.
func upsertBoards(ctx context.Context, tx *sql.Tx, bs []*boardRow) error {
	const cols = 11
	var q strings.Builder
	q.WriteString(`INSERT INTO boards (name, supervisor_id, labels, status, health, maintenance,
		maintenance_reason, current_job, endpoint, hold_until, last_lease_at) VALUES `)
	args := make([]any, 0, cols*len(bs))
	for i, b := range bs {
		if i > 0 {
			q.WriteString(", ")
		}
		placeholders(&q, len(args), cols)
		args = append(args, b.Name, b.SupervisorID, labelsJSON(b.Labels), b.Status, b.Health, b.Maintenance, b.MaintenanceReason,
			b.CurrentJob, b.Endpoint, b.HoldUntil, b.LastLeaseAt)
	}
	q.WriteString(` ON CONFLICT (name) DO UPDATE SET supervisor_id = excluded.supervisor_id, labels = excluded.labels,
		status = excluded.status, health = excluded.health, maintenance = excluded.maintenance,
		maintenance_reason = excluded.maintenance_reason, current_job = excluded.current_job,
		endpoint = excluded.endpoint, hold_until = excluded.hold_until, last_lease_at = excluded.last_lease_at`)
	_, err := tx.ExecContext(ctx, q.String(), args...)
	return err
}

// placeholders writes "($n+1, ..., $n+k)".
func placeholders(q *strings.Builder, n, k int) {
	q.WriteByte('(')
	for i := 1; i <= k; i++ {
		if i > 1 {
			q.WriteString(", ")
		}
		fmt.Fprintf(q, "$%d", n+i)
	}
	q.WriteByte(')')
}
