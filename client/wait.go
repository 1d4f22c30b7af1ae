package client

// While a lease waits, it belongs to its client: the client holds it with an
// AttachLease stream (the coordinator withdraws an attached lease whose client is gone
// for a few seconds), and says why it waits: its place in the queue, who holds the
// boards it wants and until when, and which boards are unavailable and why.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ExplainInterval is how often a waiting client asks the coordinator why it waits.
var ExplainInterval = 2 * time.Second

// Request says which lease to ask for.
type Request struct {
	Selector string // label selector, e.g. "device=rpi4"
	Board    string // or an exact board name
	Duration time.Duration
	Client   string
	// Detach makes a lease that does not belong to this client: it stays queued after
	// the client is gone, for at most MaxWait (0: the coordinator's bound).
	Detach  bool
	MaxWait time.Duration
	// Image, if set, is booted on the board before the lease is READY.
	Image *pb.ImageSpecification
}

func describe(r Request) string {
	if r.Board != "" {
		return "board " + r.Board
	}
	return r.Selector
}

// attachment holds a lease with AttachLease streams, reattaching after a lost
// connection, until it is stopped or the lease ends. Leases the stream brings go to
// updates (the newest always gets through); a permanent error goes to errc.
type attachment struct {
	cancel  context.CancelFunc
	updates chan *pb.Lease
	errc    chan error
	done    chan struct{}
}

// permanent reports whether a failed AttachLease is not worth retrying.
func permanent(err error) bool {
	switch status.Code(err) {
	case codes.NotFound, codes.PermissionDenied, codes.Unauthenticated, codes.InvalidArgument, codes.FailedPrecondition:
		return true
	}
	return false
}

func (c *Client) attach(id string) *attachment {
	ctx, cancel := context.WithCancel(context.Background())
	a := &attachment{cancel: cancel, updates: make(chan *pb.Lease, 1), errc: make(chan error, 1), done: make(chan struct{})}
	push := func(l *pb.Lease) {
		for {
			select {
			case a.updates <- l:
				return
			default:
			}
			select { // drop the older snapshot: only the newest matters
			case <-a.updates:
			default:
			}
		}
	}
	go func() {
		defer close(a.done)
		watch := false // an older coordinator without AttachLease: watch only
		backoff := 100 * time.Millisecond
		for {
			var err error
			var l *pb.Lease
			if !watch {
				var s pb.LeaseService_AttachLeaseClient
				if s, err = c.Leases.AttachLease(ctx, &pb.AttachLeaseRequest{Id: id}); err == nil {
					for l, err = s.Recv(); err == nil; l, err = s.Recv() {
						push(l)
						backoff = 100 * time.Millisecond
					}
				}
				if status.Code(err) == codes.Unimplemented {
					watch = true
					continue
				}
			} else {
				var s pb.LeaseService_WatchLeaseClient
				if s, err = c.Leases.WatchLease(ctx, &pb.WatchLeaseRequest{Id: id}); err == nil {
					for l, err = s.Recv(); err == nil; l, err = s.Recv() {
						push(l)
						backoff = 100 * time.Millisecond
					}
				}
			}
			if ctx.Err() != nil || errors.Is(err, io.EOF) {
				return // stopped, or the lease ended (its last state was pushed)
			}
			if permanent(err) {
				a.errc <- err
				return
			}
			// Reattach within the coordinator's grace.
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
		}
	}()
	return a
}

func (a *attachment) stop() {
	if a == nil {
		return
	}
	a.cancel()
	<-a.done
}

// Acquire creates a lease held by this client (unless req.Detach) and waits until a
// supervisor has taken it on; meanwhile it says why it waits, refreshed. The lease stays
// held until Detach: call it once the lease is READY. If ctx ends first, or the wait
// fails, Acquire returns the lease with the error: Withdraw it.
func (c *Client) Acquire(ctx context.Context, req Request) (*pb.Lease, error) {
	cr := &pb.CreateLeaseRequest{Selector: req.Selector, Board: req.Board,
		Duration: durationpb.New(req.Duration), ClientName: req.Client, Attached: !req.Detach, Image: req.Image}
	if req.MaxWait > 0 {
		cr.MaxWait = durationpb.New(req.MaxWait)
	}
	resp, err := c.Leases.CreateLease(ctx, cr)
	if err != nil {
		return nil, err
	}
	lease := resp.GetLease()
	token := lease.GetToken()
	c.mu.Lock()
	c.att = c.attach(lease.GetId())
	att := c.att
	c.mu.Unlock()
	if started(lease) {
		return lease, nil
	}
	tick := time.NewTicker(ExplainInterval)
	defer tick.Stop()
	saidQueued, explain, lastWhy := false, true, ""
	for {
		select {
		case l := <-att.updates:
			if l.GetQueued() && !saidQueued {
				c.say("Waiting for a free board (%s)...", describe(req))
				saidQueued = true
				if explain {
					explain, lastWhy = c.explain(ctx, lease.GetId(), req, lastWhy)
				}
			}
			if started(l) {
				l.Token = token
				return l, nil
			}
			if p := l.GetPhase(); p == pb.LeasePhase_LEASE_PHASE_DONE || p == pb.LeasePhase_LEASE_PHASE_FAILED {
				return lease, fmt.Errorf("lease %s ended before it started: %s", l.GetId(), l.GetStatusMessage())
			}
		case err := <-att.errc:
			return lease, err
		case <-tick.C:
			if saidQueued && explain {
				explain, lastWhy = c.explain(ctx, lease.GetId(), req, lastWhy)
			}
		case <-ctx.Done():
			return lease, ctx.Err()
		}
	}
}

