package main

import (
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/audit"
	"github.com/boardvisor/boardvisor/connector/connlimit"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// peerLimitFlags bound the connections one address may hold on a supervisor's client
// service (its listener and its per-board TCP endpoints) before a call on them proves
// itself with a lease's or a hook's token or a client certificate. A peer past the
// bound has its further connections closed as soon as they are accepted; a connection
// that never proves itself is closed at the deadline. Reading a board's status needs
// no token: a status reader without one is served, and reconnects after the deadline.
type peerLimitFlags struct {
	max      int
	deadline time.Duration
}

// DefaultSupervisorAuthDeadline is the supervisor's --auth-deadline: longer than the
// coordinator's, as status readers need no token here.
const DefaultSupervisorAuthDeadline = 10 * time.Minute

func (f *peerLimitFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.max, "max-unauthenticated-per-peer", connlimit.DefaultMaxPerPeer,
		"connections one address may hold on the client service before a call on them presents a valid token or client certificate")
	fl.DurationVar(&f.deadline, "auth-deadline", DefaultSupervisorAuthDeadline,
		"how long a connection to the client service may stay open without a call presenting a valid token or client certificate")
}

// limiter is the bound of unauthenticated connections of a supervisor; a refusal is
// logged and audited, once per peer address and then at most every refusalReportEvery
// with the count of those not reported one by one (a flood must not flood the audit).
func (f *upstreamFlags) limiter(logger hclog.Logger, al *audit.Log) *connlimit.Limiter {
	var p peerLimitFlags
	if f != nil {
		p = f.peers
	}
	r := &refusalReport{logger: logger, audit: al, last: map[string]*refused{}}
	return &connlimit.Limiter{MaxPerPeer: p.max, Deadline: p.deadline, Refused: r.refused}
}

const refusalReportEvery = 10 * time.Second

type refused struct {
	at      time.Time
	skipped int
}

type refusalReport struct {
	logger hclog.Logger
	audit  *audit.Log
	mu     sync.Mutex
	last   map[string]*refused // by peer IP
}

func (r *refusalReport) refused(addr, reason string) {
	ip := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		ip = h
	}
	now := time.Now()
	r.mu.Lock()
	if len(r.last) > 10000 {
		for k, v := range r.last {
			if now.Sub(v.at) > time.Minute {
				delete(r.last, k)
			}
		}
	}
	e := r.last[ip]
	if e != nil && now.Sub(e.at) < refusalReportEvery {
		e.skipped++
		r.mu.Unlock()
		return
	}
	skipped := 0
	if e != nil {
		skipped = e.skipped
	}
	r.last[ip] = &refused{at: now}
	r.mu.Unlock()
	args := []any{"peer", addr, "reason", reason}
	if skipped > 0 {
		args = append(args, "not_reported_one_by_one", skipped)
	}
	r.logger.Warn("connection refused: closed before any call", args...)
	if r.audit != nil {
		why := "connection from " + addr + " closed: " + reason
		if skipped > 0 {
			why += " (and " + strconv.Itoa(skipped) + " more from this address not recorded one by one)"
		}
		r.audit.Refused(ip, "", "", why)
	}
}
