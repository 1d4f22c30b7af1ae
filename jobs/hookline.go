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
	// Progress reports a progress line: the state, so far, of a line that the hook is
	// redrawing with carriage returns (a progress bar). It is superseded by the next
	// progress line of the same source, and by the ordinary line that ends the line.
	Progress bool
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
//
// A line ends at a newline. Within a line, a carriage return ends a segment: the hook
// is redrawing the line (a progress bar, `dd status=progress`), and what a terminal
// would show is the last segment. So a line's text is its last segment that is not
// blank (empty or only spaces and tabs), or, if every segment is blank, its last one:
// "step 1\rstep 2\n" is the line "step 2", and "done\r\n" (a CRLF) is "done". Each
// segment is parsed on its own (JMP_ prefix, UTF-8), and one longer than MaxLineBytes is
// cut there and marked, the rest of it discarded up to its carriage return or newline;
// so the splitter holds at most two segments (2 × MaxLineBytes) whatever it is fed.
//
// Progress returns the state of a line being redrawn before its newline arrives; the
// splitter never emits it by itself (rate-limiting progress is the caller's business).
type LineSplitter struct {
	seg      []byte // the current segment, at most MaxLineBytes
	segCut   bool   // seg was cut: the rest of the segment is discarded
	state    []byte // the line's last non-blank segment ended by a carriage return
	stateCut bool
	redrawn  bool // the current line has had a carriage return
	started  bool // a byte of the current line has been seen
}

// Write feeds p to the splitter and calls emit for every line completed by it, in order.
func (s *LineSplitter) Write(p []byte, emit func(HookLine)) {
	for len(p) > 0 {
		end := bytes.IndexByte(p, '\n')
		nl := end >= 0
		if !nl {
			end = len(p)
		}
		if cr := bytes.IndexByte(p[:end], '\r'); cr >= 0 {
			s.add(p[:cr])
			s.endSegment()
			p = p[cr+1:]
			continue
		}
		s.add(p[:end])
		if !nl {
			return
		}
		emit(s.line())
		s.reset()
		p = p[end+1:]
	}
}

// Flush emits the pending partial line, if any (the output ended without a newline).
func (s *LineSplitter) Flush(emit func(HookLine)) {
	if s.started {
		emit(s.line())
	}
	s.reset()
}

// Progress returns the state so far of the current, unfinished line if the hook is
// redrawing it (the line has had a carriage return): its last non-blank segment,
// including the one still being written (an incomplete UTF-8 sequence at its end left
// out). ok is false for a line without a carriage return, or with only blank segments.
func (s *LineSplitter) Progress() (l HookLine, ok bool) {
	if !s.redrawn {
		return HookLine{}, false
	}
	b, cut := s.seg, s.segCut
	if blank(b) {
		b, cut = s.state, s.stateCut
	}
	if len(b) == 0 {
		return HookLine{}, false
	}
	if !cut {
		b = wholeRunes(b)
	}
	l = parse(b, cut)
	l.Progress = true
	return l, true
}

// Pending returns how many bytes of an unfinished line the splitter holds.
func (s *LineSplitter) Pending() int { return len(s.seg) + len(s.state) }

// add appends b to the current segment, up to MaxLineBytes.
func (s *LineSplitter) add(b []byte) {
	if len(b) == 0 {
		return
	}
	s.started = true
	if s.segCut {
		return
	}
	if room := MaxLineBytes - len(s.seg); len(b) > room {
		s.seg = append(s.seg, b[:room]...)
		s.segCut = true
		return
	}
	s.seg = append(s.seg, b...)
}

// endSegment handles a carriage return: a non-blank segment becomes the line's state.
func (s *LineSplitter) endSegment() {
	s.started, s.redrawn = true, true
	if !blank(s.seg) {
		s.state, s.seg = s.seg, s.state
		s.stateCut = s.segCut
	}
	s.seg = s.seg[:0]
	s.segCut = false
}

// line returns the current line: its last non-blank segment, or its last one.
func (s *LineSplitter) line() HookLine {
	b, cut := s.seg, s.segCut
	if blank(b) && len(s.state) > 0 {
		b, cut = s.state, s.stateCut
	}
	return parse(b, cut)
}

func (s *LineSplitter) reset() {
	s.seg, s.state = s.seg[:0], s.state[:0]
	s.segCut, s.stateCut, s.redrawn, s.started = false, false, false, false
}

// parse parses a segment; a cut one is backed up to a rune boundary and marked.
func parse(b []byte, cut bool) HookLine {
	if !cut {
		return ParseHookLine(b)
	}
	l := ParseHookLine(wholeRunes(b))
	l.Text += CutMark
	l.Cut = true
	return l
}

// wholeRunes drops an incomplete UTF-8 sequence at the end of b, so a multi-byte
// character is not split in two.
func wholeRunes(b []byte) []byte {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				b = b[:i]
			}
			break
		}
	}
	return b
}

// blank reports whether b is empty or only spaces and tabs.
func blank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' {
			return false
		}
	}
	return true
}
