package client

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// screen is what the client knows of its output for progress lines: a progress line
// (the state so far of a line a hook redraws) is drawn in place on a terminal, and
// printed as a plain line otherwise.
type screen struct {
	once  sync.Once
	width int // columns of the terminal that Out is; 0 when Out is not a terminal
	mu    sync.Mutex
	shown int  // columns taken by the progress line on screen; 0 when none is
	mine  bool // the line shown is the client's own (a hook's clock), not a hook's
	// hookAt is when a hook last drew a progress line: the client's own line does
	// not replace it for a while.
	hookAt time.Time
}

// progress shows a progress line: on a terminal it replaces the one shown before (it
// is clipped to the terminal's width, so that it never wraps), otherwise it is printed
// as a line of its own. Control characters in it are made visible.
func (c *Client) progress(text string) {
	c.scr.once.Do(func() { c.scr.width = terminalWidth(c.Out) })
	if c.scr.width == 0 {
		c.say("%s", text)
		return
	}
	c.scr.mu.Lock()
	defer c.scr.mu.Unlock()
	c.scr.mine, c.scr.hookAt = false, time.Now()
	c.draw(text)
}

// ownProgress shows the client's own progress line (a terminal only), unless a hook
// drew one in the last two seconds.
func (c *Client) ownProgress(text string) {
	c.scr.mu.Lock()
	defer c.scr.mu.Unlock()
	if c.scr.shown > 0 && !c.scr.mine && time.Since(c.scr.hookAt) < 2*time.Second {
		return
	}
	c.scr.mine = true
	c.draw(text)
}

// draw puts text in place of the progress line; c.scr.mu is held.
func (c *Client) draw(text string) {
	text = clip(Visible(text), c.scr.width-1)
	n := utf8.RuneCountInString(text)
	fmt.Fprintf(c.Out, "\r%s%s", text, strings.Repeat(" ", max(c.scr.shown-n, 0)))
	c.scr.shown = max(n, c.scr.shown)
}

// clearProgress erases the progress line shown, if any: the line that follows is its
// final state, or a message of the client's own. c.scr.mu is held.
func (c *Client) clearProgress() {
	if c.scr.shown > 0 {
		fmt.Fprintf(c.Out, "\r%s\r", strings.Repeat(" ", c.scr.shown))
		c.scr.shown, c.scr.mine = 0, false
	}
}

// terminalWidth returns the width of the terminal w is, or 0 if it is not one.
func terminalWidth(w any) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	if ws.Col < 2 {
		return 80 // a terminal that does not say its size
	}
	return int(ws.Col)
}

// Visible replaces control characters, which would move the cursor or change the
// terminal, by a visible form (ESC as ^[, C1 codes as \u0085); a tab becomes a space.
// Untrusted text (hook lines, status messages) goes through it before a terminal.
func Visible(s string) string {
	clean := true
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r < 0xa0 {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r == 0x7f:
			b.WriteByte('^')
			b.WriteRune(r ^ 0x40)
		case r >= 0x80 && r < 0xa0:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// clip cuts s to at most n runes.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}
