//go:build linux && !ppc && !ppc64 && !ppc64le

package serial

import "golang.org/x/sys/unix"

// otherBaudSupported says whether setOtherBaud can set a rate outside baudRates.
const otherBaudSupported = true

// setOtherBaud sets a rate outside the Bnnn table with the termios2 ioctls (BOTHER).
func setOtherBaud(fd int, baud int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS2)
	if err != nil {
		return err
	}
	t.Cflag &^= unix.CBAUD
	t.Cflag |= unix.BOTHER
	t.Ispeed, t.Ospeed = uint32(baud), uint32(baud)
	return unix.IoctlSetTermios(fd, unix.TCSETS2, t)
}
