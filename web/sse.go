package web

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
)

// sseEvent encodes one server-sent event. data must be one line (JSON from
// encoding/json is: it escapes newlines). An empty id leaves the browser's last event ID
// as it was.
func sseEvent(event, id string, data []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(event) + len(id) + len(data) + 24)
	if id != "" {
		b.WriteString("id: ")
		b.WriteString(id)
		b.WriteByte('\n')
	}
	b.WriteString("event: ")
	b.WriteString(event)
	b.WriteString("\ndata: ")
	b.Write(data)
	b.WriteString("\n\n")
	return b.Bytes()
}

// sseWriter writes one event stream; each write has a deadline, so a browser that
// stops reading is dropped instead of holding the stream's resources.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
}

// startSSE sends the stream's headers and its retry interval.
func startSSE(w http.ResponseWriter, timeout time.Duration, retry time.Duration) (*sseWriter, error) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s := &sseWriter{w: w, rc: http.NewResponseController(w), timeout: timeout}
	if err := s.write([]byte("retry: " + strconv.FormatInt(retry.Milliseconds(), 10) + "\n\n")); err != nil {
		return nil, err
	}
	return s, s.flush()
}

func (s *sseWriter) write(b []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	_, err := s.w.Write(b)
	return err
}

func (s *sseWriter) flush() error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(s.timeout))
	return s.rc.Flush()
}

// heartbeat is a comment: it keeps proxies from closing an idle stream and finds
// browsers that are gone.
func (s *sseWriter) heartbeat() error {
	if err := s.write([]byte(": keep-alive\n\n")); err != nil {
		return err
	}
	return s.flush()
}
