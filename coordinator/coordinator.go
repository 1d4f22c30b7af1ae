// Package coordinator is boardvisor's reference coordinator (DESIGN.md §8): it keeps the
// board inventory that supervisors announce, queues lease requests FIFO per selector,
// decides which board serves which lease, and tells the supervisors to start and stop
// jobs over the supervisor link (connector/grpc). Clients use its LeaseService.
//
// All state is in SQL through database/sql: an embedded SQLite file by default, with a
// schema and queries PostgreSQL also runs. The coordinator reconciles with each
// supervisor by level (on Hello and periodically), so events are never the only path
// to a correct state.
//
// # Two paths
//
// Work goes through two paths that never wait for each other for more than one
// transaction:
//
//   - The event path (eventpath.go) stores supervisors' events: one writer goroutine
//     takes every batch waiting, from all supervisors, and stores them in one
//     transaction; the link acknowledges a batch once it is committed. Storage takes no
//     lock of the lease state, so lease requests cannot delay it.
//   - The state path (this file) is one goroutine, the state loop, that owns the lease
//     and board state: the store's leases and boards tables and the in-memory fleet
//     index (index.go) and lease queue (queue.go). Each step of the loop is one
//     transaction holding both the events waiting to be applied (a bounded number) and
//     the requests waiting (lease requests, Hellos, timers; a bounded number), so that
//     neither a burst of events nor a burst of requests starves the other.
//
// Events are applied from the stored log, in order, exactly once: each supervisor's
// applied_seq moves in the same transaction as the state change.
package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/boardvisor/boardvisor/connector/connlimit"
	link "github.com/boardvisor/boardvisor/connector/grpc"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver (PostgreSQL)
	_ "modernc.org/sqlite"             // the "sqlite" database/sql driver
)

// Options configure a Coordinator. The zero value of each field selects its default.
type Options struct {
	// Driver is the database/sql driver name: "sqlite" (modernc.org/sqlite, the
	// default) or "pgx" (PostgreSQL, through pgx's database/sql adapter; the default
	// when DB is a postgres:// or postgresql:// URL). Both are registered by this package.
	Driver string
	// DB is the database/sql data source name. Default: the SQLite file
	// <StateDir>/coordinator.db, in WAL mode with a busy timeout.
	DB string
	// StateDir holds the default database file (default ".").
	StateDir string
	// Logger receives the coordinator's logs (default: discard). Lease tokens are never
	// logged.
	Logger hclog.Logger
	// Grace is how long a supervisor may be gone before its boards show OFFLINE
	// (default 30s). Its leases are never reassigned.
	Grace time.Duration
	// ReconcileInterval is how often the coordinator reconciles with every connected
	// supervisor (default 10s).
	ReconcileInterval time.Duration
	// TickInterval bounds how long Run sleeps between checks of its timers (default 1s;
	// Run wakes earlier for a lease that ends sooner).
	TickInterval time.Duration
	// MaxDuration bounds a lease's duration, extensions included (default 24h).
	MaxDuration time.Duration
	// MaxQueuedPerUser bounds the leases one user (by client name when client
	// authentication is off) may have waiting in the queue (default 500).
	MaxQueuedPerUser int
	// MaxWatchesPerUser bounds the WatchLease streams one user (by address when client
	// authentication is off) may have open (default 1000); MaxWatches bounds them in all
	// (default 10000).
	MaxWatchesPerUser, MaxWatches int
	// MaxUnauthenticatedPerPeer bounds the connections of one address on which no call
	// presented a valid token yet (default 64), and AuthDeadline how long such a
	// connection may stay open (default 30s). Both apply only with authentication on,
	// to listeners wrapped by Listener.
	MaxUnauthenticatedPerPeer int
	AuthDeadline              time.Duration
	// StartBound bounds the wait for READY (default 10m): a lease assigned to a board
	// that has not become READY within it is ended. It is apart from the lease's
	// duration, which counts from READY.
	StartBound time.Duration
	// RefusalHold is how long a board that refused a StartJob as busy gets no new lease
	// (default 5s).
	RefusalHold time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// TokenBytes is the number of random bytes in a lease token (default 32; the token is
	// their hex encoding).
	TokenBytes int
	// SupervisorAuth checks supervisors' tokens; nil accepts every supervisor (tests and
	// trusted networks only).
	SupervisorAuth link.Authenticator
	// Audit, if set, records every supervisor or client refused for its token.
	Audit link.Auditor
	// ClientTokens, if set, turns on client authentication: every LeaseService call needs
	// one of these tokens, the lease is recorded under its user's name, only the lease's
	// holder or an admin may release or extend it, and only an admin may change
	// maintenance. Register's server must be built with ServerOptions.
	ClientTokens ClientTokens
	// LeaseLogs configure the LeaseLog streams and the retention of ended leases' logs.
	LeaseLogs LeaseLogOptions
	// ClientTokensFile, if set, is the file ClientTokens came from: the token RPCs write
	// it, and the coordinator reloads it when it changes (operator.go).
	ClientTokensFile string
	// AttachGrace is how long an attached lease not READY yet may be without its
	// client's AttachLease stream before it is withdrawn (default DefaultAttachGrace).
	AttachGrace time.Duration
	// DetachedMaxWait bounds how long a detached lease may stay queued (default
	// DefaultDetachedMaxWait).
	DetachedMaxWait time.Duration
	// Advertise is the address clients and supervisors are told to use when this
	// coordinator is the active one of several on one PostgreSQL (leader.go): a
	// standby's refusals name the active one's. Default: none (standbys then only say
	// that they are standbys).
	Advertise string
	// LeaderRenew and LeaderLease are how often the active coordinator renews its lead
	// (default DefaultLeaderRenew) and how long a lead not renewed lasts before a
	// standby may take it (default DefaultLeaderLease, at least twice LeaderRenew).
	// PostgreSQL only.
	LeaderRenew, LeaderLease time.Duration
}