// Detach lets go of the lease Acquire holds: from READY on it is its session's.
func (c *Client) Detach() {
	c.mu.Lock()
	a := c.att
	c.att = nil
	c.mu.Unlock()
	a.stop()
}

// explain asks why the lease waits and says it when the answer changed. It returns
// false once the coordinator cannot say (an older one).
func (c *Client) explain(ctx context.Context, id string, req Request, last string) (bool, string) {
	ectx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := c.Leases.ExplainWait(ectx, &pb.ExplainWaitRequest{Id: id})
	if status.Code(err) == codes.Unimplemented {
		return false, last
	}
	if err != nil || !r.GetLease().GetQueued() {
		return true, last
	}
	why := DescribeWait(r, describe(req), time.Now())
	if why != last {
		c.say("%s", why)
	}
	return true, why
}

// DescribeWait words why a lease waits, for a person: its place in the queue and the
// holders of the boards it wants with their end times, or, when no board it wants can
// be had, why not.
func DescribeWait(r *pb.ExplainWaitResponse, what string, now time.Time) string {
	boards := r.GetBoards()
	if len(boards) == 0 {
		return fmt.Sprintf("No board matches %s any more: the lease waits until one is back.", what)
	}
	var unavailable, held []string
	offline := 0
	for _, b := range boards {
		switch reason := boardUnavailable(b, now); {
		case reason != "":
			unavailable = append(unavailable, reason)
			if supervisorGone(b) {
				offline++
			}
		case b.GetHolderLeaseId() != "":
			h := b.GetName() + " is held by " + first(b.GetHolderClient(), "someone")
			if t := b.GetHolderEndsAt(); t != nil {
				h += " until " + clock(t.AsTime(), now)
			}
			held = append(held, h)
		}
	}
	if len(unavailable) == len(boards) {
		which := "every board matching " + what
		if len(boards) == 1 {
			which = "the only board matching " + what
		}
		if offline == len(boards) {
			return fmt.Sprintf("%s is OFFLINE: %s.", capital(which), strings.Join(unavailable, "; "))
		}
		return fmt.Sprintf("%s is unavailable: %s.", capital(which), strings.Join(unavailable, "; "))
	}
	var b strings.Builder
	if r.GetPosition() > 0 {
		fmt.Fprintf(&b, "In the queue: %s of %d", ordinal(int(r.GetPosition())), r.GetQueued())
	} else {
		b.WriteString("Waiting")
	}
	if len(held) > 0 {
		b.WriteString("; " + strings.Join(held, ", "))
	}
	if len(unavailable) > 0 {
		b.WriteString("; unavailable: " + strings.Join(unavailable, "; "))
	}
	b.WriteString(".")
	return b.String()
}

// boardUnavailable says why a board cannot be had at all ("" if it can, once free).
func boardUnavailable(b *pb.BoardWait, now time.Time) string {
	name := b.GetName()
	switch {
	case supervisorGone(b):
		since := ""
		if t := b.GetSupervisorLastContact(); t != nil {
			since = " since " + clock(t.AsTime(), now)
		}
		return fmt.Sprintf("%s is OFFLINE (supervisor %s gone%s)", name, b.GetSupervisorId(), since)
	case b.GetHealth() == pb.BoardHealth_BOARD_HEALTH_MAINTENANCE:
		return name + " is " + first(b.GetReason(), "in maintenance")
	case b.GetHealth() == pb.BoardHealth_BOARD_HEALTH_BAD:
		return name + " is " + first(b.GetReason(), "quarantined") + " (an operator must clear it: boardvisor board clear " + name + ")"
	case b.GetHealth() == pb.BoardHealth_BOARD_HEALTH_UNKNOWN:
		return name + " is " + first(b.GetReason(), "not ready")
	case !b.GetSupervisorConnected():
		return fmt.Sprintf("%s's supervisor %s is disconnected", name, b.GetSupervisorId())
	}
	return ""
}

