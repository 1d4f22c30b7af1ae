package coordinator

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/connector/connlimit"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// Defaults of the caps (Options).
const (
	// A CI system may run hundreds of jobs under one user token, or from one address
	// without tokens: the per-user caps leave room for that; the total bounds memory
	// (an open watch costs some tens of kilobytes).
	DefaultMaxQueuedPerUser  = 500
	DefaultMaxWatchesPerUser = 1000
	DefaultMaxWatches        = 10000
)

// Bounds of what a client may send.
const (
	maxClientName = 128
	maxReason     = 512
	maxParams     = 32
	maxParamValue = 4096
)

// checkClientText refuses free text from a client that would reach hooks, logs or other
// people's terminals with control characters in it (issue 15 item 7).
func (c *Coordinator) checkClientText(ctx context.Context, field, s string, max int) error {
	if err := jobs.CheckText(s, max); err != nil {
		c.auditRefusal(who(ctx), "", "", fmt.Sprintf("%s %q %v", field, s, err))
		return status.Errorf(codes.InvalidArgument, "%s %q %v: use printable text", field, s, err)
	}
	return nil
}

// checkParams checks a lease's job parameters: names like board names, values text.
func (c *Coordinator) checkParams(ctx context.Context, params map[string]string) error {
	if len(params) > maxParams {
		return status.Errorf(codes.InvalidArgument, "%d job parameters: at most %d are allowed", len(params), maxParams)
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !jobs.ValidName(k) {
			c.auditRefusal(who(ctx), "", "", fmt.Sprintf("job parameter name %q", k))
			return status.Errorf(codes.InvalidArgument, "job parameter name %q is not valid (want 1 to 64 of A-Z a-z 0-9 . _ -)", k)
		}
		if err := c.checkClientText(ctx, "job parameter "+k, params[k], maxParamValue); err != nil {
			return err
		}
	}
	return nil
}

// who names the caller of a client call: its user when authenticated, else its address.
func who(ctx context.Context) string {
	if u, ok := userOf(ctx); ok {
		return u.Name
	}
	return peerAddr(ctx)
}

// principal is whom the per-user caps count against: the authenticated user, or, with
// client authentication off, the caller's IP address.
func principal(ctx context.Context) string {
	if u, ok := userOf(ctx); ok {
		return "user " + u.Name
	}
	addr := peerAddr(ctx)
	if h, _, err := net.SplitHostPort(addr); err == nil {
		addr = h
	}
	return "address " + addr
}

// mayChange tells whether the caller may release, extend or watch a lease of client;
// a refusal is audited.
func (c *Coordinator) mayChange(ctx context.Context, l *leaseRow, what string) error {
	u, ok := userOf(ctx)
	if !ok || u.Admin || u.Name == l.Client {
		return nil
	}
	c.auditRefusal(u.Name, l.Board, l.ID, fmt.Sprintf("%s lease %s of %s: not its holder nor an admin", what, l.ID, l.Client))
	return status.Errorf(codes.PermissionDenied, "the lease belongs to %s; only its holder or an admin may %s it", l.Client, what)
}

// leaseFor returns a lease for the state loop (leaseOf) that the caller (caller's
// context: its user) may act on with what: NotFound when there is none, PermissionDenied
// (audited) when it is another user's.
func (c *Coordinator) leaseFor(ctx context.Context, tx *sql.Tx, caller context.Context, id, what string) (*leaseRow, error) {
	l, err := c.leaseOf(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if l == nil {
		return nil, status.Errorf(codes.NotFound, "lease %s not found", id)
	}
	if err := c.mayChange(caller, l, what); err != nil {
		return nil, err
	}
	return l, nil
}

// watchSlots counts open WatchLease streams, per principal and in all.
type watchSlots struct {
	mu    sync.Mutex
	by    map[string]int
	total int
}

// take reserves a stream for p, or says why not.
func (c *Coordinator) takeWatch(ctx context.Context) (release func(), err error) {
	p := principal(ctx)
	w := &c.watchSlots
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.by == nil {
		w.by = map[string]int{}
	}
	switch {
	case w.by[p] >= c.opts.MaxWatchesPerUser:
		c.auditRefusal(who(ctx), "", "", fmt.Sprintf("WatchLease: %s has %d lease watches open, the most allowed", p, w.by[p]))
		return nil, status.Errorf(codes.ResourceExhausted,
			"%s has %d lease watches open, the most allowed per user (coordinator --max-watches-per-user): close some first", p, w.by[p])
	case w.total >= c.opts.MaxWatches:
		c.auditRefusal(who(ctx), "", "", fmt.Sprintf("WatchLease: the coordinator serves %d lease watches, its limit", w.total))
		return nil, status.Errorf(codes.ResourceExhausted,
			"the coordinator serves %d lease watches, its limit (--max-watches): try again later", w.total)
	}
	w.by[p]++
	w.total++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.by[p]--; w.by[p] <= 0 {
			delete(w.by, p)
		}
		w.total--
	}, nil
}

