// Package grpc is both ends of the coordinator link, proto/boardvisor/v1's
// SupervisorLink (DESIGN.md §8): one bidirectional stream per supervisor, which dials
// out to the coordinator. The supervisor sends Hello and then numbered events; the
// coordinator answers Welcome and then sends StartJob, StopJob and Ack.
//
// Delivery is at least once: the supervisor keeps every event until it is acknowledged
// and sends it again after a reconnect; the Server drops duplicates by sequence number,
// so the coordinator's Handler sees each event once, in order.
package grpc
