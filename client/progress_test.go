package client

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/creack/pty"
)

func hookLine(text string, progress bool) *jpb.LogStreamResponse {
	src := jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK
	return &jpb.LogStreamResponse{Severity: "INFO", Message: text, Source: &src, Progress: progress}
}

// On a terminal (a real pseudo-terminal here), progress lines are drawn in place, clipped
// to the terminal's width and with control characters made visible; the ordinary line
// that follows replaces them.
func TestProgressInPlaceOnATerminal(t *testing.T) {
	master, slave, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer master.Close()
	defer slave.Close()
	if err := pty.Setsize(slave, &pty.Winsize{Rows: 24, Cols: 30}); err != nil {
		t.Fatal(err)
	}
	s := &Session{c: &Client{Out: slave}}
	s.print(hookLine("flashing 10%", true))
	s.print(hookLine("\x1b]0;title\x07 50% of a long progress line", true))
	s.print(hookLine("done", false))
	slave.Close()
	got := readAll(t, master)
	want := "\r[Hook INFO] flashing 10%" +
		"\r[Hook INFO] ^[]0;title^G 50% " + // 29 columns: never wraps
		"\r" + strings.Repeat(" ", 29) + "\r" +
		"[Hook INFO] done\r\n" // the terminal turns \n into \r\n
	if got != want {
		t.Errorf("terminal got\n%q\nwant\n%q", got, want)
	}
}

// Piped, progress lines are plain lines.
func TestProgressAsLinesWhenPiped(t *testing.T) {
	var out bytes.Buffer
	s := &Session{c: &Client{Out: &out}}
	s.print(hookLine("flashing 10%", true))
	s.print(hookLine("done", false))
	if got, want := out.String(), "[Hook INFO] flashing 10%\n[Hook INFO] done\n"; got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
}

// readAll reads the master until the slave is closed (EIO), within a bound.
func readAll(t *testing.T, master io.Reader) string {
	t.Helper()
	done := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, master)
		done <- b.String()
	}()
	select {
	case s := <-done:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal did not end")
		return ""
	}
}
