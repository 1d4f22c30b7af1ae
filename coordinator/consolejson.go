package coordinator

import (
	"encoding/base64"
	"slices"
	"strconv"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// Console events are most of what a farm's supervisors send (a thousand boards at
// 115200 baud: about a thousand events a second, 11 MB/s of bytes), and protojson's
// reflection took a quarter of the coordinator's CPU on the console bench, most of it
// going over the base64 of the bytes a character at a time to escape what never needs
// it. So a ConsoleLog is written here directly, in the same proto3 JSON that
// protojson.Marshal writes and every reader of the events table parses with
// protojson.Unmarshal: field names in lowerCamelCase, fields at their zero value left
// out, the enum by its name, the bytes in standard base64 with padding, the uint64 as a
// quoted decimal. A message this does not cover exactly (a string that would need
// escaping or is not UTF-8, an enum value without a name) goes to protojson, so the
// stored text is always what protojson would accept. FuzzConsoleLogJSON holds it to
// that: protojson reads back the message that was written.

// marshalPayload encodes an event's body for the events table.
func marshalPayload(ev *pb.Event) ([]byte, error) {
	if b, ok := ev.GetBody().(*pb.Event_ConsoleLog); ok && b.ConsoleLog != nil {
		if out, ok := appendConsoleLogJSON(nil, b.ConsoleLog); ok {
			return out, nil
		}
	}
	return protojson.Marshal(eventBody(ev))
}

// appendConsoleLogJSON appends m's proto3 JSON to b; ok is false (and b is returned as
// it was) when m needs what only protojson does.
func appendConsoleLogJSON(b []byte, m *pb.ConsoleLog) (out []byte, ok bool) {
	var source string
	if s := m.GetSource(); s != 0 {
		if source, ok = jpb.LogSource_name[int32(s)]; !ok {
			return b, false
		}
	}
	if !plainJSONString(m.GetJobId()) || !plainJSONString(m.GetBoard()) {
		return b, false
	}
	data := m.GetData()
	n64 := base64.StdEncoding.EncodedLen(len(data))
	b = slices.Grow(b, len(`{"jobId":"","board":"","source":"","data":"","offset":"18446744073709551615"}`)+
		len(m.GetJobId())+len(m.GetBoard())+len(source)+n64)
	start := len(b)
	b = append(b, '{')
	if v := m.GetJobId(); v != "" {
		b = append(append(appendJSONName(b, start, "jobId"), v...), '"')
	}
	if v := m.GetBoard(); v != "" {
		b = append(append(appendJSONName(b, start, "board"), v...), '"')
	}
	if source != "" {
		b = append(append(appendJSONName(b, start, "source"), source...), '"')
	}
	if len(data) > 0 {
		b = appendJSONName(b, start, "data")
		b = b[:len(b)+n64]
		base64.StdEncoding.Encode(b[len(b)-n64:], data)
		b = append(b, '"')
	}
	if v := m.GetOffset(); v != 0 {
		b = append(strconv.AppendUint(appendJSONName(b, start, "offset"), v, 10), '"')
	}
	return append(b, '}'), true
}

// appendJSONName appends a field's name and the quote that opens its value, after a
// comma unless it is the first field of the object that opened at start.
func appendJSONName(b []byte, start int, name string) []byte {
	if len(b) > start+1 {
		b = append(b, ',')
	}
	b = append(append(append(b, '"'), name...), `":"`...)
	return b
}

// plainJSONString tells whether s is written in JSON as it is, between quotes: printable
// ASCII other than the quote and the backslash (board names and job IDs are).
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
