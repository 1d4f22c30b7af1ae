package jobs

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseHookLine(t *testing.T) {
	cases := []struct {
		in   string
		sev  Severity
		text string
	}{
		{"JMP_INFO: Powering on device...", SeverityInfo, "Powering on device..."},
		{"JMP_WARN:disk almost full", SeverityWarn, "disk almost full"},
		{"JMP_ERROR:  \tflash failed", SeverityError, "flash failed"},
		{"plain output", SeverityInfo, "plain output"},
		{"  JMP_WARN: not at the start", SeverityInfo, "  JMP_WARN: not at the start"},
		{"jmp_warn: lower case is not a prefix", SeverityInfo, "jmp_warn: lower case is not a prefix"},
		{"JMP_DEBUG: unknown prefix kept", SeverityInfo, "JMP_DEBUG: unknown prefix kept"},
		{"windows line\r", SeverityInfo, "windows line"},
		{"JMP_ERROR:", SeverityError, ""},
		{"", SeverityInfo, ""},
		{"bad \xff\xfe bytes", SeverityInfo, "bad \uFFFD bytes"},
	}
	for _, c := range cases {
		l := ParseHookLine([]byte(c.in))
		if l.Severity != c.sev || l.Text != c.text || l.Cut {
			t.Errorf("ParseHookLine(%q) = %+v, want %s %q", c.in, l, c.sev, c.text)
		}
	}
}

func collect(s *LineSplitter, chunks ...string) []HookLine {
	var out []HookLine
	emit := func(l HookLine) { out = append(out, l) }
	for _, c := range chunks {
		s.Write([]byte(c), emit)
	}
	s.Flush(emit)
	return out
}

func TestLineSplitterSplitsAcrossWrites(t *testing.T) {
	var s LineSplitter
	got := collect(&s, "JMP_IN", "FO: a\nJMP_WARN: b\npl", "ain\n", "", "\n", "tail without newline")
	want := []HookLine{{Text: "a"}, {Severity: SeverityWarn, Text: "b"}, {Text: "plain"},
		{Text: ""}, {Text: "tail without newline"}}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %+v, want %+v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestLineSplitterCutsLongLines(t *testing.T) {
	var s LineSplitter
	long := strings.Repeat("x", MaxLineBytes+1000)
	// Written in pieces, without a newline until the end, then a normal line.
	got := collect(&s, "JMP_WARN: "+long[:1000], long[1000:50000], long[50000:]+"\nnext\n")
	if len(got) != 2 {
		t.Fatalf("got %d lines, want the cut line and the next one", len(got))
	}
	if !got[0].Cut || got[0].Severity != SeverityWarn || !strings.HasSuffix(got[0].Text, CutMark) {
		t.Fatalf("first line not cut and marked: cut=%v sev=%s suffix=%q", got[0].Cut, got[0].Severity, got[0].Text[len(got[0].Text)-30:])
	}
	if n := len(got[0].Text) - len(CutMark); n > MaxLineBytes {
		t.Fatalf("cut line keeps %d bytes, more than %d", n, MaxLineBytes)
	}
	if got[1].Text != "next" {
		t.Fatalf("line after the cut one = %q, want next", got[1].Text)
	}
	// 10 MB with no newline at all: one cut line, memory bounded.
	var s2 LineSplitter
	var lines []HookLine
	chunk := bytes.Repeat([]byte("y"), 1<<20)
	for i := 0; i < 10; i++ {
		s2.Write(chunk, func(l HookLine) { lines = append(lines, l) })
		if s2.Pending() > MaxLineBytes {
			t.Fatalf("splitter holds %d bytes", s2.Pending())
		}
	}
	s2.Flush(func(l HookLine) { lines = append(lines, l) })
	if len(lines) != 1 || !lines[0].Cut {
		t.Fatalf("10 MB without newline gave %d lines", len(lines))
	}
}

func TestLineSplitterCutKeepsRunesWhole(t *testing.T) {
	var s LineSplitter
	// "é" is two bytes; place one across the cut point.
	line := strings.Repeat("a", MaxLineBytes-1) + "é" + "bbb\n"
	got := collect(&s, line)
	if len(got) != 1 || !utf8.ValidString(got[0].Text) || strings.Contains(got[0].Text, "\uFFFD") {
		t.Fatalf("cut split a rune: %d lines, valid=%v", len(got), utf8.ValidString(got[0].Text))
	}
	if !strings.HasSuffix(strings.TrimSuffix(got[0].Text, CutMark), "a") {
		t.Fatal("cut did not back up to the rune boundary")
	}
}

// FuzzHookLines checks the hook-output parser on arbitrary bytes: it never panics, every
// line is valid UTF-8 and at most MaxLineBytes long plus the mark, nothing is lost but
// the tails of cut lines, and how the input is split into writes does not matter.
func FuzzHookLines(f *testing.F) {
	for _, s := range []string{"JMP_INFO: a\nJMP_WARN: b\nJMP_ERROR: c\nplain\n", "no newline", "\xff\xfe\n\r\n",
		"JMP_WARN:\n", "10%\r20%\r\n", "\rJMP_WARN: a\r  \rb\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		var whole, pieces LineSplitter
		n := int(split)%7 + 1
		var chunks []string
		for i := 0; i < len(data); i += n {
			chunks = append(chunks, string(data[i:min(i+n, len(data))]))
		}
		// The state of an unfinished line does not depend on the writes either.
		var pw, pp LineSplitter
		pw.Write(data, func(HookLine) {})
		for _, c := range chunks {
			pp.Write([]byte(c), func(HookLine) {})
		}
		wl, wok := pw.Progress()
		pl, pok := pp.Progress()
		if wl != pl || wok != pok {
			t.Fatalf("progress differs: %+v %v vs %+v %v", wl, wok, pl, pok)
		}
		if wok && (!wl.Progress || !utf8.ValidString(wl.Text) || !bytes.Contains(data, []byte("\r"))) {
			t.Fatalf("bad progress line %+v", wl)
		}
		if pw.Pending() > 2*MaxLineBytes {
			t.Fatalf("splitter holds %d bytes", pw.Pending())
		}
		a := collect(&whole, string(data))
		b := collect(&pieces, chunks...)
		if len(a) != len(b) {
			t.Fatalf("whole gave %d lines, pieces of %d gave %d", len(a), n, len(b))
		}
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("line %d differs: %+v vs %+v", i, a[i], b[i])
			}
			if a[i].Progress {
				t.Fatalf("line %d is a progress line", i)
			}
			if !utf8.ValidString(a[i].Text) {
				t.Fatalf("line %d is not valid UTF-8", i)
			}
			if len(a[i].Text) > 3*MaxLineBytes+len(CutMark) {
				t.Fatalf("line %d is %d bytes", i, len(a[i].Text))
			}
		}
		if !bytes.Contains(data, []byte("\n")) && len(data) > 0 && len(a) != 1 {
			t.Fatalf("input without newline gave %d lines", len(a))
		}
	})
}

