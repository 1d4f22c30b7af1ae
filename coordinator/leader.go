package coordinator

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Leadership (PostgreSQL only; on SQLite the state directory's flock keeps one
// coordinator per database and it is always active).
//
// Several coordinators may share one PostgreSQL: one is active, the others stand by.
// The active one holds two things:
//
//   - a session advisory lock (leaderLockKey) on a connection of its own, which decides
//     who may try to take the lead: it is released by PostgreSQL as soon as the
//     session ends (a killed process, a terminated backend);
//   - the fencing term in the coordinator_leader row: taking the lead increments it
//     (in a transaction that waits for the old leader's write transactions to end, see
//     fence), and every write transaction of the active coordinator reads the row under
//     FOR KEY SHARE and rolls back unless the term is still its own.
//
// The active coordinator renews renewed_at (PostgreSQL's clock, so that hosts' clocks
// do not matter) every LeaderRenew; a standby holding the lock takes the lead only once
// renewed_at is older than LeaderLease, since a leader whose lock session is gone may
// still have a write connection open until it notices; a coordinator restarted on the
// state directory of the last leader (same host, same directory: the directory's lock
// says that process is dead) takes it at once. A leader whose renewal fails, or
// whose write transaction finds another term, stands down at once: new requests and
// Connects get Unavailable naming the active coordinator, pending ones fail with it,
// supervisor sessions and client streams are ended with it, and the state loop and the
// event writer write nothing more. The term is stored on each event and lease row it
// writes (column term), so that a test can tell who wrote what.

// leaderLockKey is the advisory lock deciding which coordinator may take the lead.
const leaderLockKey = int64(0x626f61726401)

// Defaults of Options.LeaderRenew and Options.LeaderLease.
const (
	DefaultLeaderRenew = time.Second
	DefaultLeaderLease = 3 * time.Second
)

// errNotLeader fails a write transaction whose term is no longer the leader row's.
var errNotLeader = errors.New("this coordinator is no longer the active one (another took the lead)")

// pgNowNS is PostgreSQL's clock in Unix nanoseconds.
const pgNowNS = `(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000000)::BIGINT`

// leadership is a coordinator's part in the election (nil on SQLite).
type leadership struct {
	c                 *Coordinator
	db                *sql.DB // the lock's pool: no idle connection, so that closing one ends its session
	holder, advertise string
	self              string // the holder's first part: host and state directory
	renew, lease      time.Duration
	lost              chan int64 // terms that a write transaction found taken
	done              chan struct{}
	// first is the lock's connection when New took the lead itself (firstTerm).
	first     *sql.Conn
	firstTerm int64

	mu         sync.Mutex
	term       int64 // > 0 while active
	cancel     context.CancelCauseFunc
	activeCtx  context.Context // done when this active period ends
	activeAddr string          // the active coordinator's advertised address, as last read
}

func newLeadership(c *Coordinator, driver, dsn string) (*leadership, error) {
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("open the leadership connection: %w", err)
	}
	db.SetMaxIdleConns(0)
	db.SetMaxOpenConns(2)
	host, _ := os.Hostname()
	dir, err := filepath.Abs(c.opts.StateDir)
	if err != nil {
		dir = c.opts.StateDir
	}
	// The holder names this host and state directory: a coordinator that finds the
	// lead held by its own state directory's previous process knows that process is
	// dead (it holds the directory's lock, lock.go), and need not wait for its lease.
	self := host + ":" + dir
	renew, lease := c.opts.LeaderRenew, c.opts.LeaderLease
	if renew <= 0 {
		renew = DefaultLeaderRenew
	}
	if lease <= 0 {
		lease = DefaultLeaderLease
	}
	lease = max(lease, 2*renew)
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(errStandbyCause)
	return &leadership{c: c, db: db, self: self, holder: fmt.Sprintf("%s %d.%d", self, os.Getpid(), time.Now().UnixNano()),
		advertise: c.opts.Advertise, renew: renew, lease: lease, lost: make(chan int64, 1), done: make(chan struct{}),
		activeCtx: ctx, cancel: cancel}, nil
}

// errStandbyCause is the cause of an active period's context once it ended.
var errStandbyCause = errors.New("this coordinator stood down")

