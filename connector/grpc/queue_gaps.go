package grpc

import (
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Gap runs keep the outbox within its bound while consoles flood and the coordinator
// is away: every console event shed still owns its sequence number (the stream stays
// gap-free), but a stretch of consecutive ConsoleGap events that no reader has seen yet
// is stored as one record, a run, whose size grows with the boards and leases it covers,
// not with its length.
//
// A run is stored under its first sequence number F and covers F..F+N-1. Its value is
// 0x00 (a byte no Event encoding starts with: field number 0 is invalid), then varints
// N and the time (Unix nanoseconds) of its first gap, then the number P of (job, board)
// pairs, then for each pair the job and the board (length-prefixed) and the bytes
// dropped. Read, it stands for N ConsoleGap events: the one at F+i carries pair i for i
// < P, and those after carry the last pair with 0 bytes. The bytes of each (job, board)
// are thus counted exactly once, whatever the stretch's order.
//
// A run is only ever extended, or merged with a neighbour, while none of its sequence
// numbers has been handed to the link's sender (Queue.claim): what the coordinator may
// have received never changes. Acknowledging part of a run keeps the rest of it as
// the same events (trimRun).

// maxRunPairs bounds the pairs of a run (a run over more boards and leases is split),
// so that extending one costs a bounded rewrite.
const maxRunPairs = 64

type gapPair struct {
	job, board string
	bytes      uint64
}

type gapRun struct {
	n     uint64
	at    int64 // Unix nanoseconds
	pairs []gapPair
}

func isRunValue(v []byte) bool { return len(v) > 0 && v[0] == 0 }

// decodeRun decodes a run record; ok is false if v is not one.
func decodeRun(v []byte) (r gapRun, ok bool) {
	if !isRunValue(v) {
		return r, false
	}
	b := v[1:]
	next := func() (uint64, bool) {
		x, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		return x, true
	}
	str := func() (string, bool) {
		s, n := protowire.ConsumeString(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		return s, true
	}
	var at, p uint64
	if r.n, ok = next(); !ok || r.n == 0 {
		return r, false
	}
	if at, ok = next(); !ok {
		return r, false
	}
	r.at = int64(at)
	// Each pair takes at least 3 bytes: a count beyond that is damage, not a size to
	// allocate.
	if p, ok = next(); !ok || p == 0 || p > r.n || p > uint64(len(b))/3 {
		return r, false
	}
	r.pairs = make([]gapPair, 0, p)
	for range p {
		var g gapPair
		if g.job, ok = str(); !ok {
			return r, false
		}
		if g.board, ok = str(); !ok {
			return r, false
		}
		if g.bytes, ok = next(); !ok {
			return r, false
		}
		r.pairs = append(r.pairs, g)
	}
	return r, true
}

func (r gapRun) encode() []byte {
	size := 1 + protowire.SizeVarint(r.n) + protowire.SizeVarint(uint64(r.at)) + protowire.SizeVarint(uint64(len(r.pairs)))
	for _, g := range r.pairs {
		size += protowire.SizeBytes(len(g.job)) + protowire.SizeBytes(len(g.board)) + protowire.SizeVarint(g.bytes)
	}
	b := make([]byte, 1, size)
	b = protowire.AppendVarint(b, r.n)
	b = protowire.AppendVarint(b, uint64(r.at))
	b = protowire.AppendVarint(b, uint64(len(r.pairs)))
	for _, g := range r.pairs {
		b = protowire.AppendString(b, g.job)
		b = protowire.AppendString(b, g.board)
		b = protowire.AppendVarint(b, g.bytes)
	}
	return b
}

// asGapRun reads a stored record as a run: a run record, or a single ConsoleGap event.
func asGapRun(v []byte) (gapRun, bool) {
	if r, ok := decodeRun(v); ok {
		return r, true
	}
	if isRunValue(v) || field(v, 6) == nil {
		return gapRun{}, false
	}
	ev := &pb.Event{}
	if proto.Unmarshal(v, ev) != nil || ev.GetConsoleGap() == nil {
		return gapRun{}, false
	}
	g := ev.GetConsoleGap()
	return gapRun{n: 1, at: ev.GetTime().AsTime().UnixNano(), pairs: []gapPair{{g.GetJobId(), g.GetBoard(), g.GetBytes()}}}, true
}

// plus returns r followed by o (o's first sequence number is r's last plus one).
func (r gapRun) plus(o gapRun) gapRun {
	out := gapRun{n: r.n + o.n, at: r.at, pairs: append([]gapPair(nil), r.pairs...)}
next:
	for _, g := range o.pairs {
		for i := range out.pairs {
			if out.pairs[i].job == g.job && out.pairs[i].board == g.board {
				out.pairs[i].bytes += g.bytes
				continue next
			}
		}
		out.pairs = append(out.pairs, g)
	}
	return out
}

// pairsWith counts the pairs r.plus(o) would have.
func (r gapRun) pairsWith(o gapRun) int {
	n := len(r.pairs)
next:
	for _, g := range o.pairs {
		for _, h := range r.pairs {
			if h.job == g.job && h.board == g.board {
				continue next
			}
		}
		n++
	}
	return n
}

// event returns the ConsoleGap event the run stands for at its i-th sequence number,
// seq.
func (r gapRun) event(seq, i uint64) *pb.Event {
	g := r.pairs[len(r.pairs)-1]
	g.bytes = 0
	if i < uint64(len(r.pairs)) {
		g = r.pairs[i]
	}
	return &pb.Event{Seq: seq, Time: timestamppb.New(time.Unix(0, r.at)),
		Body: &pb.Event_ConsoleGap{ConsoleGap: &pb.ConsoleGap{JobId: g.job, Board: g.board, Bytes: g.bytes}}}
}

// trim drops the first k sequence numbers of r (acknowledged) and returns the rest,
// which stands for the same events as before at the same sequence numbers.
func (r gapRun) trim(k uint64) gapRun {
	out := gapRun{n: r.n - k, at: r.at}
	if k < uint64(len(r.pairs)) {
		out.pairs = append(out.pairs, r.pairs[k:]...)
	} else {
		last := r.pairs[len(r.pairs)-1]
		last.bytes = 0
		out.pairs = []gapPair{last}
	}
	return out
}

// storedGap is how a run is stored: a run of one as an ordinary ConsoleGap event.
func storedGap(seq uint64, r gapRun) []byte {
	if r.n == 1 {
		b, _ := proto.Marshal(r.event(seq, 0))
		return b
	}
	return r.encode()
}

// field returns the bytes of length-delimited field num of a message's encoding, nil if
// absent.
func field(b []byte, num protowire.Number) []byte {
	for len(b) > 0 {
		n, typ, m := protowire.ConsumeTag(b)
		if m < 0 {
			return nil
		}
		b = b[m:]
		if n == num && typ == protowire.BytesType {
			v, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return nil
			}
			return v
		}
		k := protowire.ConsumeFieldValue(n, typ, b)
		if k < 0 {
			return nil
		}
		b = b[k:]
	}
	return nil
}
