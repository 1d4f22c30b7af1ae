package grpc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// The coordinator's side of the link under arbitrary input: whatever a supervisor sends,
// the Server never panics, never delivers an event to its Handler out of order, twice or
// past a gap, never acknowledges an event the Handler has not stored, and keeps the
// Handler's calls in order (Connected, Events..., Disconnected once).

// memStream is an in-memory SupervisorLink_ConnectServer: Recv returns the given
// messages, then io.EOF; Send records what the server sends.
type memStream struct {
	ctx context.Context
	mu  sync.Mutex
	in  []*pb.SupervisorMessage
	out []*pb.CoordinatorMessage
}

func (m *memStream) Recv() (*pb.SupervisorMessage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.in) == 0 {
		return nil, io.EOF
	}
	msg := m.in[0]
	m.in = m.in[1:]
	return msg, nil
}

func (m *memStream) Send(msg *pb.CoordinatorMessage) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.out = append(m.out, msg)
	return nil
}

func (m *memStream) sent() []*pb.CoordinatorMessage {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*pb.CoordinatorMessage(nil), m.out...)
}

func (m *memStream) SetHeader(metadata.MD) error  { return nil }
func (m *memStream) SendHeader(metadata.MD) error { return nil }
func (m *memStream) SetTrailer(metadata.MD)       {}
func (m *memStream) Context() context.Context     { return m.ctx }
func (m *memStream) SendMsg(any) error            { return errors.New("SendMsg: use Send") }
func (m *memStream) RecvMsg(any) error            { return errors.New("RecvMsg: use Recv") }

var _ pb.SupervisorLink_ConnectServer = (*memStream)(nil)

// checkingHandler is a Handler that checks the Server's promises.
type checkingHandler struct {
	lastSeen uint64
	failAt   int // Events fails on this call (1-based; 0: never)

	mu           sync.Mutex
	problems     []string
	connected    int
	disconnected int
	calls        int
	stored       uint64 // highest seq stored
}

func (h *checkingHandler) problem(format string, args ...any) {
	h.problems = append(h.problems, fmt.Sprintf(format, args...))
}

func (h *checkingHandler) Connected(_ context.Context, s *Session, hello *pb.Hello) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.connected++
	if h.connected > 1 {
		h.problem("Connected called %d times", h.connected)
	}
	if hello == nil || s.ID == "" || s.ID != hello.GetSupervisorId() {
		h.problem("Connected with session %q for Hello %v", s.ID, hello)
	}
	h.stored = h.lastSeen
	return h.lastSeen, nil
}

func (h *checkingHandler) Events(_ context.Context, _ *Session, evs []*pb.Event) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.connected != 1 || h.disconnected != 0 {
		h.problem("Events after %d Connected and %d Disconnected", h.connected, h.disconnected)
	}
	if len(evs) == 0 {
		h.problem("Events with no event")
	}
	if h.calls == h.failAt {
		return errors.New("storage failed")
	}
	for _, ev := range evs {
		if ev == nil || ev.GetSeq() != h.stored+1 {
			h.problem("event %d delivered after %d: out of order, twice, or past a gap", ev.GetSeq(), h.stored)
			return nil
		}
		h.stored++
	}
	return nil
}

func (h *checkingHandler) Disconnected(*Session, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.disconnected++
	if h.disconnected > 1 {
		h.problem("Disconnected called %d times", h.disconnected)
	}
}

// decodeMessages turns fuzz input into messages: each is a uvarint length and that many
// bytes of a marshalled SupervisorMessage. Bytes that do not unmarshal end the list.
func decodeMessages(b []byte) []*pb.SupervisorMessage {
	var out []*pb.SupervisorMessage
	for len(b) > 0 && len(out) < 1000 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return out
		}
		m := &pb.SupervisorMessage{}
		if proto.Unmarshal(b[k:k+int(n)], m) != nil {
			return out
		}
		out = append(out, m)
		b = b[k+int(n):]
	}
	return out
}

// encodeMessages is the inverse of decodeMessages, for seeds.
func encodeMessages(ms ...*pb.SupervisorMessage) []byte {
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

func helloMsg(id string, acked uint64) *pb.SupervisorMessage {
	return &pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Hello{Hello: &pb.Hello{SupervisorId: id, LastAckedSeq: acked,
		Boards: []*pb.BoardInfo{{Name: "rpi"}}}}}
}

func eventMsg(seq uint64) *pb.SupervisorMessage {
	return &pb.SupervisorMessage{Msg: &pb.SupervisorMessage_Event{Event: &pb.Event{Seq: seq,
		Body: &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: "j", Board: "rpi", To: pb.LeasePhase(seq % 9)}}}}}
}

// FuzzServerStream feeds a Server arbitrary message sequences. The input's first byte
// chooses the Handler's lastSeen (0-3), whether a token is required, and on which call
// Events fails; the rest are the messages (see decodeMessages).
func FuzzServerStream(f *testing.F) {
	hello := helloMsg("sup-1", 0)
	f.Add(append([]byte{0x00}, encodeMessages(hello, eventMsg(1), eventMsg(2), eventMsg(3))...))
	f.Add(append([]byte{0x02}, encodeMessages(hello, eventMsg(1), eventMsg(2), eventMsg(3), eventMsg(2), eventMsg(4))...))
	f.Add(append([]byte{0x00}, encodeMessages(hello, eventMsg(1), eventMsg(3))...))
	f.Add(append([]byte{0x04}, encodeMessages(helloMsg("sup-1", 9), eventMsg(1), hello)...))
	f.Add(append([]byte{0x10}, encodeMessages(eventMsg(1), hello)...))
	f.Add(append([]byte{0x05}, encodeMessages(hello, &pb.SupervisorMessage{}, eventMsg(1))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		ctl, msgs := data[0], decodeMessages(data[1:])
		h := &checkingHandler{lastSeen: uint64(ctl & 3), failAt: int(ctl>>4) & 3}
		srv := &Server{Handler: h, MaxBatch: 4}
		ctx := context.Background()
		if ctl&4 != 0 {
			srv.Auth = StaticTokens(map[string]string{"tok": "sup-1"})
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("authorization", "Bearer tok"))
		}
		st := &memStream{ctx: ctx, in: msgs}
		srv.Connect(st)

		h.mu.Lock()
		defer h.mu.Unlock()
		for _, p := range h.problems {
			t.Error(p)
		}
		if h.connected != h.disconnected {
			t.Errorf("Connected %d times, Disconnected %d times", h.connected, h.disconnected)
		}
		// Acknowledgements: after the Welcome, never above what the Handler stored,
		// never going back.
		var acked uint64
		for i, m := range st.sent() {
			if i == 0 && h.connected == 1 {
				if m.GetWelcome() == nil || m.GetWelcome().GetLastSeqSeen() != h.lastSeen {
					t.Errorf("first message %v, want Welcome{%d}", m, h.lastSeen)
				}
				continue
			}
			a := m.GetAck()
			if a == nil {
				t.Errorf("message %d: %v, want an Ack", i, m)
				continue
			}
			if a.GetUpToSeq() > h.stored || a.GetUpToSeq() < acked {
				t.Errorf("Ack %d after Ack %d, with %d stored", a.GetUpToSeq(), acked, h.stored)
			}
			acked = a.GetUpToSeq()
		}
	})
}
