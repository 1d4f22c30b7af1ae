package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// TestConsoleInput: what boardvisor console sends of what is typed, in line mode (a
// pipe, a file) and raw mode (a terminal), and that a failed send ends it with that
// error rather than going on typing into nothing.
func TestConsoleInput(t *testing.T) {
	refused := errors.New("stream refused")
	for _, tc := range []struct {
		name        string
		in          string
		raw         bool
		failAt      int // the send that fails, from 1 (0: none)
		wantSent    []string
		wantEscaped bool
		wantErr     error
	}{
		{name: "lines get a carriage return", in: "ls\npwd\n", wantSent: []string{"ls\r", "pwd\r"}},
		{name: "a last line without a newline is sent as typed", in: "ls\ny", wantSent: []string{"ls\r", "y"}},
		{name: "empty input sends nothing", in: "", wantSent: nil},
		{name: "line mode: a failed send ends it", in: "a\nb\nc\n", failAt: 2, wantSent: []string{"a\r", "b\r"}, wantErr: refused},
		{name: "line mode: a failed send of the last line", in: "a\nb", failAt: 2, wantSent: []string{"a\r", "b"}, wantErr: refused},
		{name: "raw: keys go as read", in: "ab\xff", raw: true, wantSent: []string{"a", "b", "\xff"}},
		{name: "raw: the escape key leaves, what came before it is sent", in: "ab\x1dcd", raw: true, wantSent: []string{"a", "b"}, wantEscaped: true},
		{name: "raw: a failed send ends it", in: "abc", raw: true, failAt: 2, wantSent: []string{"a", "b"}, wantErr: refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent []string
			escaped, err := consoleInput(iotest.OneByteReader(strings.NewReader(tc.in)), tc.raw, func(p []byte) error {
				sent = append(sent, string(p))
				if len(sent) == tc.failAt {
					return refused
				}
				return nil
			})
			if !slices.Equal(sent, tc.wantSent) {
				t.Errorf("sent %q, want %q", sent, tc.wantSent)
			}
			if escaped != tc.wantEscaped || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("got escaped %v, err %v; want %v, %v", escaped, err, tc.wantEscaped, tc.wantErr)
			}
		})
	}
}

// TestConsoleInputEndsOnAReadError: a read error is the end of input (the console goes
// on showing the board), and what came with the error is still sent.
func TestConsoleInputEndsOnAReadError(t *testing.T) {
	in := iotest.DataErrReader(iotest.TimeoutReader(strings.NewReader("x\ny")))
	var sent []string
	escaped, err := consoleInput(in, false, func(p []byte) error { sent = append(sent, string(p)); return nil })
	if escaped || err != nil {
		t.Fatalf("got escaped %v, err %v; want false, nil", escaped, err)
	}
	if want := []string{"x\r", "y"}; !slices.Equal(sent, want) {
		t.Fatalf("sent %q, want %q: what was read with the error, then nothing more", sent, want)
	}
}
