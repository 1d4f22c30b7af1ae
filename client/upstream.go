package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Upstream Jumpstarter's client (its `j` command, its Python API, its pexpect
// sessions) reaches an exporter through JUMPSTARTER_HOST, a Unix socket, and names no
// board and no lease: on an upstream exporter the socket itself is the lease. An
// UpstreamSocket gives it one: a private Unix socket that forwards every call, whatever
// its service and method, streams included, to the supervisor serving the lease's
// board, with the board and the lease's token added. It is a transparent gRPC proxy:
// messages pass through undecoded, so every method of upstream's protocol (and of
// boardvisor's additions) passes without a stub of its own, and the supervisor's
// answers, codes and messages reach the client unchanged.
//
// The socket lives in a directory of its own made for it (mode 0700) and is itself
// mode 0600: only the user who runs the shell can reach it.

// UpstreamSocket is a running proxy for one lease.
type UpstreamSocket struct {
	// Path is the socket's path, for JUMPSTARTER_HOST.
	Path string
	// Labels are the board's labels and Motd the lease's message of the day, as
	// Describe last read them (GetReport).
	Labels map[string]string
	Motd   string

	dir   string // made for the socket; removed with it
	srv   *grpc.Server
	conn  *grpc.ClientConn
	proxy *proxy
	done  chan struct{}
	once  sync.Once
}

// UpstreamAllow is what upstream's client must be allowed to load for the tree
// boardvisor reports (JMP_DRIVERS_ALLOW): the client classes its labels name.
var UpstreamAllow = []string{"jumpstarter_driver_composite.*", "jumpstarter_driver_power.*", "jumpstarter_driver_pyserial.*"}

// ServeUpstream starts an upstream socket for the lease, at path, or, if path is "",
// in a directory made for it. It has a connection of its own to the lease's
// supervisor, so it may be served before the lease is READY (a client polling its
// status sees the beforeLease hook run and, if it fails, why). Close stops it.
func (c *Client) ServeUpstream(lease *pb.Lease, path string) (*UpstreamSocket, error) {
	conn, err := c.dial(lease.GetExporterEndpoint())
	if err != nil {
		return nil, fmt.Errorf("connect to exporter %s: %w", lease.GetExporterEndpoint(), err)
	}
	u, err := serveUpstream(conn, lease.GetBoard(), lease.GetToken(), path)
	if err != nil {
		conn.Close()
		return nil, err
	}
	u.conn = conn
	return u, nil
}