// currentTerm reports the coordinator's term and whether it is active. On SQLite it is
// always active, with term 0.
func (c *Coordinator) currentTerm() (int64, bool) {
	l := c.lead
	if l == nil {
		return 0, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term, l.term > 0
}

// activePeriod returns a context done when the current active period ends (done at
// once on a standby), and whether the coordinator is active.
func (c *Coordinator) activePeriod() (context.Context, bool) {
	l := c.lead
	if l == nil {
		return context.Background(), true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.activeCtx, l.term > 0
}

// Role describes the coordinator's part: active (and its term), or standing by (and
// the advertised address of the active coordinator, "" when unknown).
type Role struct {
	Active     bool
	Term       int64
	ActiveAddr string
	Since      time.Time
}

// Role reports whether the coordinator is the active one. A coordinator on SQLite is
// always active.
func (c *Coordinator) Role() Role {
	l := c.lead
	if l == nil {
		return Role{Active: true, ActiveAddr: c.opts.Advertise}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return Role{Active: l.term > 0, Term: l.term, ActiveAddr: l.activeAddr}
}

// standbyError is what a standby answers: Unavailable, naming the active coordinator.
func (c *Coordinator) standbyError() error {
	addr := c.Role().ActiveAddr
	if addr == "" {
		return status.Error(codes.Unavailable, "this coordinator is a standby and no coordinator is active right now: retry in a few seconds (or with another coordinator's address)")
	}
	return status.Errorf(codes.Unavailable, "this coordinator is a standby: the active coordinator is %s, use that address (or give every coordinator's address, comma-separated)", addr)
}

// fence checks, inside a write transaction, that term is still the leader row's; the
// row stays locked (FOR KEY SHARE) until the transaction ends, so that a coordinator
// taking the lead (SELECT ... FOR UPDATE) waits for it. A transaction that finds another
// term makes the coordinator stand down.
func (c *Coordinator) fence(ctx context.Context, tx *sql.Tx, term int64) error {
	if c.lead == nil {
		return nil
	}
	var got int64
	if err := tx.QueryRowContext(ctx, `SELECT term FROM coordinator_leader WHERE id = 1 FOR KEY SHARE`).Scan(&got); err != nil {
		return fmt.Errorf("check the leader term: %w", err)
	}
	if got != term {
		select {
		case c.lead.lost <- term:
		default:
		}
		return errNotLeader
	}
	return nil
}

// execFenced runs one write outside the state loop (lease holds) in a fenced
// transaction.
func (c *Coordinator) execFenced(ctx context.Context, query string, args ...any) error {
	term, ok := c.currentTerm()
	if !ok {
		return c.standbyError()
	}
	if c.lead == nil {
		_, err := c.db.ExecContext(ctx, query, args...)
		return err
	}
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := c.fence(ctx, tx, term); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, query, args...); err != nil {
		return err
	}
	return tx.Commit()
}

// dbConnLost reports whether err says the database connection was lost (the request
// may be retried): PostgreSQL's operator intervention (57P..) and connection (08...)
// classes, a connection the driver gave up, a network error.
func dbConnLost(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "57P") || strings.HasPrefix(pgErr.Code, "08")
	}
	var netErr net.Error
	return errors.Is(err, driver.ErrBadConn) || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &netErr) || pgconn.SafeToRetry(err)
}

// run takes part in the election until the coordinator closes.
func (l *leadership) run() {
	defer close(l.done)
	defer l.db.Close()
	for {
		conn, term := l.first, l.firstTerm
		l.first = nil
		if conn == nil {
			conn, term = l.acquire()
		}
		if conn == nil {
			return
		}
		l.hold(conn, term)
		_ = conn.Close() // ends the session: the advisory lock goes with it
	}
}

// wait waits d or until the coordinator closes (false).
func (l *leadership) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.c.done:
		return false
	case <-t.C:
		return true
	}
}

// acquire stands by until this coordinator holds the lock and a new term; nil when
// the coordinator closed.
func (l *leadership) acquire() (*sql.Conn, int64) {
	poll := min(l.renew/2, 500*time.Millisecond)
	logged := ""
	standby := false
	for {
		select {
		case <-l.c.done:
			return nil, 0
		default:
		}
		conn, err := l.tryLock()
		if err != nil && err.Error() != logged {
			l.c.log.Warn("leadership: cannot reach the database; standing by", "error", err)
			logged = err.Error()
		}
		if conn != nil {
			for {
				term, err := l.take(conn)
				if err != nil {
					l.c.log.Warn("leadership: taking the lead failed; standing by", "error", err)
					_ = conn.Close()
					break
				}
				if term > 0 {
					return conn, term
				}
				l.readActive() // the last leader's lease has not run out yet
				if !l.wait(poll) {
					_ = conn.Close()
					return nil, 0
				}
			}
		}
		l.readActive()
		if err == nil && conn == nil && !standby {
			standby = true
			l.c.log.Info("this coordinator is a standby: another one is active", "active", l.c.Role().ActiveAddr)
		}
		if !l.wait(poll) {
			return nil, 0
		}
	}
}

// tryFirst tries once to take the lead, in New: a coordinator alone on its database
// is active when New returns.
func (l *leadership) tryFirst() {
	conn, err := l.tryLock()
	if err != nil || conn == nil {
		return
	}
	term, err := l.take(conn)
	if err != nil || term == 0 {
		_ = conn.Close()
		return
	}
	l.first, l.firstTerm = conn, term
}

