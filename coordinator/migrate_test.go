package coordinator

import (
	"bytes"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// TestUpgradeFromFirstSchema opens a database made by the first release (schema 1,
// before the migration runner) holding live data: boards, a READY lease, a queued one,
// ended ones, events; copied while that coordinator was running, as a kill -9 leaves it
// (its write-ahead log still full). The upgrade keeps all of it, applies nothing twice,
// and leaves no plain lease token anywhere in the database files, only their SHA-256.
func TestUpgradeFromFirstSchema(t *testing.T) {
	dir := t.TempDir()
	old := t.TempDir()
	var db *sql.DB
	if onPostgres() {
		db = openTestDB(t, dir) // built in place: the kill -9 copy is SQLite's matter
	} else {
		var err error
		if db, err = sql.Open("sqlite", sqliteDSN(filepath.Join(old, "coordinator.db"))+"&_pragma=wal_autocheckpoint(0)"); err != nil {
			t.Fatal(err)
		}
	}
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec(`CREATE TABLE schema_version (version BIGINT NOT NULL)`)
	for _, stmt := range schemaV1 {
		exec(stmt)
	}
	exec(`INSERT INTO schema_version (version) VALUES (1)`)
	now := time.Now().UnixNano()
	exec(`INSERT INTO supervisors (id, last_seq, connected, last_contact, version) VALUES ('lab-a', 5, TRUE, $1, 'v1')`, now)
	exec(`INSERT INTO boards (name, supervisor_id, labels, status, health, current_job) VALUES ('r1', 'lab-a', '{"device":"rpi4"}', 4, 1, $1)`, "11111111-0000-0000-0000-000000000001")
	exec(`INSERT INTO boards (name, supervisor_id, labels, status, health) VALUES ('r2', 'lab-a', '{"device":"qemu"}', 2, 3)`)
	tokens := map[string]string{
		"11111111-0000-0000-0000-000000000001": "plain-token-of-the-ready-lease-0000000000000000000000000000",
		"11111111-0000-0000-0000-000000000002": "plain-token-of-the-queued-lease-000000000000000000000000000",
		"11111111-0000-0000-0000-000000000003": "plain-token-of-the-ended-lease-0000000000000000000000000000",
	}
	lease := `INSERT INTO leases (id, selector, want_board, board, supervisor_id, client, token, duration_ns, state, phase,
		created_at, assigned_at, begins_at, ends_at, ended_at, queue_pos) VALUES ($1, $2, $3, $4, $5, 'alice', $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`
	hour := int64(time.Hour)
	exec(lease, "11111111-0000-0000-0000-000000000001", "", "r1", "r1", "lab-a", tokens["11111111-0000-0000-0000-000000000001"], hour,
		stateActive, int32(pb.LeasePhase_LEASE_PHASE_READY), now, now, now, now+hour, 0, 1)
	exec(lease, "11111111-0000-0000-0000-000000000002", "device=rpi4", "", "", "", tokens["11111111-0000-0000-0000-000000000002"], hour,
		stateQueued, int32(pb.LeasePhase_LEASE_PHASE_CREATED), now, 0, 0, 0, 0, 2)
	exec(lease, "11111111-0000-0000-0000-000000000003", "", "r2", "r2", "lab-a", tokens["11111111-0000-0000-0000-000000000003"], hour,
		stateEnded, int32(pb.LeasePhase_LEASE_PHASE_DONE), now, now, now, now+hour, now, 0)
	for seq := 1; seq <= 5; seq++ {
		exec(`INSERT INTO events (supervisor_id, seq, at_ns, job_id, board, kind, payload) VALUES ('lab-a', $1, $2, '', 'r1', 'hook_log', '{}')`, seq, now)
	}
	// Many ended leases, so that the table spans pages the upgrade frees; half of them
	// only in the log.
	for i := range 400 {
		if i == 200 && !onPostgres() {
			exec(`PRAGMA wal_checkpoint(PASSIVE)`)
		}
		exec(lease, fmt.Sprintf("22222222-0000-0000-0000-%012d", i), "", "r2", "r2", "lab-a", fmt.Sprintf("plain-token-of-an-old-lease-%032d", i), hour,
			stateEnded, int32(pb.LeasePhase_LEASE_PHASE_DONE), now, now, now, now+hour, now, 10+i)
	}
	// The files as a kill -9 leaves them: the database and its log, copied while open.
	for _, name := range []string{"coordinator.db", "coordinator.db-wal"} {
		if onPostgres() {
			break
		}
		b, err := os.ReadFile(filepath.Join(old, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t, dir, Options{})
	if !bytes.Contains([]byte(e.logs.String()), []byte(`database schema migrated: versions="[2 3 4 5]"`)) {
		t.Fatalf("migrations not logged:\n%s", e.logs.String())
	}
	if g := e.get("11111111-0000-0000-0000-000000000001"); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_READY || g.GetBoard() != "r1" {
		t.Fatalf("READY lease after the upgrade: %v", g)
	}
	if g := e.get("11111111-0000-0000-0000-000000000002"); !g.GetQueued() {
		t.Fatalf("queued lease after the upgrade: %v", g)
	}
	if g := e.get("11111111-0000-0000-0000-000000000003"); g.GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE {
		t.Fatalf("ended lease after the upgrade: %v", g)
	}
	if bs := e.boards(); bs["r1"].GetCurrentLeaseId() != "11111111-0000-0000-0000-000000000001" || len(bs) != 2 {
		t.Fatalf("boards after the upgrade: %v", bs)
	}
	e.c.mustMatchStore(t)
	// The supervisor comes back: its events are not asked for again, its lease goes on,
	// and the queued lease gets r1 when it frees, with the old token's hash.
	f := e.dial("lab-a", []*pb.BoardInfo{board("r1", "device", "rpi4"), board("r2", "device", "qemu")}, supOpts{seq: 5, lastAcked: 5,
		live: []*pb.LiveJob{{JobId: "11111111-0000-0000-0000-000000000001", Board: "r1", Phase: pb.LeasePhase_LEASE_PHASE_READY}}})
	if f.welcome.GetLastSeqSeen() != 5 {
		t.Fatalf("Welcome after the upgrade: %v", f.welcome)
	}
	f.toDone("11111111-0000-0000-0000-000000000001", "r1")
	sj := f.expectStart()
	if sj.GetJobId() != "11111111-0000-0000-0000-000000000002" || sj.GetTokenSha256() != jobs.TokenHash(tokens[sj.GetJobId()]) || sj.GetToken() != "" {
		t.Fatalf("StartJob after the upgrade: %v", sj)
	}
	f.close()
	e.stop()
	if onPostgres() {
		db := openTestDB(t, dir)
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.columns WHERE table_name = 'leases' AND column_name = 'token'`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("the token column after the upgrade: %d, %v", n, err)
		}
		for id, tok := range tokens {
			var h string
			if err := db.QueryRow(`SELECT token_hash FROM leases WHERE id = $1`, id).Scan(&h); err != nil || h != jobs.TokenHash(tok) {
				t.Errorf("lease %s: token_hash %q, %v", id, h, err)
			}
		}
		return
	}
	var files []byte
	for _, name := range []string{"coordinator.db", "coordinator.db-wal", "coordinator.db-shm"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		files = append(files, b...)
	}
	for id, tok := range tokens {
		if bytes.Contains(files, []byte("plain-token-of")) {
			t.Fatalf("a plain token of schema 1 is still in the database files (lease %s)", id)
		}
		if !bytes.Contains(files, []byte(jobs.TokenHash(tok))) {
			t.Errorf("lease %s: its token's hash is not in the database files", id)
		}
	}
}
