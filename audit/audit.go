// Package audit writes the audit log of a supervisor or a coordinator: an append-only
// file of JSON lines recording every lease transition, who asked for what and why, and
// every refused access.
//
// # Format
//
// One JSON object per line (Entry), UTF-8, newline-terminated:
//
//	{"time":"2026-01-02T15:04:05.123456789Z","kind":"transition","who":"lab-host-1","board":"rpi-7","job":"3f0c…","from":"READY","to":"ENDING","reason":"end requested by the client"}
//	{"time":"…","kind":"refused","who":"10.0.0.7:51234","board":"rpi-7","job":"3f0c…","reason":"the token holds no live lease"}
//	{"time":"…","kind":"request","who":"alice","board":"rpi-7","job":"3f0c…","details":{"what":"StartJob"}}
//
// Readers should skip a line that does not parse: only the last line can be torn, by a
// power loss in the middle of a write, and the next Open starts a new line after it.
//
// # Writing
//
// The file is opened with O_APPEND and each entry is written with one write(2) call
// under a mutex, so entries from the goroutines of one process never interleave, and
// entries of several processes appending to the same file do not either (on a local
// file system, O_APPEND writes are atomic with respect to each other). An entry is in
// the kernel when Record returns: it survives a crash of the daemon. By default it is
// not fsynced, so the last entries may be lost to a power loss or a kernel crash; with
// SyncEach every Record fsyncs (a few milliseconds each on a disk), and Sync and Close
// always fsync.
//
// # Secrets
//
// The audit log must never hold a token. Callers pass none (lease tokens are known to
// the supervisor only as their SHA-256, and errors never name them). As a guard, Record
// replaces the value of any Details key that names a secret (token, authorization,
// password, secret) and anything following "Bearer " in any field with "[redacted]".
package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/connector"
)

// Kinds of entries.
const (
	KindTransition = "transition" // a lease changed phase
	KindRefused    = "refused"    // an access was refused
	KindRequest    = "request"    // someone asked for something (start, stop, end a lease)
)

// Entry is one line of the audit log.
type Entry struct {
	// Time is when it happened (Record sets it to now if zero), in UTC.
	Time time.Time `json:"time"`
	// Kind is KindTransition, KindRefused, KindRequest, or another short word.
	Kind string `json:"kind"`
	// Who is who asked or acted: a client's user name or network address, or the
	// supervisor's ID for what the supervisor did on its own.
	Who string `json:"who,omitempty"`
	// Board and Job name the board and the lease (job ID), if any.
	Board string `json:"board,omitempty"`
	Job   string `json:"job,omitempty"`
	// From and To are the phases of a transition.
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// Reason is why, in words.
	Reason string `json:"reason,omitempty"`
	// Details holds anything else, e.g. the board status after a transition.
	Details map[string]string `json:"details,omitempty"`
}

// Log is an open audit log. It is safe for concurrent use.
type Log struct {
	mu       sync.Mutex
	f        *os.File
	syncEach bool
	who      string
	err      error // the last write error, for Err
	closed   bool
	torn     bool // the file ends in a torn line: the next entry starts with a newline
}

// Option configures Open.
type Option func(*Log)

// SyncEach makes every Record fsync the file before it returns.
func SyncEach() Option { return func(l *Log) { l.syncEach = true } }

// Who sets the Who of the entries Sink records: the supervisor's (or coordinator's) ID.
func Who(id string) Option { return func(l *Log) { l.who = id } }

