// Package coordinator is boardvisor's reference coordinator (DESIGN.md §8): it keeps the
// board inventory that supervisors announce, queues lease requests FIFO per selector,
// decides which board serves which lease, and tells the supervisors to start and stop
// jobs over the supervisor link (connector/grpc). Clients use its LeaseService.
//
// All state is in SQL through database/sql: an embedded SQLite file by default, with a
// schema and queries PostgreSQL also runs. Every state change is one transaction, and
// the coordinator reconciles with each supervisor by level (on Hello and periodically),
// so events are never the only path to a correct state.
package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	ggrpc "google.golang.org/grpc"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver
)

// Options configure a Coordinator. The zero value of each field selects its default.
type Options struct {
	// Driver is the database/sql driver name (default "sqlite", modernc.org/sqlite). The
	// caller registers any other driver (e.g. "pgx") by importing it.
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
}

// Coordinator is the coordinator: a link.Handler for supervisors and a LeaseService for
// clients. Create it with New, serve it with Register and Run, and Close it.
type Coordinator struct {
	pb.UnimplementedLeaseServiceServer

	opts Options
	db   *sql.DB
	log  hclog.Logger
	now  func() time.Time
	link *link.Server
	logs *logHub  // LeaseLog streams, woken from the event path (leaselog.go)
	ops  *ops     // operators' and clients' holds, tokens (operator.go, attach.go)
	farm farmFeed // wakes in-process farm watchers after each change (farmwatch.go)

	// mu serializes every state change (one writer at a time) and guards the fields below.
	mu       sync.Mutex
	sessions map[string]*link.Session // connected supervisors by ID
	watchers map[string]map[*watcher]struct{}
	// goneLogged remembers the supervisors already reported as gone beyond grace.
	goneLogged map[string]bool

	wake      chan struct{} // pokes Run: a lease's end time may have moved
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	runWG     sync.WaitGroup
}

var (
	_ link.Handler          = (*Coordinator)(nil)
	_ pb.LeaseServiceServer = (*Coordinator)(nil)
)

// errClosed is returned by operations on a closed coordinator.
var errClosed = errors.New("coordinator closed")

// New opens (and if needed creates) the coordinator's database and returns the
// coordinator. Supervisors recorded as connected are marked disconnected, with the
// grace period starting now.
func New(opts Options) (*Coordinator, error) {
	if opts.Driver == "" {
		opts.Driver = "sqlite"
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
	if dsn == "" {
		if !isSQLite(opts.Driver) {
			return nil, fmt.Errorf("coordinator: a DB data source name is needed for driver %q", opts.Driver)
		}
		if err := os.MkdirAll(opts.StateDir, 0o750); err != nil {
			return nil, fmt.Errorf("coordinator: state directory: %w", err)
		}
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
	if isSQLite(opts.Driver) && strings.Contains(dsn, ":memory:") {
		db.SetMaxOpenConns(1) // every connection would be its own in-memory database
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := migrate(ctx, db); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("coordinator: database: %w", err)
	}
	c := &Coordinator{
		opts:       opts,
		db:         db,
		log:        opts.Logger,
		now:        opts.Now,
		sessions:   map[string]*link.Session{},
		watchers:   map[string]map[*watcher]struct{}{},
		goneLogged: map[string]bool{},
		logs:       newLogHub(opts.LeaseLogs),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	c.ops = newOps(c)
	if err := c.openHolds(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("coordinator: database: lease holds: %w", err)
	}
	c.link = &link.Server{Handler: c, Auth: opts.SupervisorAuth, Logger: opts.Logger.Named("link"), Audit: opts.Audit}
	// No supervisor is connected to a process that just started: their grace starts now.
	if _, err := db.ExecContext(ctx, `UPDATE supervisors SET connected = $1, last_contact = $2 WHERE connected = $3`,
		false, c.now().UnixNano(), true); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("coordinator: database: %w", err)
	}
	return c, nil
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
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return nil
	default:
	}
	c.runWG.Add(2) // under c.mu, so never concurrent with Close's Wait
	c.mu.Unlock()
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
		if err := c.tick(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errClosed) {
			c.log.Error("lease timers", "error", err)
		}
		if now := c.now(); now.Sub(lastReconcile) >= c.opts.ReconcileInterval || now.Before(lastReconcile) {
			lastReconcile = now
			if err := c.reconcileAll(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errClosed) {
				c.log.Error("reconciliation", "error", err)
			}
		}
		c.checkGrace(ctx)
		wait := c.opts.TickInterval
		if next, err := c.nextExpiry(ctx); err == nil && next > 0 {
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
		timer.Reset(wait)
	}
}

// Close stops Run, ends every WatchLease stream and closes the database. Stop the gRPC
// server first: handlers still running afterwards get errors.
func (c *Coordinator) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.mu.Lock()
		close(c.done)
		c.mu.Unlock()
		c.runWG.Wait()
		err = c.db.Close()
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

// effects are what a committed transaction must do next: messages to supervisors and
// lease changes to publish to watchers.
type effects struct {
	msgs    []outMsg
	changed map[string]bool
	wake    bool
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

func (fx *effects) leaseChanged(id string) {
	if fx.changed == nil {
		fx.changed = map[string]bool{}
	}
	fx.changed[id] = true
}

func (fx *effects) startJob(supervisor string, m *pb.StartJob) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, start: m})
}

func (fx *effects) stopJob(supervisor, jobID, reason string) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, stop: &pb.StopJob{JobId: jobID, Reason: reason}})
}

// update runs fn in one transaction under c.mu; after the commit it sends the messages fn
// queued and publishes the leases it changed. Nothing is sent for a rolled-back change.
func (c *Coordinator) update(ctx context.Context, fn func(tx *sql.Tx, fx *effects) error) error {
	select {
	case <-c.done:
		return errClosed
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.updateLocked(ctx, fn)
}

func (c *Coordinator) updateLocked(ctx context.Context, fn func(tx *sql.Tx, fx *effects) error) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	fx := &effects{}
	if err := fn(tx, fx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	c.apply(ctx, fx)
	return nil
}

// apply performs a committed transaction's effects; c.mu is held.
func (c *Coordinator) apply(ctx context.Context, fx *effects) {
	for _, m := range fx.msgs {
		s := c.sessions[m.supervisor]
		if s == nil {
			c.log.Debug("supervisor not connected: request left to reconciliation", "supervisor", m.supervisor, "job", m.jobID())
			continue
		}
		var err error
		switch {
		case m.start != nil:
			c.attachImage(ctx, m.start)
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
	for id := range fx.changed {
		c.publish(ctx, id)
	}
	if fx.wake {
		c.poke()
	}
	if !fx.quiet || len(fx.changed) > 0 {
		c.farm.notify() // farmwatch.go: nothing while nobody watches
	}
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

// extendJob tells the supervisor that a lease may last remaining from now.
func (fx *effects) extendJob(supervisor string, m *pb.ExtendJob) {
	fx.msgs = append(fx.msgs, outMsg{supervisor: supervisor, extend: m})
}
