package grpc

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The supervisor's side of the link under arbitrary input: whatever a coordinator sends,
// the Client never panics or hangs, and hands the Supervisor exactly the StartJob and
// StopJob requests that followed a Welcome, in order, none twice and none invented.
//
// One real link on loopback serves every input of a fuzz process: a scripted
// coordinator sends the input's messages and a sentinel StopJob on each new stream, and
// ends the stream once the Client has handed the sentinel on (or has given up on the
// stream); the Client reconnects for the next input.

// scriptedCoordinator sends each stream one script.
type scriptedCoordinator struct {
	pb.UnimplementedSupervisorLinkServer
	scripts chan script
}

type script struct {
	msgs     []*pb.CoordinatorMessage
	sentinel string
	seen     <-chan struct{} // closed when the Supervisor got the sentinel
	done     chan struct{}   // closed by Connect when the stream is over
}

func (c *scriptedCoordinator) Connect(stream pb.SupervisorLink_ConnectServer) error {
	if _, err := stream.Recv(); err != nil { // Hello
		return err
	}
	var s script
	select {
	case s = <-c.scripts:
	case <-stream.Context().Done():
		return nil
	}
	defer close(s.done)
	for _, m := range append(s.msgs, &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_StopJob{StopJob: &pb.StopJob{JobId: s.sentinel}}}) {
		if err := stream.Send(m); err != nil {
			return nil // the Client ended the stream
		}
	}
	select {
	case <-s.seen:
	case <-stream.Context().Done():
	case <-time.After(10 * time.Second):
		panic("the Client neither handled the sentinel nor ended the stream in 10s")
	}
	return nil
}

// recordingSupervisor records the requests the Client hands it.
type recordingSupervisor struct {
	mu       sync.Mutex
	got      []string
	sentinel string
	seen     chan struct{}
}

func (r *recordingSupervisor) note(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, s)
	if s == "stop "+r.sentinel && r.seen != nil {
		close(r.seen)
		r.seen = nil
	}
}

func (r *recordingSupervisor) StartJob(_ context.Context, req connector.StartJobRequest) error {
	r.note("start " + req.JobID)
	return nil
}

func (r *recordingSupervisor) StopJob(_ context.Context, req connector.StopJobRequest) error {
	r.note("stop " + req.JobID)
	return nil
}

func (r *recordingSupervisor) ExtendJob(_ context.Context, req connector.ExtendJobRequest) error {
	r.note("extend " + req.JobID)
	return nil
}

// decodeCoordinatorMessages turns fuzz input into messages, as decodeMessages does.
func decodeCoordinatorMessages(b []byte) []*pb.CoordinatorMessage {
	var out []*pb.CoordinatorMessage
	for len(b) > 0 && len(out) < 200 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return out
		}
		m := &pb.CoordinatorMessage{}
		if proto.Unmarshal(b[k:k+int(n)], m) != nil {
			return out
		}
		out = append(out, m)
		b = b[k+int(n):]
	}
	return out
}

func encodeCoordinatorMessages(ms ...*pb.CoordinatorMessage) []byte {
	var out []byte
	for _, m := range ms {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = binary.AppendUvarint(out, uint64(len(b)))
		out = append(out, b...)
	}
	return out
}

func welcome(seen uint64) *pb.CoordinatorMessage {
	return &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_Welcome{Welcome: &pb.Welcome{LastSeqSeen: seen}}}
}

func ack(up uint64) *pb.CoordinatorMessage {
	return &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_Ack{Ack: &pb.Ack{UpToSeq: up}}}
}

func startJob(id string) *pb.CoordinatorMessage {
	return &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_StartJob{StartJob: &pb.StartJob{JobId: id, Board: "rpi",
		ClientName: "alice", Token: "t", Duration: durationpb.New(time.Minute), Parameters: map[string]string{"k": "v"}}}}
}

