package client

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Failover is a connection to several coordinators (one active, the others standing
// by, on one PostgreSQL): a call goes to the one that answered last; when it answers
// Unavailable (a standby, a coordinator that stood down or is unreachable), the call
// is tried on the next, each once. Streams are opened on the current one; a stream
// that ends Unavailable makes the next call or stream go to the next coordinator.
type Failover struct {
	conns []*grpc.ClientConn
	addrs []string

	mu  sync.Mutex
	cur int
}

var _ grpc.ClientConnInterface = (*Failover)(nil)

// NewFailover dials (lazily, as grpc.NewClient does) every address with opts.
func NewFailover(addrs []string, opts ...grpc.DialOption) (*Failover, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no coordinator address")
	}
	f := &Failover{addrs: addrs}
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, opts...)
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		f.conns = append(f.conns, cc)
	}
	return f, nil
}

// Close closes every connection.
func (f *Failover) Close() error {
	var err error
	for _, cc := range f.conns {
		err = errors.Join(err, cc.Close())
	}
	return err
}

func (f *Failover) current() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur
}

// failed moves on from conn i, unless another call already did.
func (f *Failover) failed(i int) {
	f.mu.Lock()
	if f.cur == i {
		f.cur = (i + 1) % len(f.conns)
	}
	f.mu.Unlock()
}

// Invoke runs a unary call on the current coordinator, then on each other in turn while
// they answer Unavailable.
func (f *Failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	i := f.current()
	var err error
	for range f.conns {
		err = f.conns[i].Invoke(ctx, method, args, reply, opts...)
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		f.failed(i)
		i = (i + 1) % len(f.conns)
	}
	return err
}

// NewStream opens a stream on the current coordinator. A stream's refusal comes with
// its first message: a server stream (one request, then replies) refused Unavailable
// before its first reply is opened again on the next coordinator, each once; any
// stream that ends Unavailable moves the next call on.
func (f *Failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	i := f.current()
	s, err := f.conns[i].NewStream(ctx, desc, method, opts...)
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			f.failed(i)
		}
		return nil, err
	}
	return &failoverStream{ClientStream: s, f: f, i: i, ctx: ctx, desc: desc, method: method, opts: opts,
		retry: desc.ServerStreams && !desc.ClientStreams}, nil
}

type failoverStream struct {
	grpc.ClientStream
	f *Failover
	i int

	ctx    context.Context
	desc   *grpc.StreamDesc
	method string
	opts   []grpc.CallOption
	retry  bool // a server stream that has received nothing yet
	req    any  // its request
	closed bool // CloseSend was called
}

func (s *failoverStream) SendMsg(m any) error {
	if s.retry {
		s.req = m
	}
	return s.ClientStream.SendMsg(m)
}

func (s *failoverStream) CloseSend() error {
	s.closed = true
	return s.ClientStream.CloseSend()
}

func (s *failoverStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	for tries := 1; status.Code(err) == codes.Unavailable && s.ctx.Err() == nil; tries++ {
		s.f.failed(s.i)
		if !s.retry || s.req == nil || !s.closed || tries >= len(s.f.conns) {
			return err
		}
		s.i = (s.i + 1) % len(s.f.conns)
		cs, nerr := s.f.conns[s.i].NewStream(s.ctx, s.desc, s.method, s.opts...)
		if nerr != nil {
			return err
		}
		if serr := cs.SendMsg(s.req); serr != nil {
			return err
		}
		if cerr := cs.CloseSend(); cerr != nil {
			return err
		}
		s.ClientStream = cs
		err = cs.RecvMsg(m)
	}
	if err == nil {
		s.retry, s.req = false, nil
	}
	return err
}
