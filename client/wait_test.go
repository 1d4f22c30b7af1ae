package client

import (
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestDescribeWait(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 30, 0, 0, time.Local)
	at := func(h, m int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(2026, 12, 1, h, m, 0, 0, time.Local))
	}
	avail := jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY
	offline := jpb.ExporterStatus_EXPORTER_STATUS_OFFLINE
	good, bad := pb.BoardHealth_BOARD_HEALTH_GOOD, pb.BoardHealth_BOARD_HEALTH_BAD
	cases := []struct {
		name string
		r    *pb.ExplainWaitResponse
		want string
	}{
		{"queued behind holders", &pb.ExplainWaitResponse{Position: 2, Queued: 3, Boards: []*pb.BoardWait{
			{Name: "rpi4-01", Status: avail, Health: good, SupervisorConnected: true, HolderLeaseId: "l1", HolderClient: "alice", HolderEndsAt: at(11, 0)},
			{Name: "rpi4-02", Status: avail, Health: good, SupervisorConnected: true, HolderLeaseId: "l2", HolderClient: "bob", HolderEndsAt: at(10, 45)},
		}}, "In the queue: 2nd of 3; rpi4-01 is held by alice until 11:00:00, rpi4-02 is held by bob until 10:45:00."},
		{"every board offline", &pb.ExplainWaitResponse{Position: 1, Queued: 1, Boards: []*pb.BoardWait{
			{Name: "rpi4-01", SupervisorId: "lab-b", Status: offline, Health: good, SupervisorLastContact: at(10, 2)},
			{Name: "rpi4-02", SupervisorId: "lab-b", Status: offline, Health: good, SupervisorLastContact: at(10, 2)},
		}}, "Every board matching device=rpi4 is OFFLINE: rpi4-01 is OFFLINE (supervisor lab-b gone since 10:02:00); rpi4-02 is OFFLINE (supervisor lab-b gone since 10:02:00)."},
		{"the only one quarantined", &pb.ExplainWaitResponse{Position: 1, Queued: 1, Boards: []*pb.BoardWait{
			{Name: "rpi4-01", Status: offline, Health: bad, SupervisorConnected: true, Reason: "quarantined: afterLease hook failed: exit status 3"},
		}}, "The only board matching device=rpi4 is unavailable: rpi4-01 is quarantined: afterLease hook failed: exit status 3 (an operator must clear it: boardvisor board clear rpi4-01)."},
		{"one held, one in maintenance", &pb.ExplainWaitResponse{Position: 1, Queued: 1, Boards: []*pb.BoardWait{
			{Name: "rpi4-01", Status: avail, Health: good, SupervisorConnected: true, HolderLeaseId: "l1", HolderClient: "alice", HolderEndsAt: at(11, 0)},
			{Name: "rpi4-02", Status: avail, Health: pb.BoardHealth_BOARD_HEALTH_MAINTENANCE, SupervisorConnected: true, Reason: "in maintenance: cable swap"},
		}}, "In the queue: 1st of 1; rpi4-01 is held by alice until 11:00:00; unavailable: rpi4-02 is in maintenance: cable swap."},
		{"no board", &pb.ExplainWaitResponse{}, "No board matches device=rpi4 any more: the lease waits until one is back."},
	}
	for _, tc := range cases {
		if got := DescribeWait(tc.r, "device=rpi4", now); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

func TestHookTimeoutFromTheMarker(t *testing.T) {
	for msg, want := range map[string]time.Duration{
		"lease BEFORE_LEASE: running the beforeLease hook (timeout 2m0s)": 2 * time.Minute,
		"lease AFTER_LEASE: running the afterLease hook (timeout 1.5s)":   1500 * time.Millisecond,
		"lease BEFORE_LEASE: no beforeLease hook to run":                  0,
	} {
		if got := hookTimeout(msg); got != want {
			t.Errorf("hookTimeout(%q) = %s, want %s", msg, got, want)
		}
	}
}
