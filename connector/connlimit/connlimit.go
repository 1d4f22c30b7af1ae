// Package connlimit bounds the connections a network peer may hold open before it
// authenticates: a gRPC server's listener is wrapped, each accepted connection counts
// against its peer's IP address until a call on it presents valid credentials
// (Authenticated), and a connection that does not within a deadline is closed. A peer at
// its limit has further connections closed as soon as they are accepted.
//
// It keeps a hostile or broken peer from holding thousands of idle connections (each
// costs the server goroutines and buffers) without a valid token; authenticated peers
// are not limited by it.
package connlimit

import (
	"net"
	"sync"
	"time"
)

// Defaults of Limiter's fields.
const (
	DefaultMaxPerPeer = 64
	DefaultDeadline   = 30 * time.Second
)

// Limiter counts unauthenticated connections per peer. Set its fields before Listener.
type Limiter struct {
	// MaxPerPeer bounds the unauthenticated connections of one IP address (default 64:
	// supervisors behind one NAT address all reconnect at once after a restart).
	MaxPerPeer int
	// Deadline is how long a connection may stay unauthenticated (default 30s).
	Deadline time.Duration
	// Refused, if set, is told of every connection closed by the limiter: the peer's
	// address and why. It must not block.
	Refused func(peer, reason string)

	mu    sync.Mutex
	peers map[string]int      // IP -> unauthenticated connections
	conns map[string]*tracked // remote address -> connection
}

// Listener wraps l: every connection it accepts is counted.
func (lim *Limiter) Listener(l net.Listener) net.Listener {
	lim.mu.Lock()
	if lim.MaxPerPeer <= 0 {
		lim.MaxPerPeer = DefaultMaxPerPeer
	}
	if lim.Deadline <= 0 {
		lim.Deadline = DefaultDeadline
	}
	if lim.peers == nil {
		lim.peers, lim.conns = map[string]int{}, map[string]*tracked{}
	}
	lim.mu.Unlock()
	return &listener{Listener: l, lim: lim}
}

// Authenticated marks the connection from remoteAddr (a call's peer address) as
// authenticated: it no longer counts, and its deadline is off. Unknown addresses are
// ignored.
func (lim *Limiter) Authenticated(remoteAddr string) {
	lim.mu.Lock()
	defer lim.mu.Unlock()
	if t := lim.conns[remoteAddr]; t != nil && !t.authed {
		t.authed = true
		t.timer.Stop()
		lim.release(t)
	}
}

// Unauthenticated returns how many unauthenticated connections ip holds.
func (lim *Limiter) Unauthenticated(ip string) int {
	lim.mu.Lock()
	defer lim.mu.Unlock()
	return lim.peers[ip]
}

// release uncounts t; lim.mu is held.
func (lim *Limiter) release(t *tracked) {
	if lim.peers[t.ip]--; lim.peers[t.ip] <= 0 {
		delete(lim.peers, t.ip)
	}
}

type listener struct {
	net.Listener
	lim *Limiter
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := c.RemoteAddr().String()
		ip := addr
		if h, _, err := net.SplitHostPort(addr); err == nil {
			ip = h
		}
		lim := l.lim
		lim.mu.Lock()
		if lim.peers[ip] >= lim.MaxPerPeer {
			lim.mu.Unlock()
			_ = c.Close()
			if lim.Refused != nil {
				lim.Refused(addr, "too many unauthenticated connections from this address")
			}
			continue
		}
		t := &tracked{Conn: c, lim: lim, ip: ip, addr: addr}
		lim.peers[ip]++
		lim.conns[addr] = t
		t.timer = time.AfterFunc(lim.Deadline, t.expire)
		lim.mu.Unlock()
		return t, nil
	}
}

// tracked is an accepted connection.
type tracked struct {
	net.Conn
	lim        *Limiter
	ip, addr   string
	timer      *time.Timer
	authed     bool // under lim.mu
	closed     bool // under lim.mu
	closeOnce  sync.Once
	closeError error
}

func (t *tracked) expire() {
	t.lim.mu.Lock()
	authed := t.authed
	t.lim.mu.Unlock()
	if authed {
		return
	}
	_ = t.Close()
	if t.lim.Refused != nil {
		t.lim.Refused(t.addr, "not authenticated within "+t.lim.Deadline.String())
	}
}

func (t *tracked) Close() error {
	t.closeOnce.Do(func() {
		t.lim.mu.Lock()
		if !t.closed {
			t.closed = true
			t.timer.Stop()
			if !t.authed {
				t.lim.release(t)
			}
			if t.lim.conns[t.addr] == t {
				delete(t.lim.conns, t.addr)
			}
		}
		t.lim.mu.Unlock()
		t.closeError = t.Conn.Close()
	})
	return t.closeError
}
