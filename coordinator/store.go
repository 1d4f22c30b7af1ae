package coordinator

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// schemaVersion is the version of the schema below. A database with a newer version is
// refused; older versions are migrated by the statements of the versions in between.
const schemaVersion = 1

// schema is kept to what both SQLite and PostgreSQL run: TEXT, BIGINT, INTEGER and
// BOOLEAN columns, timestamps as BIGINT Unix nanoseconds (0 = unset), JSON as TEXT, and
// $n placeholders in every query.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS schema_version (
		version BIGINT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS supervisors (
		id           TEXT PRIMARY KEY,
		last_seq     BIGINT NOT NULL DEFAULT 0,
		connected    BOOLEAN NOT NULL DEFAULT FALSE,
		last_contact BIGINT NOT NULL DEFAULT 0,
		version      TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE TABLE IF NOT EXISTS boards (
		name               TEXT PRIMARY KEY,
		supervisor_id      TEXT NOT NULL,
		labels             TEXT NOT NULL DEFAULT '{}',
		status             INTEGER NOT NULL DEFAULT 0,
		health             INTEGER NOT NULL DEFAULT 0,
		maintenance        BOOLEAN NOT NULL DEFAULT FALSE,
		maintenance_reason TEXT NOT NULL DEFAULT '',
		current_job        TEXT NOT NULL DEFAULT '',
		endpoint           TEXT NOT NULL DEFAULT '',
		hold_until         BIGINT NOT NULL DEFAULT 0,
		last_lease_at      BIGINT NOT NULL DEFAULT 0
	)`,
	`CREATE INDEX IF NOT EXISTS boards_supervisor ON boards (supervisor_id)`,
	`CREATE TABLE IF NOT EXISTS leases (
		id              TEXT PRIMARY KEY,
		selector        TEXT NOT NULL DEFAULT '',
		want_board      TEXT NOT NULL DEFAULT '',
		board           TEXT NOT NULL DEFAULT '',
		supervisor_id   TEXT NOT NULL DEFAULT '',
		client          TEXT NOT NULL DEFAULT '',
		token           TEXT NOT NULL,
		duration_ns     BIGINT NOT NULL,
		extra_ns        BIGINT NOT NULL DEFAULT 0,
		state           TEXT NOT NULL,
		phase           INTEGER NOT NULL,
		exporter_status INTEGER NOT NULL DEFAULT 0,
		status_message  TEXT NOT NULL DEFAULT '',
		created_at      BIGINT NOT NULL,
		assigned_at     BIGINT NOT NULL DEFAULT 0,
		begins_at       BIGINT NOT NULL DEFAULT 0,
		ends_at         BIGINT NOT NULL DEFAULT 0,
		ended_at        BIGINT NOT NULL DEFAULT 0,
		stop_at         BIGINT NOT NULL DEFAULT 0,
		stop_reason     TEXT NOT NULL DEFAULT '',
		queue_pos       BIGINT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS leases_state ON leases (state, queue_pos)`,
	`CREATE INDEX IF NOT EXISTS leases_board ON leases (board, state)`,
	`CREATE INDEX IF NOT EXISTS leases_supervisor ON leases (supervisor_id, state)`,
	`CREATE TABLE IF NOT EXISTS events (
		supervisor_id TEXT NOT NULL,
		seq           BIGINT NOT NULL,
		at_ns         BIGINT NOT NULL,
		job_id        TEXT NOT NULL DEFAULT '',
		board         TEXT NOT NULL DEFAULT '',
		kind          TEXT NOT NULL,
		payload       TEXT NOT NULL,
		PRIMARY KEY (supervisor_id, seq)
	)`,
	`CREATE INDEX IF NOT EXISTS events_job ON events (job_id, supervisor_id, seq)`,
	leaseImagesTable,
}

// Lease states in the leases table.
const (
	stateQueued   = "queued"   // waiting for a free matching board
	stateAssigned = "assigned" // StartJob sent, not READY yet
	stateActive   = "active"   // READY was reported
	stateEnded    = "ended"    // DONE, FAILED or cancelled
)

// migrate creates the schema (idempotent) and checks its version.
func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for _, stmt := range schema {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	var v int64
	switch err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, int64(schemaVersion)); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("read schema version: %w", err)
	case v > schemaVersion:
		return fmt.Errorf("database schema version %d is newer than this coordinator's (%d): upgrade the coordinator", v, schemaVersion)
	case v < schemaVersion:
		// No older versions exist yet; future migrations go here.
		if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = $1`, int64(schemaVersion)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// leaseRow is one row of the leases table.
type leaseRow struct {
	ID, Selector, WantBoard, Board, SupervisorID, Client, Token string
	DurationNS, ExtraNS                                         int64
	State                                                       string
	Phase, ExporterStatus                                       int32
	StatusMessage                                               string
	CreatedAt, AssignedAt, BeginsAt, EndsAt, EndedAt, StopAt    int64
	StopReason                                                  string
	QueuePos                                                    int64
	// Endpoint is the assigned board's client endpoint (joined, not a column of leases).
	Endpoint string
}

const leaseCols = `l.id, l.selector, l.want_board, l.board, l.supervisor_id, l.client, l.token,
	l.duration_ns, l.extra_ns, l.state, l.phase, l.exporter_status, l.status_message,
	l.created_at, l.assigned_at, l.begins_at, l.ends_at, l.ended_at, l.stop_at, l.stop_reason,
	l.queue_pos, COALESCE(b.endpoint, '')`

const leaseFrom = ` FROM leases l LEFT JOIN boards b ON b.name = l.board AND b.supervisor_id = l.supervisor_id `

type scanner interface{ Scan(dest ...any) error }

func scanLease(s scanner) (*leaseRow, error) {
	var l leaseRow
	err := s.Scan(&l.ID, &l.Selector, &l.WantBoard, &l.Board, &l.SupervisorID, &l.Client, &l.Token,
		&l.DurationNS, &l.ExtraNS, &l.State, &l.Phase, &l.ExporterStatus, &l.StatusMessage,
		&l.CreatedAt, &l.AssignedAt, &l.BeginsAt, &l.EndsAt, &l.EndedAt, &l.StopAt, &l.StopReason,
		&l.QueuePos, &l.Endpoint)
	if err != nil {
		return nil, err
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

// saveLease writes every mutable column of a lease back.
func saveLease(ctx context.Context, q querier, l *leaseRow) error {
	_, err := q.ExecContext(ctx, `UPDATE leases SET board = $2, supervisor_id = $3, extra_ns = $4, state = $5,
		phase = $6, exporter_status = $7, status_message = $8, assigned_at = $9, begins_at = $10, ends_at = $11,
		ended_at = $12, stop_at = $13, stop_reason = $14 WHERE id = $1`,
		l.ID, l.Board, l.SupervisorID, l.ExtraNS, l.State, l.Phase, l.ExporterStatus, l.StatusMessage,
		l.AssignedAt, l.BeginsAt, l.EndsAt, l.EndedAt, l.StopAt, l.StopReason)
	return err
}

func insertLease(ctx context.Context, q querier, l *leaseRow) error {
	if err := q.QueryRowContext(ctx, `SELECT COALESCE(MAX(queue_pos), 0) + 1 FROM leases`).Scan(&l.QueuePos); err != nil {
		return err
	}
	_, err := q.ExecContext(ctx, `INSERT INTO leases (id, selector, want_board, board, supervisor_id, client, token,
		duration_ns, extra_ns, state, phase, exporter_status, status_message, created_at, queue_pos)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		l.ID, l.Selector, l.WantBoard, l.Board, l.SupervisorID, l.Client, l.Token,
		l.DurationNS, l.ExtraNS, l.State, l.Phase, l.ExporterStatus, l.StatusMessage, l.CreatedAt, l.QueuePos)
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

// queryBoards reads the boards matching a WHERE clause (on aliases b and s), by name.
func queryBoards(ctx context.Context, q querier, where string, args ...any) ([]*boardRow, error) {
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
		out = append(out, b)
	}
	return out, rows.Err()
}

func getBoard(ctx context.Context, q querier, name string) (*boardRow, error) {
	bs, err := queryBoards(ctx, q, `WHERE b.name = $1`, name)
	if err != nil || len(bs) == 0 {
		return nil, err
	}
	return bs[0], nil
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
