package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestSQLitePortableSQL checks the SQL features the store relies on, as modernc.org/sqlite
// runs them: $n placeholders (reordered and repeated, as PostgreSQL allows), BOOLEAN
// columns, ON CONFLICT upserts and DO NOTHING with RowsAffected.
func TestSQLitePortableSQL(t *testing.T) {
	if onPostgres() {
		t.Skip("SQLite's dialect (the suite runs on PostgreSQL)")
	}
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "x.db")))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := migrate(ctx, db, true); err != nil {
		t.Fatal(err)
	}
	if _, err := migrate(ctx, db, true); err != nil { // idempotent
		t.Fatalf("second migrate: %v", err)
	}
	var mode string
	if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode %q, %v", mode, err)
	}
	exec := func(q string, args ...any) sql.Result {
		t.Helper()
		r, err := db.Exec(q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return r
	}
	exec(`INSERT INTO supervisors (id, last_seq, connected, last_contact) VALUES ($2, $1, $3, $1)`, int64(7), "s1", true)
	exec(`INSERT INTO supervisors (id, last_seq, connected, last_contact) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq`, "s1", int64(9), false, int64(0))
	var seq, contact int64
	var connected bool
	if err := db.QueryRow(`SELECT last_seq, connected, last_contact FROM supervisors WHERE id = $1 AND connected = $2`, "s1", true).
		Scan(&seq, &connected, &contact); err != nil || seq != 9 || !connected || contact != 7 {
		t.Fatalf("got %d %v %d, %v", seq, connected, contact, err)
	}
	ins := `INSERT INTO events (supervisor_id, seq, at_ns, kind, payload) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (supervisor_id, seq) DO NOTHING`
	if n, _ := exec(ins, "s1", int64(1), int64(0), "k", "{}").RowsAffected(); n != 1 {
		t.Fatalf("first insert: %d rows", n)
	}
	if n, _ := exec(ins, "s1", int64(1), int64(0), "k", "{}").RowsAffected(); n != 0 {
		t.Fatalf("duplicate insert: %d rows", n)
	}
	exec(`UPDATE supervisors SET last_seq = CASE WHEN last_seq < $2 THEN $2 ELSE last_seq END WHERE id = $1`, "s1", int64(5))
	if err := db.QueryRow(`SELECT last_seq FROM supervisors WHERE id = $1`, "s1").Scan(&seq); err != nil || seq != 9 {
		t.Fatalf("last_seq %d, %v", seq, err)
	}
	// A newer schema is refused.
	exec(`UPDATE schema_version SET version = $1`, int64(schemaVersion+1))
	if _, err := migrate(ctx, db, true); err == nil {
		t.Fatal("a newer schema was accepted")
	}
}

// TestUpdateIsAllOrNothing checks that a failed state change leaves no trace and sends
// nothing.
func TestUpdateIsAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	opts := Options{StateDir: dir, Logger: hclog.NewNullLogger()}
	testStore(t, dir, &opts)
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range []string{"coordinator.db", "coordinator.db-wal", "coordinator.lock"} {
		if onPostgres() && name != "coordinator.lock" {
			continue
		}
		// Only the coordinator's user reads its files.
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, %v", name, fi.Mode(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	boom := errors.New("boom")
	err = c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		l := &leaseRow{ID: "L", Token: "t", DurationNS: int64(time.Minute), State: stateQueued, Phase: 1, CreatedAt: 1}
		if err := insertLease(ctx, tx, l, 0); err != nil {
			return err
		}
		c.live[l.ID] = l // in memory too: rebuilt from the store after the failure
		fx.stopJob("sup", "L", "x")
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("update: %v", err)
	}
	if l, err := getLease(ctx, c.db, "L"); l != nil || err != nil {
		t.Fatalf("half a lease survived a failed change: %v, %v", l, err)
	}
	c.mustMatchStore(t)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.do(ctx, func(context.Context, *sql.Tx, *effects) error { return nil }); !errors.Is(err, errClosed) {
		t.Fatalf("update after Close: %v", err)
	}
}
