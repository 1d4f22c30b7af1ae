// Package tty holds the termios helpers the drivers share. Every call goes through
// (*os.File).SyscallConn().Control, which, unlike (*os.File).Fd, leaves the descriptor in
// non-blocking mode under Go's poller, so reads keep honouring deadlines and Close.
package tty

import (
	"os"

	"golang.org/x/sys/unix"
)

// Control runs fn with f's descriptor, returning fn's error or the error of getting the
// descriptor.
func Control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// MakeRaw changes t to raw mode, as cfmakeraw(3) does: no input or output processing, no
// echo, no signals, no flow control, 8 data bits, no parity, and reads that return as
// soon as one byte is there. It also sets CREAD and CLOCAL (ignore modem control lines).
func MakeRaw(t *unix.Termios) {
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR |
		unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY | unix.INPCK |
		unix.IGNPAR | unix.IUCLC | unix.IMAXBEL
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHOE | unix.ECHOK | unix.ECHONL | unix.ECHOCTL |
		unix.ECHOPRT | unix.ECHOKE | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.PARODD | unix.CMSPAR | unix.CSTOPB | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
}

// SetRaw puts the terminal f in raw mode (see MakeRaw), keeping its speed.
func SetRaw(f *os.File) error {
	return Control(f, func(fd int) error {
		t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return err
		}
		MakeRaw(t)
		return unix.IoctlSetTermios(fd, unix.TCSETS, t)
	})
}
