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
	rng *rand.Rand
	col int
}

// NewRandom returns the stream for seed.
func NewRandom(seed uint64) *Random {
	return &Random{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Read fills p with the next len(p) bytes of the stream; it never fails.
func (r *Random) Read(p []byte) (int, error) {
	for i := range p {
		if r.col == lineLength {
			p[i], r.col = '\n', 0
			continue
		}
		p[i] = byte(0x20 + r.rng.IntN(0x7f-0x20))
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