// Open opens the audit log at path for appending, creating it (mode 0600) if needed.
// If the file ends in a torn line, the next entry starts on a new line.
func Open(path string, opts ...Option) (*Log, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	l := &Log{f: f}
	for _, o := range opts {
		o(l)
	}
	torn, err := endsTorn(path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	// The next entry starts with the newline (not written now: Open must work on a full
	// disk, where the torn line came from).
	l.torn = torn
	return l, nil
}

// endsTorn reports whether the file at path is not empty and does not end in a newline.
func endsTorn(path string) (bool, error) {
	r, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer r.Close()
	fi, err := r.Stat()
	if err != nil || fi.Size() == 0 {
		return false, err
	}
	var last [1]byte
	if _, err := r.ReadAt(last[:], fi.Size()-1); err != nil && err != io.EOF {
		return false, err
	}
	return last[0] != '\n', nil
}

// ErrClosed is returned by Record after Close.
var ErrClosed = errors.New("audit log closed")

// Record appends e as one line.
func (l *Log) Record(e Entry) error {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	redact(&e)
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.torn {
		b = append([]byte{'\n'}, b...)
	}
	// One write call: os.File.Write retries only after a short write, which a local
	// file gives only when the disk is full.
	n, err := l.f.Write(b)
	switch {
	case err == nil:
		l.torn = false
	case n > 0:
		l.torn = b[n-1] != '\n' // a torn line: the next entry starts on a new line
	}
	if err == nil && l.syncEach {
		err = l.f.Sync()
	}
	if err != nil {
		l.err = fmt.Errorf("audit log: %w", err)
		return l.err
	}
	return nil
}

// Err returns the last error of a write that had no caller to return it to (Sink,
// Refused, Request), or nil.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Sink records every lease transition of a supervisor's events; it ignores the other
// events. Its signature is that of an outbox sink (actors/outbox.Sink). A write error is
// kept for Err.
func (l *Log) Sink(ev connector.Event) {
	t := ev.Transition
	if t == nil {
		return
	}
	l.Record(Entry{Time: ev.Time, Kind: KindTransition, Who: l.who, Board: ev.Board, Job: ev.JobID,
		From: t.From.String(), To: t.To.String(), Reason: t.Message,
		Details: map[string]string{"status": t.Status.String(), "seq": fmt.Sprint(ev.Seq)}})
}

// Refused records a refused access: who (a user name or network address) was denied
// access to a board (and its lease job, if known), and why. The reason must not hold
// the token presented.
func (l *Log) Refused(who, board, job, reason string) {
	l.Record(Entry{Kind: KindRefused, Who: who, Board: board, Job: job, Reason: reason})
}

// Request records that who asked for what (StartJob, StopJob, EndSession, ...) on a
// board's lease, and why.
func (l *Log) Request(who, board, job, what, reason string) {
	l.Record(Entry{Kind: KindRequest, Who: who, Board: board, Job: job, Reason: reason,
		Details: map[string]string{"what": what}})
}

// Sync flushes the file to disk.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	return l.f.Sync()
}

// Close syncs and closes the file. Later Records return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.f.Sync()
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	return err
}

const redacted = "[redacted]"

// secretKey reports whether a Details key names a secret.
func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"token", "authorization", "password", "secret"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// redactBearer replaces what follows "Bearer " (in any case) up to the next space,
// tab, newline or quote.
func redactBearer(s string) string {
	var out strings.Builder
	for {
		i := indexBearer(s)
		if i < 0 {
			if out.Len() == 0 {
				return s
			}
			out.WriteString(s)
			return out.String()
		}
		out.WriteString(s[:i+len(bearer)])
		out.WriteString(redacted)
		s = s[i+len(bearer):]
		j := strings.IndexAny(s, " \t\n\"")
		if j < 0 {
			return out.String()
		}
		s = s[j:]
	}
}

const bearer = "bearer "

// indexBearer returns the index of the first "bearer " in s, in any ASCII case, or -1.
func indexBearer(s string) int {
	for i := 0; i+len(bearer) <= len(s); i++ {
		match := true
		for k := 0; k < len(bearer); k++ {
			c := s[i+k]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != bearer[k] {
				match = false
				break
			}
		}
		if match {
			return i
		}
	}
	return -1
}

func redact(e *Entry) {
	for _, p := range []*string{&e.Who, &e.Board, &e.Job, &e.From, &e.To, &e.Reason, &e.Kind} {
		*p = redactBearer(*p)
	}
	if len(e.Details) == 0 {
		return
	}
	d := make(map[string]string, len(e.Details))
	for k, v := range e.Details {
		if secretKey(k) {
			v = redacted
		}
		d[k] = redactBearer(v)
	}
	e.Details = d
}
