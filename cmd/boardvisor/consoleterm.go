package main

// The start-up of `boardvisor console` on a terminal: a banner saying whose console it
// is and how to leave, and the terminal in raw mode, so that nothing is echoed locally
// (what shows is the board's own echo: a password typed at its prompt stays hidden),
// keys go to the board as typed (Ctrl+C interrupts a program on the board), and one
// key, Ctrl+], leaves.

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// consoleEscape is the key that leaves the console (Ctrl+], as telnet's and virsh's).
const consoleEscape = 0x1d

// consoleTerminal prints the banner and, when stdin is a terminal, puts it in raw mode.
// restore puts the terminal back as it was; call it before anything else is printed.
func consoleTerminal(board string) (raw bool, restore func()) {
	restore = func() {}
	fd := int(os.Stdin.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Console of board %s: lines you type are sent to it. Ctrl+C leaves.\n", board)
		return false, restore
	}
	t := *old
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	// Output processing stays on: a board's bare "\n" still starts a new line.
	fmt.Fprintf(os.Stderr, "Console of board %s: what you type goes to the board (no local echo). Ctrl+] leaves.\r\n", board)
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err != nil {
		fmt.Fprintf(os.Stderr, "boardvisor: the terminal stays in line mode (%v): lines you type are sent, echoed here too. Ctrl+C leaves.\n", err)
		return false, restore
	}
	return true, func() {
		unix.IoctlSetTermios(fd, unix.TCSETS, old)
		fmt.Fprintf(os.Stderr, "\r\nLeft the console of board %s.\n", board)
	}
}

// consoleInput reads what the user types and hands it to send, until the escape key
// (raw mode: it returns true), the end of input (the console goes on showing the board:
// `boardvisor console > file` records it; a read error ends input the same way), or a
// failed send, whose error it returns. In line mode each line is sent with a carriage
// return, as Enter on a serial terminal, and a last line without one as it is. In raw mode what one read
// returns goes at once (a key as it is typed); send may keep the slice it is given.
func consoleInput(in io.Reader, raw bool, send func([]byte) error) (escaped bool, err error) {
	if !raw {
		var line []byte
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			line = append(line, buf[:n]...)
			for {
				i := bytes.IndexByte(line, '\n')
				if i < 0 {
					break
				}
				if serr := send(append(line[:i:i], '\r')); serr != nil {
					return false, serr
				}
				line = line[i+1:]
			}
			if err != nil {
				// The end of input: a last line without a newline is sent as it is,
				// typed but not entered (`printf 'y' | boardvisor console`).
				if len(line) > 0 {
					if serr := send(line); serr != nil {
						return false, serr
					}
				}
				return false, nil
			}
		}
	}
	buf := make([]byte, 4096)
	for {
		n, err := in.Read(buf)
		chunk := append([]byte(nil), buf[:n]...) // gRPC may read a message after Send returns
		if i := bytes.IndexByte(chunk, consoleEscape); i >= 0 {
			if i > 0 {
				if serr := send(chunk[:i]); serr != nil {
					return false, serr
				}
			}
			return true, nil
		}
		if len(chunk) > 0 {
			if serr := send(chunk); serr != nil {
				return false, serr
			}
		}
		if err != nil {
			return false, nil
		}
	}
}