func stopJob(id string) *pb.CoordinatorMessage {
	return &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_StopJob{StopJob: &pb.StopJob{JobId: id, Reason: "r"}}}
}

// FuzzClientRecv feeds the Client arbitrary CoordinatorMessage sequences.
func FuzzClientRecv(f *testing.F) {
	f.Add(encodeCoordinatorMessages(welcome(0), startJob("j1"), ack(1), stopJob("j1")))
	f.Add(encodeCoordinatorMessages(welcome(2), ack(3), ack(1), startJob("j2"), startJob("j2")))
	f.Add(encodeCoordinatorMessages(startJob("j3"), welcome(0)))
	f.Add(encodeCoordinatorMessages(welcome(0), &pb.CoordinatorMessage{}, welcome(5), stopJob("")))
	f.Add(encodeCoordinatorMessages(welcome(1<<62), ack(1<<63), startJob("j4")))
	f.Add(encodeCoordinatorMessages(welcome(0), &pb.CoordinatorMessage{Msg: &pb.CoordinatorMessage_ExtendJob{ExtendJob: &pb.ExtendJob{JobId: "j1",
		Remaining: &durationpb.Duration{Seconds: -1 << 62}}}}))

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	coord := &scriptedCoordinator{scripts: make(chan script)}
	g := ggrpc.NewServer()
	pb.RegisterSupervisorLinkServer(g, coord)
	go g.Serve(lis)
	f.Cleanup(g.Stop)
	q, err := OpenQueue(filepath.Join(f.TempDir(), "outbox.db"), QueueOptions{NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { q.Close() })
	client := NewClient(ClientOptions{Address: lis.Addr().String(), SupervisorID: "sup-1", Queue: q,
		Boards: []BoardInfo{{Name: "rpi"}}, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	sup := &recordingSupervisor{}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { client.Run(ctx, sup); close(runDone) }()
	f.Cleanup(func() { cancel(); <-runDone })
	// Events for acknowledgements to apply to.
	for i := uint64(1); i <= 5; i++ {
		q.Append(&pb.Event{Seq: q.LastSeq() + i})
	}

	n := 0
	f.Fuzz(func(t *testing.T, data []byte) {
		msgs := decodeCoordinatorMessages(data)
		n++
		sentinel := fmt.Sprintf("sentinel-%d", n)
		seen := make(chan struct{})
		sup.mu.Lock()
		sup.got, sup.sentinel, sup.seen = nil, sentinel, seen
		sup.mu.Unlock()
		s := script{msgs: msgs, sentinel: sentinel, seen: seen, done: make(chan struct{})}
		select {
		case coord.scripts <- s:
		case <-time.After(10 * time.Second):
			t.Fatal("the Client did not reconnect within 10s")
		}
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			t.Fatal("the stream did not end")
		}
		// What the Supervisor may get: every request after a first Welcome, then the
		// sentinel; a prefix of it if the Client gave up on the stream.
		var want []string
		if len(msgs) > 0 && msgs[0].GetWelcome() != nil {
			for _, m := range msgs[1:] {
				switch {
				case m.GetStartJob() != nil:
					want = append(want, "start "+m.GetStartJob().GetJobId())
				case m.GetStopJob() != nil:
					want = append(want, "stop "+m.GetStopJob().GetJobId())
				case m.GetExtendJob() != nil:
					want = append(want, "extend "+m.GetExtendJob().GetJobId())
				}
			}
			want = append(want, "stop "+sentinel)
		}
		sup.mu.Lock()
		got := slices.Clone(sup.got)
		sup.mu.Unlock()
		if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) {
			t.Fatalf("the Supervisor got %q, want (a prefix of) %q", got, want)
		}
		// No Welcome or Ack makes the outbox forget events it never sent.
		if q.Acked() > q.LastSeq() {
			t.Fatalf("the outbox acknowledged %d of %d events", q.Acked(), q.LastSeq())
		}
	})
}