// supervisorGone: the board is OFFLINE because its supervisor is gone.
func supervisorGone(b *pb.BoardWait) bool {
	return b.GetStatus() == jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE && !b.GetSupervisorConnected()
}

// clock shows a time of today as 15:04:05, another day's with its date.
func clock(t, now time.Time) string {
	t, now = t.Local(), now.Local()
	if t.YearDay() == now.YearDay() && t.Year() == now.Year() {
		return t.Format("15:04:05")
	}
	return t.Format("2006-01-02 15:04")
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprintf("%d%s", n, suffix)
}

func capital(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// Withdraw gives up a lease that is not READY (Ctrl+C, a failure) and says, as one
// sentence, what became of it: withdrawn from the queue, or released with what still
// runs on its board.
func (c *Client) Withdraw(lease *pb.Lease, why string) string {
	c.Detach()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := c.Leases.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: lease.GetId(), Reason: why})
	if err != nil {
		return fmt.Sprintf("Lease %s could not be withdrawn (%s): the coordinator withdraws it within seconds now that this client is gone.", lease.GetId(), status.Convert(err).Message())
	}
	l := r.GetLease()
	switch {
	case l.GetBoard() == "":
		return fmt.Sprintf("Lease %s withdrawn from the queue.", lease.GetId())
	case l.GetPhase() == pb.LeasePhase_LEASE_PHASE_DONE || l.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED:
		return fmt.Sprintf("Lease %s had ended already (%s).", lease.GetId(), l.GetStatusMessage())
	case l.GetPhase() >= pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE:
		return fmt.Sprintf("Lease %s released; the beforeLease hook finishes, then the afterLease hook runs on board %s.", lease.GetId(), l.GetBoard())
	}
	return fmt.Sprintf("Lease %s released before board %s was prepared.", lease.GetId(), l.GetBoard())
}

// hookTimeout reads a hook's timeout from its phase marker ("running the beforeLease
// hook (timeout 2m0s)").
var hookTimeoutRe = regexp.MustCompile(`\(timeout ([0-9a-zµ.]+)\)`)

func hookTimeout(msg string) time.Duration {
	if m := hookTimeoutRe.FindStringSubmatch(msg); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil {
			return d
		}
	}
	return 0
}

// hookClock shows a running hook's time against its timeout: in place on a terminal
// (every second, unless the hook draws a progress line of its own), and as a line at
// half and at nine tenths of the timeout otherwise.
type hookClock struct {
	mu      sync.Mutex
	name    string
	start   time.Time
	timeout time.Duration
	said    int // lines said when not on a terminal: 1 at half, 2 at nine tenths
}

func (c *Client) startHookClock(name, marker string) {
	c.clock.mu.Lock()
	defer c.clock.mu.Unlock()
	c.clock.name, c.clock.start, c.clock.timeout, c.clock.said = name, time.Now(), hookTimeout(marker), 0
}

func (c *Client) stopHookClock() {
	c.clock.mu.Lock()
	c.clock.name = ""
	c.clock.mu.Unlock()
	c.scr.mu.Lock()
	if c.scr.mine {
		c.clearProgress()
	}
	c.scr.mu.Unlock()
}

// tickHookClock shows the running hook's time.
func (c *Client) tickHookClock() {
	c.clock.mu.Lock()
	name, start, timeout := c.clock.name, c.clock.start, c.clock.timeout
	c.clock.mu.Unlock()
	if name == "" || timeout <= 0 {
		return
	}
	el := time.Since(start).Truncate(time.Second)
	text := fmt.Sprintf("[boardvisor] %s hook running: %s of its %s timeout", name, el, timeout)
	c.scr.once.Do(func() { c.scr.width = terminalWidth(c.Out) })
	if c.scr.width > 0 {
		c.ownProgress(text)
		return
	}
	c.clock.mu.Lock()
	due := 0
	switch {
	case el >= timeout*9/10:
		due = 2
	case el >= timeout/2:
		due = 1
	}
	sayIt := due > c.clock.said && el >= 10*time.Second
	if due > c.clock.said {
		c.clock.said = due
	}
	c.clock.mu.Unlock()
	if sayIt {
		c.say("%s", text)
	}
}
