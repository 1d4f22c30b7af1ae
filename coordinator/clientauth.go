package coordinator

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// User is a client known to the coordinator by its token.
type User struct {
	Name  string
	Admin bool // may put boards in maintenance and end anyone's lease
}

// ClientTokens maps a client's token to who it is. Tokens are compared as SHA-256
// digests against every entry, in constant time.
type ClientTokens map[string]User

func (t ClientTokens) lookup(token string) (User, bool) {
	h := sha256.Sum256([]byte(token))
	var found User
	ok := 0
	for tok, u := range t {
		th := sha256.Sum256([]byte(tok))
		if subtle.ConstantTimeCompare(h[:], th[:]) == 1 {
			found, ok = u, 1
		}
	}
	return found, ok == 1
}

type userKey struct{}

// userOf returns the authenticated user of a call, and false when client
// authentication is off.
func userOf(ctx context.Context) (User, bool) {
	u, ok := ctx.Value(userKey{}).(User)
	return u, ok
}

// authenticate checks a LeaseService call's token; the link's calls authenticate
// themselves (supervisor tokens).
func (c *Coordinator) authenticate(ctx context.Context, method string) (context.Context, error) {
	if !strings.HasPrefix(method, "/"+pb.LeaseService_ServiceDesc.ServiceName+"/") {
		return ctx, nil // the supervisor link checks its own tokens
	}
	if c.clientTokens() == nil {
		c.authenticated(ctx)
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	var token string
	for _, v := range md.Get("authorization") {
		if t, ok := strings.CutPrefix(v, "Bearer "); ok {
			token = t
		}
	}
	if token == "" {
		c.refused(ctx, "no client token", method)
		return nil, status.Error(codes.Unauthenticated, "no client token: send authorization: Bearer <your token> (boardvisor: BOARDVISOR_USER_TOKEN)")
	}
	u, ok := c.clientTokens().lookup(token)
	if !ok {
		c.refused(ctx, "unknown client token", method)
		return nil, status.Error(codes.Unauthenticated, "client token not accepted by the coordinator")
	}
	c.authenticated(ctx)
	if method == pb.LeaseService_SetBoardMaintenance_FullMethodName && !u.Admin {
		c.refused(ctx, "maintenance by a non-admin: "+u.Name, method)
		return nil, status.Errorf(codes.PermissionDenied, "only an admin may put boards in or out of maintenance (%s is not one)", u.Name)
	}
	if method == pb.LeaseService_MoveBoard_FullMethodName && !u.Admin {
		c.refused(ctx, "MoveBoard by a non-admin: "+u.Name, method)
		return nil, status.Errorf(codes.PermissionDenied, "only an admin may move a board to another supervisor (%s is not one)", u.Name)
	}
	return context.WithValue(ctx, userKey{}, u), nil
}

func (c *Coordinator) refused(ctx context.Context, reason, method string) {
	c.auditRefusal(peerAddr(ctx), "", "", reason+" ("+method+")")
}

// ServerOptions are the interceptors the coordinator's gRPC server needs (client
// authentication when ClientTokens is set), and a tap that refuses a WatchLease over its
// user's cap before the stream is even created (so a flood of them costs little).
func (c *Coordinator) ServerOptions() []ggrpc.ServerOption {
	return []ggrpc.ServerOption{
		ggrpc.InTapHandle(c.tapWatch),
		ggrpc.ChainUnaryInterceptor(c.standbyUnary, func(ctx context.Context, req any, info *ggrpc.UnaryServerInfo, h ggrpc.UnaryHandler) (any, error) {
			ctx, err := c.authenticate(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		ggrpc.ChainStreamInterceptor(c.standbyStream, func(srv any, ss ggrpc.ServerStream, info *ggrpc.StreamServerInfo, h ggrpc.StreamHandler) error {
			ctx, err := c.authenticate(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, &authedStream{ServerStream: ss, ctx: ctx})
		}),
	}
}

// standbyUnary refuses every call on a standby (leader.go), and answers a call that
// was running when the coordinator stood down with the standby's refusal.
func (c *Coordinator) standbyUnary(ctx context.Context, req any, _ *ggrpc.UnaryServerInfo, h ggrpc.UnaryHandler) (any, error) {
	period, active := c.activePeriod()
	if !active {
		return nil, c.standbyError()
	}
	resp, err := h(ctx, req)
	if err != nil && period.Err() != nil {
		return nil, c.standbyError()
	}
	return resp, err
}

// standbyStream refuses every stream (supervisor links, watches, logs) on a standby,
// and ends those open when the coordinator stands down, telling them to go elsewhere.
func (c *Coordinator) standbyStream(srv any, ss ggrpc.ServerStream, _ *ggrpc.StreamServerInfo, h ggrpc.StreamHandler) error {
	period, active := c.activePeriod()
	if !active {
		return c.standbyError()
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stop := context.AfterFunc(period, cancel)
	defer stop()
	err := h(srv, &authedStream{ServerStream: ss, ctx: ctx})
	if period.Err() != nil {
		return c.standbyError()
	}
	return err
}

type authedStream struct {
	ggrpc.ServerStream
	ctx context.Context
}

func (s *authedStream) Context() context.Context { return s.ctx }

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return "unknown"
}
