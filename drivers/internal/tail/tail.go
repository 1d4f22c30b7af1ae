// Package tail keeps the last bytes a child process wrote, for error messages.
package tail

import (
	"strings"
	"sync"
)

// Buffer is an io.Writer that keeps the last Max bytes written to it. It is safe for
// concurrent use.
type Buffer struct {
	max     int
	mu      sync.Mutex
	buf     []byte
	dropped bool
}

// New returns a Buffer that keeps the last max bytes.
func New(max int) *Buffer {
	return &Buffer{max: max}
}

// Write keeps the end of p; it never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	if len(p) >= b.max {
		b.dropped = b.dropped || len(b.buf) > 0 || len(p) > b.max
		b.buf = append(b.buf[:0], p[len(p)-b.max:]...)
		return n, nil
	}
	if over := len(b.buf) + len(p) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.dropped = true
	}
	b.buf = append(b.buf, p...)
	return n, nil
}

// Line returns what was kept as one line of at most Max bytes (plus a leading "..." if
// earlier output was dropped): invalid UTF-8 replaced, lines trimmed, empty lines
// dropped, the rest joined by " | ". It is "" if nothing but white space was written.
func (b *Buffer) Line() string {
	b.mu.Lock()
	s, dropped := string(b.buf), b.dropped
	b.mu.Unlock()
	s = strings.ToValidUTF8(s, "\uFFFD")
	var lines []string
	for l := range strings.FieldsFuncSeq(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	out := strings.Join(lines, " | ")
	if len(out) > b.max { // the separators made it longer
		out = strings.TrimLeft(strings.ToValidUTF8(out[len(out)-b.max:], ""), " |")
		dropped = true
	}
	if dropped && out != "" {
		out = "..." + out
	}
	return out
}
