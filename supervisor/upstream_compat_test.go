package supervisor

import (
	"fmt"
	"testing"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/jobs"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// upstream Jumpstarter's field numbers (protocol/proto/jumpstarter/v1, read at upstream
// commit b1f2bb4), written down here apart from our .proto on purpose: a client generated
// from upstream's files reads our answers with exactly these.
var upstreamFields = map[string]map[protowire.Number]string{
	"GetStatusResponse": {1: "status", 2: "message", 3: "status_version", 4: "previous_status"},
	"LogStreamResponse": {1: "uuid", 2: "severity", 3: "message", 4: "source"},
}

// upstreamDecode decodes a message's bytes by upstream's field numbers into name=value,
// as a stub generated from upstream's protos would; fields it does not know are skipped
// (our additions), exactly as protobuf does.
func upstreamDecode(t *testing.T, msg string, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("%s: bad tag", msg)
		}
		b = b[n:]
		name := upstreamFields[msg][num]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			b = b[n:]
			if name != "" {
				out[name] = fmt.Sprint(v)
			}
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
			if name != "" {
				out[name] = string(v)
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				t.Fatalf("%s: bad field %d", msg, num)
			}
			b = b[n:]
		}
	}
	return out
}

// rawCodec sends protobuf messages and hands the test the bytes it receives, undecoded.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }
func (rawCodec) Name() string                  { return "proto" }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func TestUpstreamClientReadsOurAnswers(t *testing.T) {
	h := startClientService(t, board.Config{Name: "rpi", Before: hookCfg("echo 'JMP_WARN: slow flash'", jobs.PolicyEndLease, wait)})
	job := h.startJob("rpi", withToken("tok"))
	h.waitPhase(job, jobs.PhaseReady)
	raw := rawCodec{}
	ctx := callCtx(t, "rpi", "tok")

	var status []byte
	if err := h.conn.Invoke(ctx, "/jumpstarter.v1.ExporterService/GetStatus", &jpb.GetStatusRequest{}, &status, grpc.ForceCodec(raw)); err != nil {
		t.Fatal(err)
	}
	got := upstreamDecode(t, "GetStatusResponse", status)
	// LEASE_READY is 4 upstream; the version counts changes; the previous status was
	// BEFORE_LEASE_HOOK (3).
	if got["status"] != "4" || got["previous_status"] != "3" || got["status_version"] == "" {
		t.Fatalf("upstream decoding of GetStatus: %v", got)
	}

	desc := &grpc.StreamDesc{StreamName: "LogStream", ServerStreams: true}
	stream, err := h.conn.NewStream(ctx, desc, "/jumpstarter.v1.ExporterService/LogStream", grpc.ForceCodec(raw))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	// The log starts with SYSTEM (4) phase markers; the hook's line follows them.
	var line map[string]string
	for line["source"] != "2" {
		var b []byte
		if err := stream.RecvMsg(&b); err != nil {
			t.Fatal(err)
		}
		line = upstreamDecode(t, "LogStreamResponse", b)
		if s := line["source"]; s != "2" && s != "4" {
			t.Fatalf("upstream decoding of LogStream: source %q: %v", s, line)
		}
	}
	// BEFORE_LEASE_HOOK is LogSource 2 upstream; severity is upstream's string field.
	if line["uuid"] != "rpi" || line["severity"] != "WARNING" || line["message"] != "slow flash" || line["source"] != "2" {
		t.Fatalf("upstream decoding of LogStream: %v", line)
	}
}
