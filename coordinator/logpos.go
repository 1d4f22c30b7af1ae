package coordinator

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math"
	"unicode/utf8"
)

// logPos is a position in a lease's log: the last event read, by the key the events
// table stores it under (supervisor, seq). A lease's log holds the events of the one
// supervisor serving it, so seq alone orders it; the supervisor is in the position so
// that one taken before the lease moved (re-queued after a refusal) starts over on the
// new supervisor's events instead of skipping some. The zero logPos is the start.
type logPos struct {
	sup string
	seq int64
}

// logPosVersion is the first byte of an encoded position.
const logPosVersion = 1

// maxPosSupervisor bounds the supervisor ID in a position a client sends.
const maxPosSupervisor = 1024

// errBadPos is returned for a position this coordinator did not give out.
var errBadPos = errors.New("not a position of a lease log (give one that LeaseLog returned, or none to start at the beginning)")

// encode returns the position as clients see it: opaque, URL-safe text. The start (no
// event read yet: seq 0) is "".
func (p logPos) encode() string {
	if p.seq <= 0 || p.sup == "" {
		return ""
	}
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(p.sup))
	b = append(b, logPosVersion)
	b = binary.AppendUvarint(b, uint64(p.seq))
	b = append(b, p.sup...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeLogPos parses a position from a client: "" is the start; anything else must be
// exactly what encode makes (one encoding per position).
func decodeLogPos(s string) (logPos, error) {
	if s == "" {
		return logPos{}, nil
	}
	if len(s) > base64.RawURLEncoding.EncodedLen(1+binary.MaxVarintLen64+maxPosSupervisor) {
		return logPos{}, errBadPos
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(b) < 2 || b[0] != logPosVersion {
		return logPos{}, errBadPos
	}
	seq, n := binary.Uvarint(b[1:])
	if n <= 0 || seq == 0 || seq > math.MaxInt64 {
		return logPos{}, errBadPos
	}
	sup := b[1+n:]
	if len(sup) == 0 || len(sup) > maxPosSupervisor || !utf8.Valid(sup) {
		return logPos{}, errBadPos
	}
	p := logPos{sup: string(sup), seq: int64(seq)}
	if p.encode() != s { // a non-minimal varint
		return logPos{}, errBadPos
	}
	return p, nil
}
