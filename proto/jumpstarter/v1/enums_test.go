package jumpstarterv1_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	jumpstarterv1 "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// These values are upstream Jumpstarter's wire format (plus our LogSource
// MESSAGE); changing any of them breaks existing Jumpstarter clients.

func TestExporterStatusValues(t *testing.T) {
	want := map[jumpstarterv1.ExporterStatus]int32{
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_UNSPECIFIED:              0,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_OFFLINE:                  1,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_AVAILABLE:                2,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK:        3,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_LEASE_READY:              4,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK:         5,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED: 6,
		jumpstarterv1.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED:  7,
	}
	for v, n := range want {
		if int32(v) != n {
			t.Errorf("%s = %d, want %d", v, int32(v), n)
		}
	}
	if got := len(jumpstarterv1.ExporterStatus_name); got != len(want) {
		t.Errorf("ExporterStatus has %d values, want %d", got, len(want))
	}
}

func TestLogSourceValues(t *testing.T) {
	want := map[jumpstarterv1.LogSource]int32{
		jumpstarterv1.LogSource_LOG_SOURCE_UNSPECIFIED:       0,
		jumpstarterv1.LogSource_LOG_SOURCE_DRIVER:            1,
		jumpstarterv1.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK: 2,
		jumpstarterv1.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK:  3,
		jumpstarterv1.LogSource_LOG_SOURCE_SYSTEM:            4,
		jumpstarterv1.LogSource_LOG_SOURCE_MESSAGE:           5, // boardvisor addition
	}
	for v, n := range want {
		if int32(v) != n {
			t.Errorf("%s = %d, want %d", v, int32(v), n)
		}
	}
	if got := len(jumpstarterv1.LogSource_name); got != len(want) {
		t.Errorf("LogSource has %d values, want %d", got, len(want))
	}
}

func TestExporterServiceMethodNames(t *testing.T) {
	for got, want := range map[string]string{
		jumpstarterv1.ExporterService_GetReport_FullMethodName:           "/jumpstarter.v1.ExporterService/GetReport",
		jumpstarterv1.ExporterService_DriverCall_FullMethodName:          "/jumpstarter.v1.ExporterService/DriverCall",
		jumpstarterv1.ExporterService_StreamingDriverCall_FullMethodName: "/jumpstarter.v1.ExporterService/StreamingDriverCall",
		jumpstarterv1.ExporterService_LogStream_FullMethodName:           "/jumpstarter.v1.ExporterService/LogStream",
		jumpstarterv1.ExporterService_Reset_FullMethodName:               "/jumpstarter.v1.ExporterService/Reset",
		jumpstarterv1.ExporterService_GetStatus_FullMethodName:           "/jumpstarter.v1.ExporterService/GetStatus",
		jumpstarterv1.ExporterService_EndSession_FullMethodName:          "/jumpstarter.v1.ExporterService/EndSession",
		jumpstarterv1.ExporterService_WatchStatus_FullMethodName:         "/jumpstarter.v1.ExporterService/WatchStatus", // boardvisor addition
	} {
		if got != want {
			t.Errorf("method name %q, want %q", got, want)
		}
	}
	if got, want := jumpstarterv1.ExporterService_ServiceDesc.ServiceName, "jumpstarter.v1.ExporterService"; got != want {
		t.Errorf("service name %q, want %q", got, want)
	}
}

// Field numbers of the messages whose wire format matters most to clients.
func TestFieldNumbers(t *testing.T) {
	for _, tc := range []struct {
		msg    proto.Message
		fields map[protoreflect.Name]protoreflect.FieldNumber
	}{
		{&jumpstarterv1.GetStatusResponse{}, map[protoreflect.Name]protoreflect.FieldNumber{
			"status": 1, "message": 2, "status_version": 3, "previous_status": 4,
		}},
		{&jumpstarterv1.LogStreamResponse{}, map[protoreflect.Name]protoreflect.FieldNumber{
			"uuid": 1, "severity": 2, "message": 3, "source": 4, "driver_type": 5,
			"operation": 6, "timestamp": 7, "structured_fields": 8,
			"missed": 100, "progress": 101, // boardvisor additions
		}},
		{&jumpstarterv1.DriverCallRequest{}, map[protoreflect.Name]protoreflect.FieldNumber{
			"uuid": 1, "method": 2, "args": 3,
		}},
		{&jumpstarterv1.EndSessionResponse{}, map[protoreflect.Name]protoreflect.FieldNumber{
			"success": 1, "message": 2,
		}},
	} {
		md := tc.msg.ProtoReflect().Descriptor()
		if md.Fields().Len() != len(tc.fields) {
			t.Errorf("%s has %d fields, want %d", md.FullName(), md.Fields().Len(), len(tc.fields))
		}
		for name, num := range tc.fields {
			fd := md.Fields().ByName(name)
			if fd == nil {
				t.Errorf("%s has no field %s", md.FullName(), name)
				continue
			}
			if fd.Number() != num {
				t.Errorf("%s.%s is field %d, want %d", md.FullName(), name, fd.Number(), num)
			}
		}
	}
}

// FrameType is upstream's router.proto frame type; upstream's RouterStream treats DATA
// as payload, GOAWAY as the end of the stream and ignores PING.
func TestFrameTypeValues(t *testing.T) {
	want := map[jumpstarterv1.FrameType]int32{
		jumpstarterv1.FrameType_FRAME_TYPE_DATA:       0,
		jumpstarterv1.FrameType_FRAME_TYPE_RST_STREAM: 3,
		jumpstarterv1.FrameType_FRAME_TYPE_PING:       6,
		jumpstarterv1.FrameType_FRAME_TYPE_GOAWAY:     7,
	}
	for v, n := range want {
		if int32(v) != n {
			t.Errorf("%s = %d, want %d", v, int32(v), n)
		}
	}
	if got := len(jumpstarterv1.FrameType_name); got != len(want) {
		t.Errorf("FrameType has %d values, want %d", got, len(want))
	}
}
