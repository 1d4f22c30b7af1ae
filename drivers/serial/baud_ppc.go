//go:build linux && (ppc || ppc64 || ppc64le)

package serial

import "errors"

// otherBaudSupported says whether setOtherBaud can set a rate outside baudRates: the
// termios2 ioctls are not available on this architecture.
const otherBaudSupported = false

// setOtherBaud refuses: Config.Mode has already rejected such a rate.
func setOtherBaud(fd int, baud int) error {
	return errors.New("non-standard baud rates are not supported on this architecture")
}
