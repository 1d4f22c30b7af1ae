package exporter

import (
	"context"
	"encoding/json"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MDStreamRequest is the metadata key of RouterService.Stream that says which byte
// stream the caller wants, as upstream's client writes it: JSON
// {"kind":"driver","uuid":"<driver uuid>","method":"connect"}.
const MDStreamRequest = "request"

// streamRequest is the value of MDStreamRequest.
type streamRequest struct {
	Kind   string `json:"kind"`
	UUID   string `json:"uuid"`
	Method string `json:"method"`
}

// ConsoleStreamRequest is the MDStreamRequest value that opens board's console byte
// stream (its serial driver's "connect"), as upstream's client writes it.
func ConsoleStreamRequest(board string) string {
	b, _ := json.Marshal(streamRequest{Kind: "driver", UUID: DriverUUID(board, driverConsole), Method: "connect"}) // strings only: cannot fail
	return string(b)
}

// router serves jumpstarter.v1.RouterService on the exporter's channel: the console's
// byte stream (upstream's serial "connect"), both ways, in upstream's frames. DATA
// frames carry bytes; GOAWAY (or the end of the client's side) means the client sends
// no more, and the console goes on to it; RST_STREAM ends the stream; PING is ignored.
// The service ends the stream with a GOAWAY frame when the lease ends or the serial
// driver's close is called. A reader that does not keep up misses console bytes (the
// board does not wait for it).
type router struct {
	jpb.UnimplementedRouterServiceServer
	s *Service
}

func (r router) Stream(stream grpc.BidiStreamingServer[jpb.StreamRequest, jpb.StreamResponse]) error {
	s, ctx := r.s, stream.Context()
	var req streamRequest
	raw := md(ctx, MDStreamRequest)
	if raw == "" {
		return status.Error(codes.InvalidArgument, `no stream named: the "request" metadata key must hold {"kind":"driver","uuid":"<driver uuid>","method":"connect"}`)
	}
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		return status.Errorf(codes.InvalidArgument, `the "request" metadata key is not a stream request: %v`, err)
	}
	if req.Kind != "driver" {
		return status.Errorf(codes.Unimplemented, "%q streams are not served by boardvisor (only a driver's byte stream is)", req.Kind)
	}
	l, _, err := s.authorizeDriver(ctx)
	if err != nil {
		return err
	}
	drv, byUUID, err := s.resolve(l.board, req.UUID)
	if err != nil {
		return err
	}
	if drv != driverConsole || !byUUID || req.Method != "connect" {
		return notFound(req.Method)
	}
	cons, ok := s.drivers.(Consoles)
	if !ok {
		return status.Errorf(codes.Unimplemented, "board %s has no console to stream", l.board)
	}
	closed := make(chan struct{})
	s.mu.Lock()
	select {
	case <-l.ended:
		s.mu.Unlock()
		return status.Errorf(codes.FailedPrecondition, "the lease on board %s has ended", l.board)
	default:
	}
	if limit := orDefault(s.Limits.MaxConsoleStreamsPerLease, DefaultMaxConsoleStreamsPerLease); len(l.consoles) >= limit {
		s.mu.Unlock()
		return status.Errorf(codes.ResourceExhausted, "too many console streams open for this lease (%d, the most allowed): close one and try again", limit)
	}
	if l.consoles == nil {
		l.consoles = map[chan struct{}]bool{}
	}
	l.consoles[closed] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if l.consoles[closed] {
			delete(l.consoles, closed)
			close(closed)
		}
		s.mu.Unlock()
	}()
	// Upstream's client waits for the stream's headers before it sends.
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	out, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-closed:
		case <-out.Done():
		}
		cancel()
	}()
	// The client's side: bytes typed into the console. This goroutine ends when the
	// client's side does, or when the call is over (Recv then fails).
	written := make(chan error, 1)
	go func() {
		for {
			f, err := stream.Recv()
			if err != nil { // io.EOF: the client sends no more; the console goes on
				return
			}
			switch f.GetFrameType() {
			case jpb.FrameType_FRAME_TYPE_DATA:
				if _, err := cons.WriteConsole(l.board, f.GetPayload()); err != nil {
					written <- err
					cancel()
					return
				}
			case jpb.FrameType_FRAME_TYPE_GOAWAY:
				return
			case jpb.FrameType_FRAME_TYPE_RST_STREAM:
				cancel()
				return
			}
		}
	}()
	err = cons.AttachConsole(out, l.board, func(p []byte) error {
		return stream.Send(&jpb.StreamResponse{Payload: p, FrameType: jpb.FrameType_FRAME_TYPE_DATA})
	})
	select {
	case werr := <-written:
		return status.Errorf(codes.Unavailable, "write to the console of board %s: %v", l.board, werr)
	default:
	}
	if err != nil {
		return toStatus(err)
	}
	if ctx.Err() == nil {
		// The lease ended or the stream was closed: say so the way upstream does.
		if err := stream.Send(&jpb.StreamResponse{FrameType: jpb.FrameType_FRAME_TYPE_GOAWAY}); err != nil {
			return err
		}
	}
	return nil
}
