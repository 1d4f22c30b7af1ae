package grpc

import (
	"reflect"
	"testing"
)

// A gap run read back from the outbox file, whatever its bytes: decoding never panics,
// a decoded run encodes back to the same run, and it stands for exactly its N events,
// whose bytes add up to its pairs' (also once part of it is acknowledged).
func FuzzDecodeRun(f *testing.F) {
	f.Add(gapRun{n: 3, at: 1700000000000000000, pairs: []gapPair{{"job-1", "b1", 100}, {"", "b2", 7}}}.encode())
	f.Add(gapRun{n: 1, at: 5, pairs: []gapPair{{"j", "b", 0}}}.encode())
	f.Add([]byte{0, 200, 1, 0, 1})
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := decodeRun(b)
		if !ok {
			return
		}
		again, ok := decodeRun(r.encode())
		if !ok || !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip: %+v -> %+v (%v)", r, again, ok)
		}
		if r.n > 1<<16 {
			return // a valid but huge run: not expanded here
		}
		var sum, want uint64
		for _, p := range r.pairs {
			want += p.bytes
		}
		for i := uint64(0); i < r.n; i++ {
			sum += r.event(100+i, i).GetConsoleGap().GetBytes()
		}
		if sum != want {
			t.Fatalf("run of %d events stands for %d bytes, its pairs hold %d", r.n, sum, want)
		}
		if r.n > 1 {
			k := r.n / 2
			rest := r.trim(k)
			for i := uint64(0); i < rest.n; i++ {
				a, b := r.event(100+k+i, k+i), rest.event(100+k+i, i)
				if a.GetConsoleGap().GetBytes() != b.GetConsoleGap().GetBytes() || a.GetConsoleGap().GetBoard() != b.GetConsoleGap().GetBoard() {
					t.Fatalf("trimmed run differs at %d: %v vs %v", i, a, b)
				}
			}
		}
	})
}
