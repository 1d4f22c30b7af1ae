package coordinator

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// inLoop runs fn in the state loop (read-only use: fn must not change anything).
func (c *Coordinator) inLoop(t *testing.T, fn func(ctx context.Context, tx *sql.Tx)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*waitTimeout) // a loaded machine, -race, 10,000 boards
	defer cancel()
	if err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, _ *effects) error {
		fn(ctx, tx)
		return nil
	}); err != nil {
		t.Fatalf("state loop: %v", err)
	}
}

// appliedSeq is the last event of sup the state loop applied.
func (c *Coordinator) appliedSeq(t *testing.T, sup string) (n uint64) {
	c.inLoop(t, func(context.Context, *sql.Tx) { n = c.applied[sup] })
	return n
}

// isConnected reports whether the state loop holds a session for sup.
func (c *Coordinator) isConnected(t *testing.T, sup string) (ok bool) {
	c.inLoop(t, func(context.Context, *sql.Tx) { ok = c.sessions[sup] != nil })
	return ok
}

// mustMatchStore fails the test if the in-memory index differs from the store.
func (c *Coordinator) mustMatchStore(t *testing.T) {
	t.Helper()
	var err error
	c.inLoop(t, func(ctx context.Context, tx *sql.Tx) {
		// The step's writes so far reach the store first (it writes them at its end).
		if err = c.flush(ctx, tx); err == nil {
			err = c.checkIndex(ctx, tx)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// openTestDB opens the database of a coordinator whose state directory is dir.
func openTestDB(t *testing.T, dir string) *sql.DB {
	t.Helper()
	var opts Options
	testStore(t, dir, &opts)
	driver, dsn := "sqlite", sqliteDSN(filepath.Join(dir, "coordinator.db"))
	if opts.DB != "" {
		driver, dsn = opts.Driver, opts.DB
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// watchCount is the number of WatchLease streams open.
func (c *Coordinator) watchCount() int {
	c.watchSlots.mu.Lock()
	defer c.watchSlots.mu.Unlock()
	return c.watchSlots.total
}