// A carriage return redraws the line: the line is its last non-blank segment; CRLF is
// a plain line end.
func TestLineSplitterCarriageReturns(t *testing.T) {
	cases := []struct {
		in   string
		want []HookLine
	}{
		{"step 1\rstep 2\rdone\n", []HookLine{{Text: "done"}}},
		{"\r10%\r20%\r100%\n", []HookLine{{Text: "100%"}}},
		{"10%\r20%\r100%\r\n", []HookLine{{Text: "100%"}}},
		{"windows\r\nline\r\n", []HookLine{{Text: "windows"}, {Text: "line"}}},
		{"50%\r     \r\n", []HookLine{{Text: "50%"}}},
		{"   \n", []HookLine{{Text: "   "}}},
		{"\r\n", []HookLine{{Text: ""}}},
		{"JMP_INFO: a\rJMP_ERROR: b\n", []HookLine{{Severity: SeverityError, Text: "b"}}},
		{"JMP_WARN: flashing 10%\r20%\n", []HookLine{{Text: "20%"}}},
		{"a\rb", []HookLine{{Text: "b"}}},
		{"\r", []HookLine{{Text: ""}}},
	}
	for _, c := range cases {
		var s LineSplitter
		got := collect(&s, c.in)
		if len(got) != len(c.want) {
			t.Errorf("%q: got %+v, want %+v", c.in, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%q: line %d = %+v, want %+v", c.in, i, got[i], c.want[i])
			}
		}
	}
}

// Progress gives the state of a line being redrawn, as far as it has been written.
func TestLineSplitterProgress(t *testing.T) {
	var s LineSplitter
	emitted := 0
	emit := func(HookLine) { emitted++ }
	if _, ok := s.Progress(); ok {
		t.Fatal("progress before any output")
	}
	s.Write([]byte("plain line without newline yet"), emit)
	if _, ok := s.Progress(); ok {
		t.Fatal("a line without carriage return is not progress")
	}
	s.Write([]byte("\rJMP_WARN: 10%"), emit)
	if l, ok := s.Progress(); !ok || l != (HookLine{Severity: SeverityWarn, Text: "10%", Progress: true}) {
		t.Fatalf("progress = %+v, %v", l, ok)
	}
	s.Write([]byte("\r    "), emit) // a segment being cleared keeps the state
	if l, ok := s.Progress(); !ok || l.Text != "10%" {
		t.Fatalf("progress = %+v, %v", l, ok)
	}
	s.Write([]byte("\r20% \xc3"), emit) // half of a two-byte character
	if l, ok := s.Progress(); !ok || l.Text != "20% " || l.Severity != SeverityInfo {
		t.Fatalf("progress = %+v, %v", l, ok)
	}
	s.Write([]byte("\xa9\r"), emit)
	if l, ok := s.Progress(); !ok || l.Text != "20% \u00e9" {
		t.Fatalf("progress = %+v, %v", l, ok)
	}
	if emitted != 0 {
		t.Fatalf("%d lines emitted before the newline", emitted)
	}
	var last HookLine
	s.Write([]byte("\n"), func(l HookLine) { last = l; emitted++ })
	if emitted != 1 || last != (HookLine{Text: "20% \u00e9"}) {
		t.Fatalf("line = %+v (%d emitted)", last, emitted)
	}
	if _, ok := s.Progress(); ok {
		t.Fatal("progress after the newline")
	}
	// A redrawn segment over 64 KiB is cut, and its state is bounded.
	s.Write([]byte("\r"+strings.Repeat("z", 3*MaxLineBytes)), emit)
	if l, ok := s.Progress(); !ok || !l.Cut || len(l.Text) != MaxLineBytes+len(CutMark) || s.Pending() > 2*MaxLineBytes {
		t.Fatalf("long progress: cut %v, %d bytes, pending %d", l.Cut, len(l.Text), s.Pending())
	}
}
