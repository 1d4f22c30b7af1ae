package client

import (
	"context"
	"net"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// fakeCoordinator is a LeaseService that is either a standby (every call Unavailable)
// or active (it names itself). A fake: the real coordinators' failover is tested in
// tests/coordinator_failover_e2e_test.go.
type fakeCoordinator struct {
	pb.UnimplementedLeaseServiceServer
	name    string
	standby bool
}

func (f *fakeCoordinator) ListBoards(context.Context, *pb.ListBoardsRequest) (*pb.ListBoardsResponse, error) {
	if f.standby {
		return nil, status.Error(codes.Unavailable, "this coordinator is a standby")
	}
	return &pb.ListBoardsResponse{Boards: []*pb.Board{{Name: f.name}}}, nil
}

func (f *fakeCoordinator) WatchLease(req *pb.WatchLeaseRequest, s pb.LeaseService_WatchLeaseServer) error {
	if f.standby {
		return status.Error(codes.Unavailable, "this coordinator is a standby")
	}
	return s.Send(&pb.Lease{Id: req.GetId(), Board: f.name})
}

func serveFake(t *testing.T, f *fakeCoordinator) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterLeaseServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// TestFailoverFollowsTheActiveCoordinator: calls and server streams given a standby's
// address first reach the active coordinator, and stay with it; a dead address is
// skipped too.
func TestFailoverFollowsTheActiveCoordinator(t *testing.T) {
	standby := serveFake(t, &fakeCoordinator{name: "standby", standby: true})
	active := serveFake(t, &fakeCoordinator{name: "active"})
	dead := func() string {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer lis.Close()
		return lis.Addr().String()
	}()
	f, err := NewFailover([]string{dead, standby, active}, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := pb.NewLeaseServiceClient(f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 3 {
		r, err := c.ListBoards(ctx, &pb.ListBoardsRequest{})
		if err != nil || len(r.GetBoards()) != 1 || r.GetBoards()[0].GetName() != "active" {
			t.Fatalf("call %d: %v, %v: want the active coordinator's answer", i, r, err)
		}
	}
	f.mu.Lock()
	f.cur = 1 // as if the standby had answered last
	f.mu.Unlock()
	s, err := c.WatchLease(ctx, &pb.WatchLeaseRequest{Id: "L"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Recv()
	if err != nil || l.GetBoard() != "active" || l.GetId() != "L" {
		t.Fatalf("a stream opened on the standby: %v, %v: want it reopened on the active coordinator", l, err)
	}
}