func serveUpstream(conn *grpc.ClientConn, board, token, path string) (*UpstreamSocket, error) {
	dir := ""
	if path == "" {
		base := os.Getenv("XDG_RUNTIME_DIR")
		if fi, err := os.Stat(base); base == "" || err != nil || !fi.IsDir() {
			base = ""
		}
		d, err := os.MkdirTemp(base, "boardvisor-jumpstarter-")
		if err != nil {
			return nil, fmt.Errorf("upstream socket: make its directory: %w", err)
		}
		dir, path = d, filepath.Join(d, "socket")
	}
	cleanup := func() {
		if dir != "" {
			os.RemoveAll(dir)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("upstream socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		cleanup()
		return nil, fmt.Errorf("upstream socket: %w", err)
	}
	p := &proxy{conn: conn, board: board, token: token}
	srv := grpc.NewServer(
		grpc.UnknownServiceHandler(p.forward),
		grpc.ForceServerCodec(rawCodec{}),
		grpc.MaxRecvMsgSize(proxyMaxMsg),
		grpc.MaxHeaderListSize(64<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	u := &UpstreamSocket{Path: path, dir: dir, srv: srv, proxy: p, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		srv.Serve(lis)
	}()
	return u, nil
}

// Describe reads the board's labels and the lease's message of the day (GetReport).
func (u *UpstreamSocket) Describe(ctx context.Context) error {
	ctx = metadata.AppendToOutgoingContext(ctx, exporter.MDBoard, u.proxy.board, "authorization", "Bearer "+u.proxy.token)
	rep, err := jpb.NewExporterServiceClient(u.proxy.conn).GetReport(ctx, &emptypb.Empty{})
	if err != nil {
		return fmt.Errorf("describe board %s: %s", u.proxy.board, statusText(err))
	}
	u.Labels, u.Motd = rep.GetLabels(), rep.GetMotd()
	return nil
}

// Env is what upstream's `jmp shell` puts in a lease's shell, for this socket:
// JUMPSTARTER_HOST, the drivers upstream's client may load, the exporter's name and
// labels, and the lease.
func (u *UpstreamSocket) Env(board, lease string) []string {
	keys := make([]string, 0, len(u.Labels))
	for k := range u.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pairs := make([]string, 0, len(keys))
	for _, k := range keys {
		pairs = append(pairs, k+"="+u.Labels[k])
	}
	return []string{
		"JUMPSTARTER_HOST=" + u.Path,
		"JMP_DRIVERS_ALLOW=" + strings.Join(UpstreamAllow, ","),
		"_JMP_SUPPRESS_DRIVER_WARNINGS=1",
		"JMP_EXPORTER=" + board,
		"JMP_EXPORTER_LABELS=" + strings.Join(pairs, ","),
		"JMP_LEASE=" + lease,
	}
}

// Close stops the socket (open calls end) and removes it (with its directory, if it
// made one).
func (u *UpstreamSocket) Close() {
	u.once.Do(func() {
		u.srv.Stop()
		<-u.done
		if u.conn != nil {
			u.conn.Close()
		}
		os.Remove(u.Path)
		if u.dir != "" {
			os.RemoveAll(u.dir)
		}
	})
}

// proxyMaxMsg bounds one message through the socket (the supervisor's own bound).
const proxyMaxMsg = 4 << 20

type proxy struct {
	conn         *grpc.ClientConn
	board, token string
}

// dropped are the metadata keys a client's call does not pass on: gRPC's own, and
// those that choose the board and the lease, which the proxy sets.
func dropped(key string) bool {
	switch key {
	case "authorization", exporter.MDBoard, exporter.MDPassphrase, exporter.MDUpstream, "content-type", "user-agent", "te", ":authority":
		return true
	}
	return strings.HasPrefix(key, "grpc-")
}

// forward passes one call of any method to the supervisor and its answer back.
func (p *proxy) forward(_ any, in grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(in)
	if !ok {
		return errors.New("no method")
	}
	md := metadata.MD{}
	inMD, _ := metadata.FromIncomingContext(in.Context())
	for k, v := range inMD {
		if !dropped(k) {
			md[k] = v
		}
	}
	md.Set(exporter.MDBoard, p.board)
	md.Set("authorization", "Bearer "+p.token)
	md.Set(exporter.MDUpstream, "1")
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(in.Context(), md))
	defer cancel()
	out, err := p.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method,
		grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(proxyMaxMsg))
	if err != nil {
		return err
	}
	// The client's messages go on as they come; its end of sending is passed on too.
	// This goroutine ends with the call (both streams fail once ctx is done).
	go func() {
		for {
			var f rawFrame
			if err := in.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					out.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := out.SendMsg(&f); err != nil {
				return
			}
		}
	}()
	// Headers are passed on as soon as they come, before any message: upstream's
	// client waits for a byte stream's headers before it sends.
	hdr, err := out.Header()
	if err == nil && hdr != nil {
		if err := in.SendHeader(hdr); err != nil {
			return err
		}
	}
	for {
		var f rawFrame
		if err := out.RecvMsg(&f); err != nil {
			in.SetTrailer(out.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := in.SendMsg(&f); err != nil {
			return err
		}
	}
}

// rawFrame is one message as bytes, never decoded.
type rawFrame []byte

// rawCodec passes messages through as they are on the wire.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	f, ok := v.(*rawFrame)
	if !ok {
		return nil, fmt.Errorf("proxy: cannot send %T", v)
	}
	return *f, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	f, ok := v.(*rawFrame)
	if !ok {
		return fmt.Errorf("proxy: cannot receive into %T", v)
	}
	*f = append((*f)[:0], data...)
	return nil
}

// dial connects to a supervisor's client service (Client.Dial, or plaintext gRPC).
func (c *Client) dial(endpoint string) (*grpc.ClientConn, error) {
	if c.Dial != nil {
		return c.Dial(endpoint)
	}
	return grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
}
