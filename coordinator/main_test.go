package coordinator

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/boardvisor/boardvisor/coordinator/pgtest"
)

// The suite runs on SQLite, and on PostgreSQL with BOARDVISOR_TEST_DB=postgres (make
// test runs both): each test directory then gets a fresh database of a private server
// this process starts (pgtest).
var (
	pgServer *pgtest.Server
	pgMu     sync.Mutex
	pgByDir  = map[string]string{}
)

func TestMain(m *testing.M) {
	if os.Getenv("BOARDVISOR_TEST_DB") == "postgres" {
		s, err := pgtest.Start()
		if err != nil {
			if os.Getenv("CI") == "true" {
				fmt.Fprintf(os.Stderr, "coordinator tests on PostgreSQL: %v\n", err)
				os.Exit(1)
			}
			fmt.Fprintf(os.Stderr, "coordinator tests on PostgreSQL skipped: %v\n", err)
			os.Exit(0)
		}
		pgServer = s
		code := m.Run()
		s.Stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// onPostgres reports whether the suite runs on PostgreSQL.
func onPostgres() bool { return pgServer != nil }

// testStore sets the database of a coordinator whose state directory is dir: SQLite
// in dir, or the PostgreSQL database of dir (made on first use, so that a coordinator
// restarted on dir finds its data).
func testStore(t *testing.T, dir string, opts *Options) {
	t.Helper()
	if !onPostgres() {
		return
	}
	pgMu.Lock()
	defer pgMu.Unlock()
	url := pgByDir[dir]
	if url == "" {
		var err error
		if url, err = pgServer.NewDatabase(); err != nil {
			t.Fatal(err)
		}
		pgByDir[dir] = url
	}
	opts.Driver, opts.DB = "pgx", url
}
