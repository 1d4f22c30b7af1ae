package coordinator

import (
	"bytes"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// checkConsoleLogJSON holds appendConsoleLogJSON to what the events table's readers
// need: protojson reads back the message written, what was before it in the buffer is
// kept, and a message it gives to protojson is one it cannot write as protojson would.
func checkConsoleLogJSON(t *testing.T, m *pb.ConsoleLog) {
	t.Helper()
	prefix := []byte("kept")
	out, ok := appendConsoleLogJSON(append([]byte(nil), prefix...), m)
	if !bytes.HasPrefix(out, prefix) {
		t.Fatalf("%v: the buffer's first bytes were overwritten: %q", m, out)
	}
	if !ok {
		if len(out) != len(prefix) {
			t.Fatalf("%v: refused, but the buffer grew to %q", m, out)
		}
		_, known := jpb.LogSource_name[int32(m.GetSource())]
		if known && plainJSONString(m.GetJobId()) && plainJSONString(m.GetBoard()) {
			t.Fatalf("%v: refused a message it can write", m)
		}
		return
	}
	got := &pb.ConsoleLog{}
	if err := protojson.Unmarshal(out[len(prefix):], got); err != nil {
		t.Fatalf("%v: protojson cannot read %q: %v", m, out[len(prefix):], err)
	}
	if !proto.Equal(got, m) {
		t.Fatalf("%q reads back as %v, want %v", out[len(prefix):], got, m)
	}
}

func TestConsoleLogJSONReadsBackAsWritten(t *testing.T) {
	for _, m := range []*pb.ConsoleLog{
		{},
		{Board: "b0001"},
		{JobId: "2b4c1d0e-7f5a-4c1b-9d1e-0a6b8c3d2e1f", Board: "rpi-4", Source: jpb.LogSource_LOG_SOURCE_DRIVER, Data: []byte("U-Boot 2024.01\r\n=> "), Offset: 1 << 40},
		{Data: []byte{0, 0xff, '"', '\\', 0x1b, '\n'}},
		{Board: `quote"d`, Data: []byte("x")},    // escaped: protojson's
		{Board: "tab\there"},                     // escaped: protojson's
		{Board: "b\u00fcro", Data: []byte("x")},  // not ASCII: protojson's
		{Source: jpb.LogSource(99), Board: "b1"}, // no name: protojson's
		{Offset: ^uint64(0), Source: jpb.LogSource_LOG_SOURCE_SYSTEM},
	} {
		checkConsoleLogJSON(t, m)
	}
}

// The console kind is written without protojson; every other kind, and a console event
// this cannot write, is protojson's, and all of them read back.
func TestMarshalPayloadOfEveryKindReadsBack(t *testing.T) {
	for _, ev := range []*pb.Event{
		{Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{Board: "b1", Data: []byte("login: ")}}},
		{Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{Board: "b\u00fcro", Data: []byte("x")}}},
		{Body: &pb.Event_HookLog{HookLog: &pb.HookLog{Board: "b1", Text: "flashing \"image\""}}},
		{Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: "j", Board: "b1"}}},
	} {
		out, err := marshalPayload(ev)
		if err != nil {
			t.Fatalf("%v: %v", ev, err)
		}
		body := proto.Clone(eventBody(ev))
		proto.Reset(body)
		if err := protojson.Unmarshal(out, body); err != nil {
			t.Fatalf("%v: protojson cannot read %q: %v", ev, out, err)
		}
		if !proto.Equal(body, eventBody(ev)) {
			t.Fatalf("%q reads back as %v, want %v", out, body, eventBody(ev))
		}
	}
}

func FuzzConsoleLogJSON(f *testing.F) {
	f.Add("", "", int32(0), []byte(nil), uint64(0))
	f.Add("2b4c1d0e-7f5a-4c1b-9d1e-0a6b8c3d2e1f", "b0999", int32(jpb.LogSource_LOG_SOURCE_DRIVER), []byte("=> boot\r\n"), uint64(230400))
	f.Add("j\"", "b\\", int32(3), []byte{0xff, 0}, uint64(1))
	f.Add("\u2028", "\xff", int32(-1), []byte("x"), ^uint64(0))
	f.Fuzz(func(t *testing.T, job, board string, source int32, data []byte, offset uint64) {
		m := &pb.ConsoleLog{JobId: job, Board: board, Source: jpb.LogSource(source), Data: data, Offset: offset}
		if _, err := protojson.Marshal(m); err != nil {
			// Not a message the link lets through (a string that is not UTF-8): the
			// fast path must refuse it too, so that protojson's error is the one seen.
			if out, ok := appendConsoleLogJSON(nil, m); ok {
				t.Fatalf("%v: protojson refuses it (%v) but it was written as %q", m, err, out)
			}
			return
		}
		checkConsoleLogJSON(t, m)
	})
}

func BenchmarkConsolePayload(b *testing.B) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 12) // 192 bytes: one board's 16 ms at 115200 baud
	ev := &pb.Event{Body: &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{JobId: "2b4c1d0e-7f5a-4c1b-9d1e-0a6b8c3d2e1f", Board: "b0001", Source: jpb.LogSource_LOG_SOURCE_DRIVER, Data: data, Offset: 1 << 20}}}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			if _, err := marshalPayload(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protojson", func(b *testing.B) {
		for b.Loop() {
			if _, err := protojson.Marshal(eventBody(ev)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
