package exporter

import (
	"context"
	"crypto/subtle"
	"fmt"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// MDPassphrase is the metadata key upstream Jumpstarter's client sends a passphrase in
// (JMP_GRPC_PASSPHRASE, `--passphrase`) when it reaches an exporter over TCP. The
// service takes it as the lease token, like "authorization: Bearer <token>".
const MDPassphrase = "x-jumpstarter-passphrase"

// MDUpstream ("1") marks a call that comes from an upstream Jumpstarter client through
// boardvisor shell's socket (client.UpstreamSocket sets it).
const MDUpstream = "boardvisor-upstream"

// upstreamCaller reports whether a call comes from an upstream Jumpstarter client: one
// that reached a per-board endpoint, or came through boardvisor shell's socket.
// Upstream's exporter never ends a LogStream on its own (the session's socket goes
// away instead), and upstream's client opens it again when it ends, reading the log
// from its start once more: such a caller's LogStream is kept open after the lease's
// end instead.
func upstreamCaller(ctx context.Context) bool {
	_, ep := endpointOf(ctx)
	return ep || md(ctx, MDUpstream) == "1"
}

// holdOpen keeps an upstream caller's LogStream open after its lease ended, until the
// caller leaves or the lease's grace period is over.
func (s *Service) holdOpen(ctx context.Context, l *leaseState) {
	if !upstreamCaller(ctx) {
		return
	}
	s.mu.Lock()
	left := max(s.logGrace()-s.now().Sub(l.endedAt), 0)
	s.mu.Unlock()
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func md(ctx context.Context, key string) string {
	m, _ := metadata.FromIncomingContext(ctx)
	if v := m.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// An endpoint serves one board to upstream clients, which name no board (see
// EndpointOptions). bySocket: the caller got in through a Unix socket whose file
// permissions are its authentication, and acts as the board's current lease.
type endpoint struct {
	board    string
	bySocket bool
}

type endpointKey struct{}

func endpointOf(ctx context.Context) (endpoint, bool) {
	ep, ok := ctx.Value(endpointKey{}).(endpoint)
	return ep, ok
}

// EndpointOptions are the server options of a gRPC server that serves one board alone,
// upstream-style: every call is for that board, whatever its metadata says. Over a Unix
// socket (bySocket), whoever can open the socket is taken for the holder of the
// board's current lease — the socket's file mode and owner are the authentication —
// and what it may do is what that lease may do (driver calls only while it is READY).
// Over TCP a call proves it holds the lease with its token, as authorization: Bearer
// or as upstream's passphrase (MDPassphrase).
func (s *Service) EndpointOptions(board string, bySocket bool) []grpc.ServerOption {
	ep := endpoint{board: board, bySocket: bySocket}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(context.WithValue(ctx, endpointKey{}, ep), req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, endpointStream{ss, context.WithValue(ss.Context(), endpointKey{}, ep)})
		}),
	}
}

type endpointStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (e endpointStream) Context() context.Context { return e.ctx }

// boardName is the board a call is for: its endpoint's, or the one its metadata names.
func boardName(ctx context.Context) string {
	if ep, ok := endpointOf(ctx); ok {
		return ep.board
	}
	return md(ctx, MDBoard)
}

// token is the lease token a call presents, if any.
func token(ctx context.Context) string {
	if t, ok := strings.CutPrefix(md(ctx, "authorization"), "Bearer "); ok && t != "" {
		return t
	}
	return md(ctx, MDPassphrase)
}

// authorize returns the live lease the call's token holds on the call's board.
func (s *Service) authorize(ctx context.Context) (*leaseState, error) { return s.lease(ctx, false) }

// lease returns the lease a call acts for: the live lease its token holds on the call's
// board, or — readOnly, for LogStream and GetStatus — an ended lease in its grace
// period. Every refusal with UNAUTHENTICATED or PERMISSION_DENIED is audited. Neither
// the token nor anything derived from it appears in the error or the audit record.
//
// Tokens are compared in constant time where it matters: the service keeps no token,
// only its SHA-256 (jobs.TokenHash), and looks the hash of the presented token up in a
// map. Hashing takes time that depends on the token's length only, and the map compares
// hashes, not tokens: how long a comparison takes can tell an attacker at most how many
// leading bytes of SHA-256(guess) match a stored hash, which, SHA-256 being preimage
// resistant, says nothing about the token itself (the same argument as for comparing
// HMACs). A final subtle.ConstantTimeCompare of the two hashes makes the accepting path
// constant-time as well.
func (s *Service) lease(ctx context.Context, readOnly bool) (*leaseState, error) {
	board := boardName(ctx)
	if board == "" {
		return nil, status.Error(codes.InvalidArgument, "no board named: set the "+MDBoard+" metadata key")
	}
	s.mu.Lock()
	b, known := s.boards[board]
	current := "" // the board's live lease, for the audit
	var live *leaseState
	if known {
		live = s.leases[b.current]
		if live != nil {
			current = b.current
		}
	}
	s.mu.Unlock()
	if !known {
		return nil, status.Errorf(codes.NotFound, "no board named %q on this supervisor", board)
	}
	tok := token(ctx)
	if ep, _ := endpointOf(ctx); ep.bySocket && tok == "" {
		if live != nil {
			return live, nil
		}
		s.mu.Lock()
		s.prune()
		last := b.lastEnded
		s.mu.Unlock()
		if readOnly && last != nil {
			return last, nil
		}
		return nil, status.Errorf(codes.FailedPrecondition, "board %s is not leased: there is no lease to act for", board)
	}
	if tok == "" {
		s.refused(ctx, board, current, "no lease token")
		return nil, status.Error(codes.Unauthenticated, "no lease token: send authorization: Bearer <lease token>")
	}
	hash := jobs.TokenHash(tok)
	s.mu.Lock()
	l := s.tokens[hash]
	if l == nil && readOnly {
		l = s.endedLease(hash)
	}
	s.mu.Unlock()
	if l == nil || l.board != board || subtle.ConstantTimeCompare([]byte(hash), []byte(l.tokenHash)) != 1 {
		why := "the token holds no live lease"
		if l != nil && l.board != board {
			why = fmt.Sprintf("the token is for lease %s on board %s", l.job, l.board)
		}
		s.refused(ctx, board, current, why)
		return nil, status.Errorf(codes.PermissionDenied, "this token holds no live lease on board %s", board)
	}
	return l, nil
}

// refused audits a refused access.
func (s *Service) refused(ctx context.Context, board, job, reason string) {
	if s.Audit != nil {
		s.Audit.Refused(peerOf(ctx), board, job, reason)
	}
}

// peerOf returns the caller's network address.
func peerOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}

func (s *Service) boardFor(ctx context.Context) (*boardState, error) {
	name := boardName(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.boards[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no board named %q on this supervisor", name)
	}
	return b, nil
}

// optionalLease is the lease a call that needs none acts for, if it presents one
// (GetStatus, GetReport): never refused, never audited.
func (s *Service) optionalLease(ctx context.Context, b *boardState) *leaseState {
	if ep, _ := endpointOf(ctx); ep.bySocket && token(ctx) == "" {
		s.mu.Lock()
		defer s.mu.Unlock()
		if l := s.leases[b.current]; l != nil {
			return l
		}
		return nil
	}
	tok := token(ctx)
	if tok == "" {
		return nil
	}
	hash := jobs.TokenHash(tok)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.tokens[hash]
	if l == nil {
		l = s.endedLease(hash)
	}
	if l == nil || l.board != b.name {
		return nil
	}
	return l
}
