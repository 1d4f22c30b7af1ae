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
	"google.golang.org/protobuf/reflect/protoreflect"
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

	// The status follows the lease's events through the outbox's sinks, just after the
	// connector has them: poll it, as upstream's client does.
	var got map[string]string
	poll(t, "GetStatus to say LEASE_READY", func() bool {
		var status []byte
		if err := h.conn.Invoke(ctx, "/jumpstarter.v1.ExporterService/GetStatus", &jpb.GetStatusRequest{}, &status, grpc.ForceCodec(raw)); err != nil {
			t.Fatal(err)
		}
		got = upstreamDecode(t, "GetStatusResponse", status)
		return got["status"] == "4"
	})
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

// upstreamSchema is upstream Jumpstarter's field numbers of every message boardvisor
// serves to upstream clients (protocol/proto/jumpstarter/v1/jumpstarter.proto and
// router.proto at upstream commit b1f2bb4), written down apart from our .proto on
// purpose, and the methods of its two services on the exporter's channel.
var upstreamSchema = map[string]map[protowire.Number]string{
	"DriverInstanceReport":        {1: "uuid", 2: "parent_uuid", 3: "labels", 4: "description", 5: "methods_description"},
	"GetReportResponse":           {1: "uuid", 2: "labels", 3: "reports", 4: "alternative_endpoints", 5: "motd"},
	"Endpoint":                    {1: "endpoint", 2: "certificate", 3: "client_certificate", 4: "client_private_key"},
	"DriverCallRequest":           {1: "uuid", 2: "method", 3: "args"},
	"DriverCallResponse":          {1: "uuid", 2: "result"},
	"StreamingDriverCallRequest":  {1: "uuid", 2: "method", 3: "args"},
	"StreamingDriverCallResponse": {1: "uuid", 2: "result"},
	"LogStreamResponse":           {1: "uuid", 2: "severity", 3: "message", 4: "source", 5: "driver_type", 6: "operation", 7: "timestamp", 8: "structured_fields"},
	"GetStatusResponse":           {1: "status", 2: "message", 3: "status_version", 4: "previous_status"},
	"EndSessionResponse":          {1: "success", 2: "message"},
	"StreamRequest":               {1: "payload", 2: "frame_type"},
	"StreamResponse":              {1: "payload", 2: "frame_type"},
}

var upstreamMethods = map[string][]string{
	"ExporterService": {"GetReport", "DriverCall", "StreamingDriverCall", "LogStream", "Reset", "GetStatus", "EndSession"},
	"RouterService":   {"Stream"},
}

// Every field upstream defines has the same number and name in ours (ours may add
// fields at high numbers: upstream's clients skip them), and every method of upstream's
// services is in ours.
func TestOurSchemaHasUpstreamsFieldNumbers(t *testing.T) {
	files := []protoreflect.FileDescriptor{jpb.File_jumpstarter_v1_jumpstarter_proto, jpb.File_jumpstarter_v1_router_proto}
	find := func(name string) protoreflect.MessageDescriptor {
		for _, f := range files {
			if m := f.Messages().ByName(protoreflect.Name(name)); m != nil {
				return m
			}
		}
		return nil
	}
	for msg, fields := range upstreamSchema {
		m := find(msg)
		if m == nil {
			t.Errorf("message %s is missing", msg)
			continue
		}
		for num, name := range fields {
			f := m.Fields().ByNumber(num)
			if f == nil || string(f.Name()) != name {
				t.Errorf("%s field %d: ours is %v, upstream's is %s", msg, num, f, name)
			}
		}
	}
	for svc, methods := range upstreamMethods {
		var sd protoreflect.ServiceDescriptor
		for _, f := range files {
			if s := f.Services().ByName(protoreflect.Name(svc)); s != nil {
				sd = s
			}
		}
		if sd == nil || sd.ParentFile().Package() != "jumpstarter.v1" {
			t.Errorf("service jumpstarter.v1.%s is missing", svc)
			continue
		}
		for _, m := range methods {
			if sd.Methods().ByName(protoreflect.Name(m)) == nil {
				t.Errorf("%s.%s is missing", svc, m)
			}
		}
	}
}

// GetReport decoded by upstream's field numbers: the tree upstream's client builds.
func TestUpstreamClientReadsOurReport(t *testing.T) {
	h := startClientService(t, board.Config{Name: "rpi", Labels: map[string]string{"device": "rpi4"}})
	var raw []byte
	if err := h.conn.Invoke(callCtx(t, "rpi", ""), "/jumpstarter.v1.ExporterService/GetReport", &emptypb.Empty{}, &raw, grpc.ForceCodec(rawCodec{})); err != nil {
		t.Fatal(err)
	}
	var reports []map[string]string
	labels := map[string]string{}
	for b := raw; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		if typ != protowire.BytesType {
			t.Fatalf("GetReportResponse field %d has wire type %d", num, typ)
		}
		v, n := protowire.ConsumeBytes(b)
		b = b[n:]
		switch upstreamSchema["GetReportResponse"][num] {
		case "labels":
			kv := upstreamDecode(t, "MapEntry", v)
			labels[kv["key"]] = kv["value"]
		case "reports":
			r := map[string]string{}
			for rb := v; len(rb) > 0; {
				num, _, n := protowire.ConsumeTag(rb)
				rb = rb[n:]
				fv, n := protowire.ConsumeBytes(rb)
				rb = rb[n:]
				switch name := upstreamSchema["DriverInstanceReport"][num]; name {
				case "labels":
					kv := upstreamDecode(t, "MapEntry", fv)
					r["label "+kv["key"]] = kv["value"]
				default:
					r[name] = string(fv)
				}
			}
			reports = append(reports, r)
		}
	}
	if labels["device"] != "rpi4" || len(reports) != 3 {
		t.Fatalf("upstream decoding of GetReport: labels %v, %d reports", labels, len(reports))
	}
	root := reports[0]
	if root["parent_uuid"] != "" || root["label jumpstarter.dev/client"] != "jumpstarter_driver_composite.client.CompositeClient" {
		t.Fatalf("root report: %v", root)
	}
	for _, r := range reports[1:] {
		if r["parent_uuid"] != root["uuid"] || r["label jumpstarter.dev/name"] == "" {
			t.Fatalf("child report: %v", r)
		}
	}
}

func init() { upstreamFields["MapEntry"] = map[protowire.Number]string{1: "key", 2: "value"} }