// tapWatch refuses a WatchLease stream before gRPC creates it when its user is already
// at a cap (the handler checks again, and reserves the slot). It knows the user only
// with client authentication on.
func (c *Coordinator) tapWatch(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != pb.LeaseService_WatchLease_FullMethodName || c.clientTokens() == nil {
		return ctx, nil
	}
	var token string
	for _, v := range info.Header.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			token = t
		}
	}
	u, ok := c.clientTokens().lookup(token)
	if !ok {
		return ctx, nil // the interceptor refuses it, and says why
	}
	p := "user " + u.Name
	w := &c.watchSlots
	w.mu.Lock()
	n, total := w.by[p], w.total
	w.mu.Unlock()
	switch {
	case n >= c.opts.MaxWatchesPerUser:
		c.auditRefusal(u.Name, "", "", fmt.Sprintf("WatchLease: %s has %d lease watches open, the most allowed", p, n))
		return nil, status.Errorf(codes.ResourceExhausted,
			"%s has %d lease watches open, the most allowed per user (coordinator --max-watches-per-user): close some first", p, n)
	case total >= c.opts.MaxWatches:
		c.auditRefusal(u.Name, "", "", fmt.Sprintf("WatchLease: the coordinator serves %d lease watches, its limit", total))
		return nil, status.Errorf(codes.ResourceExhausted, "the coordinator serves %d lease watches, its limit (--max-watches): try again later", total)
	}
	return ctx, nil
}

// Refusals are audited, but a flood of them (a hostile client retrying) must not flood
// the audit log: each caller may have auditBurst entries at once, then one per
// auditEvery; what is left out is counted in the next entry.
const (
	auditBurst = 20
	auditEvery = time.Second
)

type auditBucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

type auditLimiter struct {
	mu sync.Mutex
	by map[string]*auditBucket
}

// allow reports whether an entry of who may be written now, and how many were left out
// since the last one.
func (a *auditLimiter) allow(who string, now time.Time) (bool, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.by == nil {
		a.by = map[string]*auditBucket{}
	}
	b := a.by[who]
	if b == nil {
		if len(a.by) > 10000 { // many callers: forget the quiet ones
			for k, x := range a.by {
				if now.Sub(x.last) > time.Minute && x.suppressed == 0 {
					delete(a.by, k)
				}
			}
		}
		b = &auditBucket{tokens: auditBurst, last: now}
		a.by[who] = b
	}
	b.tokens = min(auditBurst, b.tokens+now.Sub(b.last).Seconds()/auditEvery.Seconds())
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return false, 0
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return true, n
}

// auditRefusal logs and audits a refused access (bounded per caller: see auditBurst).
func (c *Coordinator) auditRefusal(who, board, job, reason string) {
	ok, left := c.auditLimit.allow(who, time.Now())
	if !ok {
		return
	}
	if left > 0 {
		reason += fmt.Sprintf(" (and %d more refusals of %s not recorded one by one)", left, who)
	}
	c.log.Warn("refused", "who", who, "board", board, "job", job, "reason", reason)
	if c.opts.Audit != nil {
		c.opts.Audit.Refused(who, board, job, reason)
	}
}

// Listener wraps a listener for the coordinator's gRPC server: with authentication on
// (supervisor or client tokens), each peer address may hold at most
// Options.MaxUnauthenticatedPerPeer connections on which no call has presented a valid
// token, for at most Options.AuthDeadline each. Without authentication it returns l.
func (c *Coordinator) Listener(l net.Listener) net.Listener {
	if c.conns == nil {
		return l
	}
	return c.conns.Listener(l)
}

func (c *Coordinator) newConnLimiter() *connlimit.Limiter {
	if c.clientTokens() == nil && c.opts.SupervisorAuth == nil {
		return nil
	}
	return &connlimit.Limiter{MaxPerPeer: c.opts.MaxUnauthenticatedPerPeer, Deadline: c.opts.AuthDeadline,
		Refused: func(addr, reason string) {
			c.auditRefusal(hostOf(addr), "", "", "connection from "+addr+" closed: "+reason)
		}}
}

// authenticated marks a call's connection as authenticated (it then no longer counts
// against its peer's cap).
func (c *Coordinator) authenticated(ctx context.Context) {
	if c.conns == nil {
		return
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		c.conns.Authenticated(p.Addr.String())
	}
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// validateCreate checks a CreateLease request's free text at the API edge.
func (c *Coordinator) validateCreate(ctx context.Context, req *pb.CreateLeaseRequest) error {
	if err := c.checkClientText(ctx, "client_name", req.GetClientName(), maxClientName); err != nil {
		return err
	}
	if b := strings.TrimSpace(req.GetBoard()); b != "" && !jobs.ValidName(b) {
		c.auditRefusal(who(ctx), "", "", fmt.Sprintf("CreateLease for the invalid board name %q", b))
		return status.Errorf(codes.InvalidArgument, "board name %q is not valid (want 1 to 64 of A-Z a-z 0-9 . _ -)", b)
	}
	return c.checkParams(ctx, req.GetParameters())
}
