package grpc

import pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"

// ExtendJob tells the supervisor that a job may last longer. It only queues the request.
func (s *Session) ExtendJob(m *pb.ExtendJob) error {
	return s.send(&pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_ExtendJob{ExtendJob: m}})
}