// DefaultStartBound is the default of Options.StartBound.
const DefaultStartBound = 10 * time.Minute

// Limits of one step of the state loop: how many requests and how many events waiting
// to be applied go into one transaction.
const (
	maxOpsPerStep    = 64
	maxEventsPerStep = 2048
	// stepTimeout bounds one step's transaction.
	stepTimeout = 30 * time.Second
)

// Coordinator is the coordinator: a link.Handler for supervisors and a LeaseService for
// clients. Create it with New, serve it with Register and Run, and Close it.
type Coordinator struct {
	pb.UnimplementedLeaseServiceServer

	opts Options
	db   *sql.DB // reads outside the state loop
	wdb  *sql.DB // writes: one connection, shared by the event writer and the state loop
	log  hclog.Logger
	now  func() time.Time
	link *link.Server
	logs *logHub  // LeaseLog streams, woken from the event path (leaselog.go)
	ops  *ops     // operators' and clients' holds, tokens (operator.go, attach.go)
	farm farmFeed // wakes in-process farm watchers after each change (farmwatch.go)

	// Requests to the state loop.
	reqMu    sync.Mutex
	reqs     []*op
	kick     chan struct{}
	loopDone chan struct{}
	applyQ   applyQueue

	stmts stmtCache // the writer connection's prepared statements
	// insertEvents is the writer's INSERT of insertRows events (prepared in stmts).
	insertEvents string

	// The event writer, and the SQLite checkpointer.
	store          storeQueue
	checkpointDone chan struct{}

	// State owned by the state loop: only the loop's goroutine touches it.
	fleet       *fleet
	queue       *leaseQueue
	live        map[string]*leaseRow // unended leases by ID
	timers      deadlineHeap
	applied     map[string]uint64 // per supervisor: the last event seq applied
	sessions    map[string]*link.Session
	goneLogged  map[string]bool
	freed       boardSet // boards that became free in this step: the queue is served from them
	nextPos     int64    // the next lease's queue position
	failures    int      // consecutive failed steps (back-off)
	stale       bool     // the in-memory state must be rebuilt before the next step
	dirtyL      map[*leaseRow]struct{}
	dirtyB      map[*boardEntry]struct{}
	recentEnded map[string]*leaseRow // leases ended in this step (not flushed yet)
	soonest     int64                // the earliest deadline set in this step (0: none)

	// plannedWake is when Run next wakes by itself (Unix ns).
	plannedWake atomic.Int64

	// watchers of leases; publish runs in the state loop.
	watchMu  sync.Mutex
	watchers map[string]map[*watcher]struct{}

	// Caps and refusals.
	watchSlots watchSlots
	auditLimit auditLimiter
	conns      *connlimit.Limiter

	// Costs the tests watch: index entries visited and board rows read.
	visits   atomic.Int64
	rowsRead atomic.Int64

	wake      chan struct{} // pokes Run: a lease's end time may have moved
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	runWG     sync.WaitGroup
	closed    bool // under reqMu
	lock      *stateLock

	// Leadership (leader.go): nil on SQLite.
	lead         *leadership
	stepTerm     int64       // the term of the state loop's current step (loop-owned)
	reloadWanted atomic.Bool // became active: the loop reloads its state first
	demoteWanted atomic.Bool // stood down: the loop drops its sessions and requests
}

