package main

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A peer's own limit is shown in its words; gRPC's message-size refusal keeps its
// "overloaded or too large" reading.
func TestResourceExhaustedIsWordedByWhoRefused(t *testing.T) {
	p := peer{role: "supervisor of board rpi", addr: "lab:7000"}
	for _, c := range []struct{ msg, want string }{
		{"too many console streams open for this lease (16, the most allowed): close one and try again",
			"console of board rpi: the supervisor of board rpi at lab:7000 refused it: too many console streams open for this lease (16, the most allowed): close one and try again"},
		{"grpc: received message larger than max (5000000 vs. 4194304)",
			"console of board rpi: the supervisor of board rpi at lab:7000 is overloaded or the request is too large: grpc: received message larger than max (5000000 vs. 4194304)"},
	} {
		err := rpcError(p, "console of board rpi", status.Error(codes.ResourceExhausted, c.msg))
		ce, ok := err.(*cliError)
		if !ok || ce.msg != c.want || ce.code != exitFailed {
			t.Errorf("rpcError(%q) = %v, want %q (exit %d)", c.msg, err, c.want, exitFailed)
		}
	}
}
