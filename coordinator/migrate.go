package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/boardvisor/boardvisor/jobs"
)

// The schema is versioned: schema_version holds the number of the last migration
// applied, and New applies the missing ones in order, each in one transaction with the
// version bump, so that a crash leaves the database at one version or the next, never
// between. A database newer than this coordinator is refused.
//
// The runner is ours rather than goose's or golang-migrate's: migrations must run the
// same statements on SQLite and PostgreSQL (both libraries keep one file set per
// dialect), some need Go code (hashing the lease tokens of version 3), and the first
// version must adopt the schema_version table that databases made before the runner
// already have. It is the loop below.
//
// Migrations are never edited once released: a change is a new migration. SQL is kept
// to what both SQLite and PostgreSQL run: TEXT, BIGINT, INTEGER and BOOLEAN columns,
// timestamps as BIGINT Unix nanoseconds (0 = unset), JSON as TEXT, $n placeholders.

// migration is one step of the schema.
type migration struct {
	version int64
	what    string
	stmts   []string
	// run, if set, runs after stmts in the same transaction.
	run func(ctx context.Context, tx *sql.Tx) error
}

// migrations are the schema's history. schemaVersion is the last one.
var migrations = []migration{
	{version: 1, what: "initial schema", stmts: schemaV1},
	{version: 2, what: "events applied apart from their storage; queue order index", stmts: []string{
		// Version 1 applied every event in the transaction that stored it.
		`ALTER TABLE supervisors ADD COLUMN applied_seq BIGINT NOT NULL DEFAULT 0`,
		`UPDATE supervisors SET applied_seq = last_seq`,
		`CREATE INDEX IF NOT EXISTS leases_queue_pos ON leases (queue_pos)`,
	}},
	{version: 3, what: "lease tokens kept as SHA-256 only; job parameters; offers", stmts: []string{
		`ALTER TABLE leases ADD COLUMN token_hash TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE leases ADD COLUMN params TEXT NOT NULL DEFAULT '{}'`,
		`ALTER TABLE leases ADD COLUMN offers TEXT NOT NULL DEFAULT ''`,
	}, run: hashTokens},
	// Tables of image jobs, lease logs and lease holds; IF NOT EXISTS, since databases of
	// version 1 made before this runner created them at start-up.
	{version: 4, what: "lease images, lease logs, lease holds", stmts: []string{
		leaseImagesTable,
		leaseLogsTable,
		`CREATE INDEX IF NOT EXISTS lease_logs_kept ON lease_logs (pruned_at, ended_at)`,
		leaseHoldsTable,
	}},
	// The leader row (leader.go): one coordinator of several on one PostgreSQL is
	// active, under a fencing term that each of its write transactions checks; the rows
	// it writes carry the term.
	{version: 5, what: "coordinator leadership: leader row, writer's term on events and leases", stmts: []string{
		`CREATE TABLE IF NOT EXISTS coordinator_leader (
			id         INTEGER PRIMARY KEY,
			term       BIGINT NOT NULL,
			holder     TEXT NOT NULL,
			advertise  TEXT NOT NULL,
			renewed_at BIGINT NOT NULL
		)`,
		`INSERT INTO coordinator_leader (id, term, holder, advertise, renewed_at) VALUES (1, 0, '', '', 0)`,
		`ALTER TABLE events ADD COLUMN term BIGINT NOT NULL DEFAULT 0`,
		`ALTER TABLE leases ADD COLUMN term BIGINT NOT NULL DEFAULT 0`,
	}},
}

// hashTokens replaces the plain lease tokens of version 2 by their SHA-256 and drops the
// column. (On SQLite, New then vacuums the file so that no page keeps an old token.)
func hashTokens(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, token FROM leases WHERE token <> ''`)
	if err != nil {
		return err
	}
	hashes := map[string]string{}
	for rows.Next() {
		var id, token string
		if err := rows.Scan(&id, &token); err != nil {
			rows.Close()
			return err
		}
		hashes[id] = jobs.TokenHash(token)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	for id, h := range hashes {
		if _, err := tx.ExecContext(ctx, `UPDATE leases SET token_hash = $1, token = '' WHERE id = $2`, h, id); err != nil {
			return err
		}
	}
	_, err = tx.ExecContext(ctx, `ALTER TABLE leases DROP COLUMN token`)
	return err
}

// tokenMigration is the version after which no plain token is left in the database.
const tokenMigration = 3

var schemaVersion = migrations[len(migrations)-1].version

// schemaV1 is the schema of the first release (before the runner; kept as it was).
var schemaV1 = []string{
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
}

// migrate brings the schema to schemaVersion. It returns the versions it applied.
func migrate(ctx context.Context, db *sql.DB, sqlite bool) ([]int64, error) {
	if err := createVersionTable(ctx, db, sqlite); err != nil {
		return nil, fmt.Errorf("create schema_version: %w", err)
	}
	var applied []int64
	for {
		v, err := readVersion(ctx, db)
		if err != nil {
			return applied, err
		}
		if v > schemaVersion {
			return applied, fmt.Errorf("database schema version %d is newer than this coordinator's (%d): upgrade the coordinator", v, schemaVersion)
		}
		if v == schemaVersion {
			return applied, nil
		}
		m := migrations[v] // migrations[i] has version i+1
		if err := runMigration(ctx, db, v, m, sqlite); errors.Is(err, errMigratedMeanwhile) {
			continue // another coordinator applied it: read the version again
		} else if err != nil {
			return applied, fmt.Errorf("schema migration %d (%s): %w", m.version, m.what, err)
		}
		applied = append(applied, m.version)
	}
}

// migrationLock is the advisory lock coordinators migrating PostgreSQL at once take
// turns on.
const migrationLock = int64(0x626f617264)

// createVersionTable creates schema_version if needed. On PostgreSQL, under the
// migration lock: CREATE TABLE IF NOT EXISTS run at once by two sessions can fail.
func createVersionTable(ctx context.Context, db *sql.DB, sqlite bool) error {
	const create = `CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)`
	if sqlite {
		_, err := db.ExecContext(ctx, create)
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, create); err != nil {
		return err
	}
	return tx.Commit()
}

func readVersion(ctx context.Context, q querier) (int64, error) {
	var v int64
	err := q.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// errMigratedMeanwhile says that another coordinator migrated the schema while this one
// waited for the lock.
var errMigratedMeanwhile = errors.New("the schema was migrated meanwhile by another coordinator")

func runMigration(ctx context.Context, db *sql.DB, from int64, m migration, sqlite bool) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if !sqlite {
		// SQLite's transactions take the write lock at BEGIN (_txlock=immediate); on
		// PostgreSQL, coordinators migrating at once take turns on an advisory lock.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return err
		}
	}
	// Another coordinator may have migrated meanwhile: re-read under the write lock.
	if v, err := readVersion(ctx, tx); err != nil {
		return err
	} else if v != from {
		return errMigratedMeanwhile
	}
	for _, stmt := range m.stmts {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	if m.run != nil {
		if err := m.run(ctx, tx); err != nil {
			return err
		}
	}
	if from == 0 {
		_, err = tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, m.version)
	} else {
		_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = $1`, m.version)
	}
	if err != nil {
		return err
	}
	return tx.Commit()
}