var (
	_ link.Handler          = (*Coordinator)(nil)
	_ pb.LeaseServiceServer = (*Coordinator)(nil)
)

// errClosed is returned by operations on a closed coordinator.
var errClosed = errors.New("coordinator closed")

// New opens (and if needed creates) the coordinator's database, migrates its schema,
// loads the fleet index and the live leases from it, applies the events stored but not
// yet applied, and returns the coordinator. Supervisors recorded as connected are
// marked disconnected, with the grace period starting now.
func New(opts Options) (*Coordinator, error) {
	if opts.Driver == "" {
		opts.Driver = "sqlite"
		if isPostgresURL(opts.DB) {
			opts.Driver = "pgx"
		}
	}
	if opts.StateDir == "" {
		opts.StateDir = "."
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Grace <= 0 {
		opts.Grace = 30 * time.Second
	}
	if opts.ReconcileInterval <= 0 {
		opts.ReconcileInterval = 10 * time.Second
	}
	if opts.TickInterval <= 0 {
		opts.TickInterval = time.Second
	}
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = 24 * time.Hour
	}
	if opts.StartBound <= 0 {
		opts.StartBound = DefaultStartBound
	}
	if opts.MaxQueuedPerUser <= 0 {
		opts.MaxQueuedPerUser = DefaultMaxQueuedPerUser
	}
	if opts.MaxWatchesPerUser <= 0 {
		opts.MaxWatchesPerUser = DefaultMaxWatchesPerUser
	}
	if opts.MaxWatches <= 0 {
		opts.MaxWatches = DefaultMaxWatches
	}
	if opts.RefusalHold <= 0 {
		opts.RefusalHold = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.TokenBytes == 0 {
		opts.TokenBytes = 32
	}
	if opts.TokenBytes < 16 {
		return nil, fmt.Errorf("coordinator: TokenBytes %d is too few for a secret: use at least 16", opts.TokenBytes)
	}
	dsn := opts.DB
	if dsn == "" && !isSQLite(opts.Driver) {
		return nil, fmt.Errorf("coordinator: a DB data source name is needed for driver %q", opts.Driver)
	}
	if err := os.MkdirAll(opts.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("coordinator: state directory: %w", err)
	}
	// One coordinator per state directory (its database, its audit log).
	lock, err := lockStateDir(opts.StateDir)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			lock.release()
		}
	}()
	if dsn == "" {
		path := filepath.Join(opts.StateDir, "coordinator.db")
		// The database holds lease tokens: only its owner may read it. SQLite gives its
		// WAL and shared-memory files the database file's permissions.
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("coordinator: database file: %w", err)
		}
		_ = f.Close()
		dsn = "file:" + path
	}
	if isSQLite(opts.Driver) {
		dsn = sqliteDSN(dsn)
	}
	db, err := sql.Open(opts.Driver, dsn)
	if err != nil {
		return nil, fmt.Errorf("coordinator: open database: %w", err)
	}
	wdb := db
	checkpoints := false
	if isSQLite(opts.Driver) && strings.Contains(dsn, ":memory:") {
		db.SetMaxOpenConns(1) // every connection would be its own in-memory database
	} else {
		wdsn := dsn
		if isSQLite(opts.Driver) && !strings.Contains(dsn, "wal_autocheckpoint") {
			// The writer does not checkpoint on commit (that copies the WAL into the
			// database and fsyncs it, some tens of milliseconds now and then, in the
			// middle of a lease request): a goroutine of its own does, on a reader
			// connection, without blocking the writer.
			wdsn += "&_pragma=wal_autocheckpoint(0)"
			checkpoints = true
		}
		if wdb, err = sql.Open(opts.Driver, wdsn); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("coordinator: open database: %w", err)
		}
	}
	// One writer connection: the event writer and the state loop take turns, each
	// waiting at most for one transaction of the other.
	wdb.SetMaxOpenConns(1)
	wdb.SetMaxIdleConns(1)
	wdb.SetConnMaxLifetime(0)
	wdb.SetConnMaxIdleTime(0)
	closeDBs := func() {
		_ = db.Close()
		if wdb != db {
			_ = wdb.Close()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if applied, err := migrate(ctx, wdb, isSQLite(opts.Driver)); err != nil {
		closeDBs()
		return nil, fmt.Errorf("coordinator: database: %w", err)
	} else if len(applied) > 0 {
		opts.Logger.Info("database schema migrated", "versions", fmt.Sprint(applied), "schema_version", schemaVersion)
		if isSQLite(opts.Driver) && slices.Contains(applied, tokenMigration) && applied[0] != 1 {
			// Plain tokens of an older version may be left in free pages and in the
			// write-ahead log: rebuild the file and empty the log.
			for _, stmt := range []string{`VACUUM`, `PRAGMA wal_checkpoint(TRUNCATE)`} {
				if _, err := wdb.ExecContext(ctx, stmt); err != nil {
					closeDBs()
					return nil, fmt.Errorf("coordinator: database: scrub old lease tokens (%s): %w", stmt, err)
				}
			}
		}
	}
	c := &Coordinator{
		opts:       opts,
		db:         db,
		wdb:        wdb,
		log:        opts.Logger,
		now:        opts.Now,
		kick:       make(chan struct{}, 1),
		loopDone:   make(chan struct{}),
		sessions:   map[string]*link.Session{},
		watchers:   map[string]map[*watcher]struct{}{},
		goneLogged: map[string]bool{},
		logs:       newLogHub(opts.LeaseLogs),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	c.ops = newOps(c)
	c.store.init()
	c.insertEvents = insertEventsSQL(insertRows, isSQLite(opts.Driver))
	if err := c.stmts.prepare(ctx, wdb, c.insertEvents); err != nil {
		closeDBs()
		return nil, fmt.Errorf("coordinator: database: %w", err)
	}
	c.conns = c.newConnLimiter()
	c.link = &link.Server{Handler: c, Auth: opts.SupervisorAuth, Logger: opts.Logger.Named("link"), Audit: opts.Audit,
		Authenticated: c.authenticated}
	// No supervisor is connected to a process that just started: their grace starts
	// now. (On PostgreSQL, where several coordinators may share the database, taking
	// the lead does it: leader.go.)
	if isSQLite(opts.Driver) {
		if _, err := wdb.ExecContext(ctx, `UPDATE supervisors SET connected = $1, last_contact = $2 WHERE connected = $3`,
			false, c.now().UnixNano(), true); err != nil {
			closeDBs()
			return nil, fmt.Errorf("coordinator: database: %w", err)
		}
	}
	if !isSQLite(opts.Driver) {
		// Several coordinators may share the database: this one is active only once it
		// takes the lead (leader.go), which also marks the supervisors disconnected. It
		// tries once now; if another is active, it stands by.
		if c.lead, err = newLeadership(c, opts.Driver, dsn); err != nil {
			closeDBs()
			return nil, fmt.Errorf("coordinator: %w", err)
		}
		c.lead.tryFirst()
	}
	closeLead := func() {
		if c.lead != nil {
			if c.lead.first != nil {
				_ = c.lead.first.Close()
			}
			_ = c.lead.db.Close()
		}
	}
	began := time.Now()
	if err := c.reload(ctx); err != nil {
		closeLead()
		closeDBs()
		return nil, fmt.Errorf("coordinator: load state: %w", err)
	}
	c.reloadWanted.Store(false) // loaded after the lead was taken
	if err := c.openHolds(ctx); err != nil {
		closeLead()
		closeDBs()
		return nil, fmt.Errorf("coordinator: database: lease holds: %w", err)
	}
	c.log.Info("state loaded", "boards", len(c.fleet.byName), "live_leases", len(c.live), "queued", c.queue.n,
		"took", time.Since(began).Round(time.Millisecond).String())
	c.lock = lock
	ok = true
	go c.loop()
	go c.writer()
	if c.lead != nil {
		go c.lead.run()
	}
	c.checkpointDone = make(chan struct{})
	if checkpoints {
		go c.checkpointer()
	} else {
		close(c.checkpointDone)
	}
	return c, nil
}

// cached wraps a state loop's transaction so that its fixed statements are prepared once.
func (c *Coordinator) cached(tx *sql.Tx) cachedTx { return cachedTx{Tx: tx, cache: &c.stmts} }

// isPostgresURL reports whether a data source name is a PostgreSQL URL.
func isPostgresURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// checkpointInterval is how often the checkpointer copies SQLite's write-ahead log into
// the database file.
const checkpointInterval = 500 * time.Millisecond

// checkpointer checkpoints SQLite's write-ahead log in the background (PASSIVE: it
// never waits for the writer nor makes it wait), so that the log stays short.
func (c *Coordinator) checkpointer() {
	defer close(c.checkpointDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		_, err := c.db.ExecContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`)
		cancel()
		if err != nil && !failing {
			c.log.Warn("SQLite checkpoint failed: the write-ahead log grows until one succeeds", "error", err)
		}
		failing = err != nil
	}
}

// sqliteDSN adds WAL mode, a busy timeout and immediate write transactions to a SQLite
// DSN unless it sets them itself. Synchronous stays FULL (SQLite's default): an
// acknowledged event survives a power loss, since the supervisor then forgets it.
func sqliteDSN(dsn string) string {
	add := []string{}
	if !strings.Contains(dsn, "busy_timeout") {
		add = append(add, "_pragma=busy_timeout(10000)")
	}
	if !strings.Contains(dsn, "journal_mode") && !strings.Contains(dsn, ":memory:") {
		add = append(add, "_pragma=journal_mode(WAL)")
	}
	if !strings.Contains(dsn, "_txlock") {
		add = append(add, "_txlock=immediate")
	}
	if len(add) == 0 {
		return dsn
	}
	if !strings.HasPrefix(dsn, "file:") && !strings.Contains(dsn, "?") {
		dsn = "file:" + dsn
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + strings.Join(add, "&")
}

// Register registers the LeaseService and the supervisor link on g.
func (c *Coordinator) Register(g *ggrpc.Server) {
	pb.RegisterLeaseServiceServer(g, c)
	c.link.Register(g)
}

// Run runs the coordinator's timers until ctx is done or the coordinator is closed: lease
// expiry, periodic reconciliation with every connected supervisor, and the grace period
// of disconnected supervisors. It returns ctx's error, or nil after Close.
func (c *Coordinator) Run(ctx context.Context) error {
	c.reqMu.Lock()
	if c.closed {
		c.reqMu.Unlock()
		return nil
	}
	c.runWG.Add(2) // under reqMu, so never concurrent with Close's Wait
	c.reqMu.Unlock()
	defer c.runWG.Done()
	defer c.startRetention(ctx)() // retention.go: stopped (and waited for) before Run returns
	go func() { defer c.runWG.Done(); c.runHolds(ctx) }()
	lastReconcile := c.now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return nil
		case <-timer.C:
		case <-c.wake:
		}
		var next, got int64
		if err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
			var err error
			got, err = c.tick(ctx, tx, fx)
			return err
		}); err == nil {
			next = got // read only once the step is done (a cancelled call may still run)
		} else if ctx.Err() == nil && !errors.Is(err, errClosed) && !isStandby(err) {
			c.log.Error("lease timers", "error", err)
		}
		if now := c.now(); now.Sub(lastReconcile) >= c.opts.ReconcileInterval || now.Before(lastReconcile) {
			lastReconcile = now
			if err := c.do(ctx, c.reconcileAll); err != nil && ctx.Err() == nil && !errors.Is(err, errClosed) && !isStandby(err) {
				c.log.Error("reconciliation", "error", err)
			}
		}
		c.checkGrace(ctx)
		wait := c.opts.TickInterval
		if next > 0 {
			if d := time.Duration(next - c.now().UnixNano()); d < wait {
				wait = max(d, time.Millisecond)
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		c.plannedWake.Store(c.now().Add(wait).UnixNano())
		timer.Reset(wait)
	}
}

// Close stops Run, the state loop and the event writer, ends every WatchLease stream and
// closes the database. Stop the gRPC server first: handlers still running afterwards get
// errors.
func (c *Coordinator) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.reqMu.Lock()
		c.closed = true
		close(c.done)
		c.reqMu.Unlock()
		c.runWG.Wait()
		<-c.loopDone
		<-c.store.done
		<-c.checkpointDone
		if c.lead != nil {
			<-c.lead.done
		}
		c.stmts.close()
		err = c.db.Close()
		if c.wdb != c.db {
			err = errors.Join(err, c.wdb.Close())
		}
		c.lock.release()
	})
	return err
}

// poke wakes Run to recompute its next deadline.
func (c *Coordinator) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// op is a request to the state loop: fn runs inside one of its transactions.
type op struct {
	ctx  context.Context
	fn   func(ctx context.Context, tx *sql.Tx, fx *effects) error
	err  error
	done chan struct{}
}

// do runs fn in the state loop, inside a transaction it may share with other requests
// and events (fn's ctx is the transaction's, not the caller's), and returns once that transaction is committed (or failed) and its effects
// are sent. fn must return a gRPC status error only before it changed anything (the
// transaction goes on without it); any other error fails the whole transaction, and the
// in-memory state is rebuilt from the store. A request whose ctx is done before its turn
// does not run.
func (c *Coordinator) do(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx, fx *effects) error) error {
	o := &op{ctx: ctx, fn: fn, done: make(chan struct{})}
	c.reqMu.Lock()
	if c.closed {
		c.reqMu.Unlock()
		return errClosed
	}
	if _, active := c.currentTerm(); !active {
		c.reqMu.Unlock()
		return c.standbyError()
	}
	c.reqs = append(c.reqs, o)
	c.reqMu.Unlock()
	c.kickLoop()
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		// It will not run if its turn has not come; if it runs now, its outcome is lost
		// to the caller, as with a reply lost on the network.
		return status.FromContextError(ctx.Err()).Err()
	case <-c.loopDone:
		select {
		case <-o.done:
			return o.err
		default:
			return errClosed
		}
	}
}

func (c *Coordinator) kickLoop() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// loop is the state loop. It owns the lease and board state.
func (c *Coordinator) loop() {
	defer close(c.loopDone)
	defer c.failPending()
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		}
		for {
			select {
			case <-c.done:
				return
			default:
			}
			more, ok := c.step()
			if !ok {
				// The step failed: back off before the next (requests meanwhile fail
				// fast only if the database keeps failing).
				c.failures++
				d := min(time.Duration(1<<min(c.failures, 6))*50*time.Millisecond, 3*time.Second)
				select {
				case <-c.done:
					return
				case <-time.After(d):
				}
				continue
			}
			c.failures = 0
			if !more {
				break
			}
		}
	}
}

func (c *Coordinator) failPending() { c.failPendingWith(errClosed) }

func (c *Coordinator) failPendingWith(err error) {
	c.reqMu.Lock()
	reqs := c.reqs
	c.reqs = nil
	c.reqMu.Unlock()
	for _, o := range reqs {
		o.err = err
		close(o.done)
	}
}

// activated is called when the coordinator became the active one: the state loop
// reloads its state from the database before its next step.
func (c *Coordinator) activated() {
	c.reloadWanted.Store(true)
	c.kickLoop()
	c.poke()
}

// stoodDown is called when the coordinator stopped being the active one: the event
// writer's waiting batches fail, and the state loop drops what it held.
func (c *Coordinator) stoodDown() {
	c.failStores(c.standbyError())
	c.demoteWanted.Store(true)
	c.kickLoop()
}

// dropActiveState forgets, in the state loop, what only an active coordinator holds:
// the supervisor sessions (their streams are ended by the interceptor, clientauth.go),
// the requests and events waiting, the lease holds. The state is reloaded from the
// database when the coordinator becomes active again.
func (c *Coordinator) dropActiveState() {
	c.failPendingWith(c.standbyError())
	c.applyQ.reset()
	clear(c.sessions)
	c.stale = true
	h := c.ops.holds
	h.mu.Lock()
	clear(h.m)
	h.mu.Unlock()
}

// isStandby reports whether err is a standby's refusal.
func isStandby(err error) bool {
	return status.Code(err) == codes.Unavailable
}

// step runs one transaction of the state loop. It reports whether work was done (so
// there may be more), and false in ok when the transaction failed.
func (c *Coordinator) step() (more, ok bool) {
	if c.demoteWanted.Swap(false) {
		c.dropActiveState()
	}
	term, active := c.currentTerm()
	if !active {
		// A standby: nothing is applied nor written; requests that slipped in fail.
		c.failPendingWith(c.standbyError())
		c.applyQ.reset()
		return false, true
	}
	if c.reloadWanted.Swap(false) {
		// Became active: the state is the database's, as the last leader left it.
		c.stale = true
		if err := c.reloadHolds(); err != nil {
			c.log.Error("lease holds not loaded: will retry", "error", err)
			c.reloadWanted.Store(true)
			return true, false
		}
	}
	c.stepTerm = term
	if c.stale {
		ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
		err := c.reload(ctx)
		cancel()
		if err != nil {
			c.log.Error("reload of the state failed: will retry", "error", err)
			return true, false
		}
	}
	c.reqMu.Lock()
	n := min(len(c.reqs), maxOpsPerStep)
	reqs := c.reqs[:n:n]
	c.reqs = c.reqs[n:]
	c.reqMu.Unlock()
	batches := c.applyQ.take(maxEventsPerStep)
	if len(reqs) == 0 && len(batches) == 0 {
		return false, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), stepTimeout)
	defer cancel()
	fx := &effects{quiet: len(batches) == 0} // events make it loud; requests say (merge)
	err := func() error {
		tx, err := c.wdb.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := c.fence(ctx, tx, term); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := c.applyBatches(ctx, tx, fx, batches); err != nil {
			_ = tx.Rollback()
			return err
		}
		if err := c.assignFreed(ctx, tx, fx); err != nil {
			_ = tx.Rollback()
			return err
		}
		for _, o := range reqs {
			if err := o.ctx.Err(); err != nil {
				o.err = status.FromContextError(err).Err()
				continue
			}
			ofx := &effects{}
			err := o.fn(ctx, tx, ofx)
			if _, isStatus := status.FromError(err); err != nil && isStatus {
				o.err = err // refused before it changed anything
				continue
			}
			if err != nil {
				_ = tx.Rollback()
				return err
			}
			fx.merge(ofx)
			if err := c.assignFreed(ctx, tx, fx); err != nil {
				_ = tx.Rollback()
				return err
			}
		}
		if err := c.flush(ctx, tx); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}()
	if errors.Is(err, errNotLeader) {
		// Another coordinator took the lead: nothing of this step was written.
		c.log.Warn("state change not stored: another coordinator is active", "requests", len(reqs), "event_batches", len(batches))
		for _, o := range reqs {
			if o.err == nil {
				o.err = c.standbyError()
			}
			close(o.done)
		}
		c.stale = true
		return true, false
	}
	if err != nil {
		c.log.Error("state change not stored: rebuilding the in-memory state from the database", "error", err,
			"requests", len(reqs), "event_batches", len(batches))
		for _, o := range reqs {
			if o.err == nil {
				o.err = err
			}
			close(o.done)
		}
		rctx, rcancel := context.WithTimeout(context.Background(), stepTimeout)
		defer rcancel()
		if rerr := c.reload(rctx); rerr != nil {
			c.log.Error("reload of the state failed: will retry", "error", rerr)
			c.stale = true
		}
		return true, false
	}
	c.apply(fx)
	for _, o := range reqs {
		close(o.done)
	}
	return true, true
}

// effects are what a committed transaction must do next: messages to supervisors and
// lease changes to publish to watchers.
type effects struct {
	msgs    []outMsg
	changed map[string]*leaseRow
	order   []string
	// quiet marks a timer's transaction (tick, reconcileAll): it wakes the farm's
	// watchers only if it changed a lease (farmwatch.go).
	quiet bool
}

type outMsg struct {
	supervisor string
	start      *pb.StartJob
	stop       *pb.StopJob
	extend     *pb.ExtendJob
}

func (fx *effects) leaseChanged(l *leaseRow) {
	if fx.changed == nil {
		fx.changed = map[string]*leaseRow{}
	}
	if _, ok := fx.changed[l.ID]; !ok {
		fx.order = append(fx.order, l.ID)
	}
	fx.changed[l.ID] = l
}

func (fx *effects) merge(o *effects) {
	fx.msgs = append(fx.msgs, o.msgs...)
	fx.quiet = fx.quiet && o.quiet
	for _, id := range o.order {
		fx.leaseChanged(o.changed[id])
	}
}

func (fx *effects) startJob(supervisor string, m *pb.StartJob) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, start: m})
}

func (fx *effects) stopJob(supervisor, jobID, reason string) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, stop: &pb.StopJob{JobId: jobID, Reason: reason}})
}

// extendJob tells the supervisor that a lease may last remaining from now.
func (fx *effects) extendJob(supervisor string, m *pb.ExtendJob) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, extend: m})
}

// apply performs a committed transaction's effects (in the state loop).
func (c *Coordinator) apply(fx *effects) {
	for _, m := range fx.msgs {
		s := c.sessions[m.supervisor]
		if s == nil {
			c.log.Debug("supervisor not connected: request left to reconciliation", "supervisor", m.supervisor, "job", m.jobID())
			continue
		}
		var err error
		switch {
		case m.start != nil:
			err = s.StartJob(m.start)
		case m.extend != nil:
			err = s.ExtendJob(m.extend)
		default:
			err = s.StopJob(m.stop)
		}
		if err != nil {
			c.log.Warn("request to supervisor not sent: left to reconciliation", "supervisor", m.supervisor, "job", m.jobID(), "error", err)
		}
	}
	for _, id := range fx.order {
		c.publish(fx.changed[id])
	}
	if !fx.quiet || len(fx.order) > 0 {
		c.farm.notify() // farmwatch.go: nothing while nobody watches
	}
	// Run sleeps until the earliest deadline it knows of (at most TickInterval): wake it
	// only for one that is sooner.
	if c.soonest != 0 && c.soonest < c.plannedWake.Load() {
		c.poke()
	}
	c.soonest = 0
}

func (m outMsg) jobID() string {
	switch {
	case m.start != nil:
		return m.start.GetJobId()
	case m.extend != nil:
		return m.extend.GetJobId()
	}
	return m.stop.GetJobId()
}
