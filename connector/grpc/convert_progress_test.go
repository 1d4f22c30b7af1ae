package grpc

import (
	"testing"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// A progress line keeps its flag and offset on the wire.
func TestToProtoProgressLine(t *testing.T) {
	for _, progress := range []bool{false, true} {
		h := ToProto(connector.Event{Seq: 3, Board: "b", JobID: "j", Hook: &connector.HookLine{
			Source: jobs.SourceBeforeLeaseHook, Text: "flashing 40%", Progress: progress, Offset: 19}}).GetHookLog()
		if h.GetProgress() != progress || h.GetText() != "flashing 40%" || h.GetOffset() != 19 {
			t.Errorf("progress %v: HookLog = %v", progress, h)
		}
	}
}
