package supervisor

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits of the client-facing gRPC server: oversized messages are refused, and one
// connection cannot open streams without bound.
const (
	MaxRecvMsgSize       = 4 << 20
	MaxConcurrentStreams = 256
	MaxHeaderListSize    = 64 << 10
)

// NewGRPCServer returns a gRPC server with the supervisor's limits.
func NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		// Metadata counts apart from messages: without this bound a call could carry
		// megabytes of headers.
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second, MaxConnectionIdle: 5 * time.Minute}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}, opts...)...)
}
