package jobs

import (
	"bytes"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Severity is how serious a log line is. A hook chooses it with a JMP_ prefix.
type Severity int

// Severities, from least to most serious. The zero value is SeverityInfo, the severity
// of a hook line without a prefix.
const (
	SeverityInfo Severity = iota
	SeverityWarn
	SeverityError
)

// String returns "INFO", "WARN" or "ERROR".
func (s Severity) String() string {
	switch s {
	case SeverityInfo:
		return "INFO"
	case SeverityWarn:
		return "WARN"
	case SeverityError:
		return "ERROR"
	}
	return "Severity(" + strconv.Itoa(int(s)) + ")"
}

// LogSource says where a log line came from. The numbers are upstream Jumpstarter's
// LogSource values, plus SourceMessage for message-of-the-day text.
type LogSource int

// Log sources, numbered as jumpstarter.v1.LogSource.
const (
	SourceUnspecified     LogSource = 0
	SourceDriver          LogSource = 1
	SourceBeforeLeaseHook LogSource = 2
	SourceAfterLeaseHook  LogSource = 3
	SourceSystem          LogSource = 4
	SourceMessage         LogSource = 5
)

// String returns the upstream enum name without its prefix, e.g. "BEFORE_LEASE_HOOK".
func (s LogSource) String() string {
	switch s {
	case SourceUnspecified:
		return "UNSPECIFIED"
	case SourceDriver:
		return "DRIVER"
	case SourceBeforeLeaseHook:
		return "BEFORE_LEASE_HOOK"
	case SourceAfterLeaseHook:
		return "AFTER_LEASE_HOOK"
	case SourceSystem:
		return "SYSTEM"
	case SourceMessage:
		return "MESSAGE"
	}
	return "LogSource(" + strconv.Itoa(int(s)) + ")"
}

// MaxLineBytes is the longest hook line kept whole. A longer line is cut at this many
// bytes (at a UTF-8 boundary), marked with CutMark, and the rest of it, up to the next
// newline, is discarded.
const MaxLineBytes = 64 << 10

// CutMark is appended to the text of a line that was cut at MaxLineBytes.
const CutMark = " [cut: line over 64 KiB]"

// The prefixes a hook writes at the start of a line to choose its severity.
const (
	PrefixInfo  = "JMP_INFO:"
	PrefixWarn  = "JMP_WARN:"
	PrefixError = "JMP_ERROR:"
)

// HookLine is one parsed line of hook output.
type HookLine struct {
	Severity Severity
	// Text is the line without its prefix, trailing newline or carriage return, always
	// valid UTF-8.
	Text string
	// Cut reports that the line was longer than MaxLineBytes; Text ends with CutMark.
	Cut bool
}

// ParseHookLine parses one line of hook output (without its newline). A JMP_INFO:,
// JMP_WARN: or JMP_ERROR: prefix sets the severity and is stripped together with the
// spaces after it; any other line is INFO and kept as it is. A trailing carriage return
// is removed. Invalid UTF-8 is replaced with U+FFFD, never dropped.
func ParseHookLine(raw []byte) HookLine {
	raw = bytes.TrimSuffix(raw, []byte{'\r'})
	l := HookLine{Severity: SeverityInfo}
	for _, p := range [...]struct {
		prefix string
		sev    Severity
	}{{PrefixInfo, SeverityInfo}, {PrefixWarn, SeverityWarn}, {PrefixError, SeverityError}} {
		if bytes.HasPrefix(raw, []byte(p.prefix)) {
			l.Severity = p.sev
			raw = bytes.TrimLeft(raw[len(p.prefix):], " \t")
			break
		}
	}
	l.Text = validUTF8(raw)
	return l
}

func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// LineSplitter splits a stream of hook output into parsed lines. Its zero value is
// ready to use. It is not safe for concurrent use.
type LineSplitter struct {
	buf      []byte
	skipping bool // discarding the rest of a line that was cut
}

// Write feeds p to the splitter and calls emit for every line completed by it, in order.
func (s *LineSplitter) Write(p []byte, emit func(HookLine)) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if s.skipping {
			if i < 0 {
				return
			}
			s.skipping = false
			p = p[i+1:]
			continue
		}
		var chunk []byte
		if i < 0 {
			chunk, p = p, nil
		} else {
			chunk, p = p[:i], p[i+1:]
		}
		if len(s.buf)+len(chunk) > MaxLineBytes {
			s.buf = append(s.buf, chunk[:MaxLineBytes-len(s.buf)]...)
			emit(s.cut())
			s.skipping = i < 0
			continue
		}
		s.buf = append(s.buf, chunk...)
		if i >= 0 {
			emit(ParseHookLine(s.buf))
			s.buf = s.buf[:0]
		}
	}
}

// Flush emits the pending partial line, if any (the output ended without a newline).
func (s *LineSplitter) Flush(emit func(HookLine)) {
	if len(s.buf) > 0 {
		emit(ParseHookLine(s.buf))
	}
	s.buf = s.buf[:0]
	s.skipping = false
}

// Pending returns how many bytes of an unfinished line the splitter holds.
func (s *LineSplitter) Pending() int { return len(s.buf) }

func (s *LineSplitter) cut() HookLine {
	b := s.buf
	// Back up to a rune boundary so a multi-byte character is not split in two.
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				b = b[:i]
			}
			break
		}
	}
	l := ParseHookLine(b)
	l.Text += CutMark
	l.Cut = true
	s.buf = s.buf[:0]
	return l
}
