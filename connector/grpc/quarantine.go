package grpc

import pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"

// ClearQuarantine asks the supervisor to clear a board's quarantine. It only queues the
// request; the board's new health arrives as a BoardStatus event.
func (s *Session) ClearQuarantine(m *pb.ClearQuarantine) error {
	return s.send(&pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_ClearQuarantine{ClearQuarantine: m}})
}
