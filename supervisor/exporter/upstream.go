package exporter

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// Driver calls by UUID are upstream Jumpstarter's: the methods its client classes call,
// with google.protobuf.Value arguments and results as upstream encodes them (a method
// returning nothing returns a null Value), and its status codes:
//
//	NOT_FOUND         the driver or method does not exist (upstream: "method X not found on driver")
//	INVALID_ARGUMENT  wrong arguments
//	UNIMPLEMENTED     the interface has the method, this board's hardware cannot do it
//	FAILED_PRECONDITION  the lease will never be READY (upstream's client: ExporterNotReady)
//
// power (PowerClient): on(), off(); read() streams readings, which boardvisor's power
// drivers cannot measure (UNIMPLEMENTED). serial (PySerialClient): connect is the byte
// stream over RouterService.Stream (router.go); close() closes the lease's open
// console streams; set_dtr and set_rts are not served (UNIMPLEMENTED). The root
// (CompositeClient) has no methods.

// Consoles is implemented by a Drivers that gives raw access to a board's console (the
// devices manager): upstream's serial "connect" byte stream is built on it.
type Consoles interface {
	// AttachConsole calls out with the board's console output, chunk by chunk, until
	// ctx is done (it then returns nil) or out fails. A reader that does not keep up
	// misses bytes.
	AttachConsole(ctx context.Context, board string, out func([]byte) error) error
	// WriteConsole types p into the board's console.
	WriteConsole(board string, p []byte) (int, error)
}

func notFound(method string) error {
	return status.Errorf(codes.NotFound, "method %s not found on driver", method)
}

func (s *Service) upstreamCall(ctx context.Context, l *leaseState, drv, method string, args []*structpb.Value) (*structpb.Value, error) {
	switch drv + "." + method {
	case "power.on", "power.off":
		if len(args) != 0 {
			return nil, status.Errorf(codes.InvalidArgument, "%s takes no arguments", method)
		}
		if _, err := s.drivers.Call(ctx, l.board, driverPower, method, nil); err != nil {
			return nil, err
		}
		return structpb.NewNullValue(), nil
	case "power.read":
		return nil, status.Errorf(codes.InvalidArgument, "read is a streaming method: call it with StreamingDriverCall")
	case "console.close":
		s.mu.Lock()
		for c := range l.consoles {
			close(c)
		}
		clear(l.consoles)
		s.mu.Unlock()
		return structpb.NewNullValue(), nil
	case "console.set_dtr", "console.set_rts":
		return nil, status.Errorf(codes.Unimplemented, "%s: boardvisor does not drive the console's modem-control lines", method)
	case "console.connect":
		return nil, status.Error(codes.InvalidArgument, "connect is a byte stream: open it with RouterService.Stream")
	}
	return nil, notFound(method)
}

func (s *Service) upstreamStream(l *leaseState, drv, method string) error {
	if drv+"."+method == "power.read" {
		return status.Errorf(codes.Unimplemented, "read: the power control of board %s does not measure voltage or current", l.board)
	}
	return notFound(method)
}
