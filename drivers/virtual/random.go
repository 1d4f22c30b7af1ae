package virtual

import (
	"math/rand/v2"
)

// lineLength is how many printable bytes RandomData puts between two newlines.
const lineLength = 79

// Random is a deterministic stream of pseudo-random printable ASCII (0x20 to 0x7e) with
// a "\n" after every 79 bytes: what a board emits in Options.RandomBytes mode. The same
// seed gives the same bytes however the stream is cut into reads.
type Random struct {
	rng  *rand.PCG
	col  int
	word uint64 // random bits not used yet: left bytes of them
	left int
}

// NewRandom returns the stream for seed.
func NewRandom(seed uint64) *Random {
	return &Random{rng: rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)}
}

// Read fills p with the next len(p) bytes of the stream; it never fails.
func (r *Random) Read(p []byte) (int, error) {
	for i := range p {
		if r.col == lineLength {
			p[i], r.col = '\n', 0
			continue
		}
		// Eight bytes from each 64 random bits, each scaled to the 95 printable ones
		// (a byte each rather than a bounded draw each: the farm of make bench's console
		// scenario makes 11.5 MB a second of it, on the host it measures).
		if r.left == 0 {
			r.word, r.left = r.rng.Uint64(), 8
		}
		p[i] = byte(0x20 + (r.word&0xff)*(0x7f-0x20)>>8)
		r.word >>= 8
		r.left--
		r.col++
	}
	return len(p), nil
}

// RandomData returns the first n bytes of the stream for seed.
func RandomData(seed uint64, n int) []byte {
	p := make([]byte, n)
	_, _ = NewRandom(seed).Read(p)
	return p
}