// tryLock opens a session and takes the advisory lock on it; nil (and no error) when
// another session holds it.
func (l *leadership) tryLock() (*sql.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.lease)
	defer cancel()
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	// The lock lasts as long as its session: have the server notice within seconds a
	// peer gone silent (a cut network sends no FIN), not after the system's two hours
	// of TCP keepalive. (Ignored over a Unix socket.)
	if _, err := conn.ExecContext(ctx, `SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; SET tcp_keepalives_count = 2`); err != nil {
		_ = conn.Close()
		return nil, err
	}
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, leaderLockKey).Scan(&got); err != nil || !got {
		_ = conn.Close()
		return nil, err
	}
	return conn, nil
}

// readActive notes the active coordinator's address for the standby's answers.
func (l *leadership) readActive() {
	ctx, cancel := context.WithTimeout(context.Background(), l.renew)
	defer cancel()
	var addr string
	var fresh bool
	err := l.db.QueryRowContext(ctx, `SELECT advertise, term > 0 AND `+pgNowNS+` - renewed_at < $1 FROM coordinator_leader WHERE id = 1`,
		l.lease.Nanoseconds()).Scan(&addr, &fresh)
	if err != nil {
		return
	}
	if !fresh {
		addr = ""
	}
	l.mu.Lock()
	l.activeAddr = addr
	l.mu.Unlock()
}

// take takes the lead if the last leader's lease has run out: it returns the new term,
// or 0 if it has not run out yet. Supervisors recorded as connected are marked
// disconnected in the same transaction (none is connected to this coordinator yet).
func (l *leadership) take(conn *sql.Conn) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	var term, renewed, now int64
	var holder string
	// FOR UPDATE waits for the write transactions of the last leader (fence).
	if err := tx.QueryRowContext(ctx, `SELECT term, holder, renewed_at, `+pgNowNS+` FROM coordinator_leader WHERE id = 1 FOR UPDATE`).
		Scan(&term, &holder, &renewed, &now); err != nil {
		return 0, fmt.Errorf("read the leader row: %w", err)
	}
	if term > 0 && now-renewed < l.lease.Nanoseconds() && !l.predecessor(holder) {
		return 0, nil
	}
	if _, err := tx.ExecContext(ctx, `UPDATE coordinator_leader SET term = $1, holder = $2, advertise = $3, renewed_at = $4 WHERE id = 1`,
		term+1, l.holder, l.advertise, now); err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE supervisors SET connected = $1, last_contact = $2 WHERE connected = $3`,
		false, l.c.now().UnixNano(), true); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	l.c.log.Info("this coordinator is now the active one", "term", term+1, "previous", holder,
		"previous_renewed_ago", time.Duration(now-renewed).Round(time.Millisecond).String())
	ctxA, cancelA := context.WithCancelCause(context.Background())
	l.mu.Lock()
	l.term, l.activeCtx, l.cancel, l.activeAddr = term+1, ctxA, cancelA, l.advertise
	l.mu.Unlock()
	l.c.activated()
	return term + 1, nil
}

// predecessor reports whether a leader row's holder is an earlier process of this
// coordinator's host and state directory (so dead: this one holds the directory's lock).
func (l *leadership) predecessor(holder string) bool {
	i := strings.LastIndexByte(holder, ' ')
	return i > 0 && holder[:i] == l.self && holder != l.holder
}

// hold renews the lead until it is lost or the coordinator closes.
func (l *leadership) hold(conn *sql.Conn, term int64) {
	t := time.NewTicker(l.renew)
	defer t.Stop()
	for {
		select {
		case <-l.c.done:
			// Hand the lead over at once once nothing of this coordinator writes any
			// more: a standby need not wait for the lease to run out.
			<-l.c.loopDone
			<-l.c.store.done
			l.standDown(term, "the coordinator is closing")
			ctx, cancel := context.WithTimeout(context.Background(), l.renew)
			_, _ = conn.ExecContext(ctx, `UPDATE coordinator_leader SET renewed_at = 0 WHERE id = 1 AND term = $1`, term)
			cancel()
			return
		case lost := <-l.lost:
			if lost == term {
				l.standDown(term, "a write found another coordinator's term")
				return
			}
			continue
		case <-t.C:
		}
		// Bounded so that a leader cut off notices before the lease runs out.
		ctx, cancel := context.WithTimeout(context.Background(), (l.lease-l.renew)/2)
		res, err := conn.ExecContext(ctx, `UPDATE coordinator_leader SET renewed_at = `+pgNowNS+` WHERE id = 1 AND term = $1`, term)
		cancel()
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		switch {
		case err != nil:
			l.standDown(term, "the leadership connection failed: "+err.Error())
			return
		case n != 1:
			l.standDown(term, "another coordinator took the lead")
			return
		}
	}
}

// standDown makes the coordinator a standby at once.
func (l *leadership) standDown(term int64, reason string) {
	l.mu.Lock()
	if l.term != term {
		l.mu.Unlock()
		return
	}
	l.term = 0
	l.activeAddr = ""
	l.cancel(errStandbyCause)
	l.mu.Unlock()
	l.c.log.Warn("this coordinator is no longer the active one: standing by", "term", term, "reason", reason)
	l.c.stoodDown()
}
