package serial

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Identity says which device a serial path names. For a USB adapter VID, PID and
// SerialNumber identify it wherever it is plugged in, which /dev/ttyUSBn does not.
type Identity struct {
	// Path is the path asked about.
	Path string
	// Device is the device node it resolves to (symlinks followed), e.g. /dev/ttyUSB0.
	Device string
	// USB is true for a USB serial device; the fields below are set only then.
	USB bool
	// VID and PID are the USB vendor and product IDs, upper-case hex ("0403", "6001").
	VID, PID string
	// SerialNumber is the USB serial number, if the device has one.
	SerialNumber string
	// Manufacturer and Product are the USB descriptor strings, if any.
	Manufacturer, Product string
}

// String returns a short description, e.g. "/dev/ttyUSB0 (USB 0403:6001 serial A50285BI)".
func (id Identity) String() string {
	if !id.USB {
		return id.Device
	}
	s := fmt.Sprintf("%s (USB %s:%s", id.Device, id.VID, id.PID)
	if id.SerialNumber != "" {
		s += " serial " + id.SerialNumber
	}
	return s + ")"
}

// sysClassTTY is where the kernel describes ttys; a variable for tests.
var sysClassTTY = "/sys/class/tty"

// Identify reports which device path names. It reads the device's attributes from
// sysfs with the same layout rules as go.bug.st/serial/enumerator (usb-serial
// adapters such as FTDI or CP210x, and CDC-ACM devices), but only for this one device,
// opening nothing: see the package documentation for why the enumerator itself is not
// called. A path that exists but is not a USB serial device (a UART, a pty) gives an
// Identity with USB false and no error.
func Identify(path string) (Identity, error) {
	id := Identity{Path: path}
	dev, err := filepath.EvalSymlinks(path)
	if err != nil {
		return id, fmt.Errorf("identify %s: %w", path, unwrapPath(err))
	}
	id.Device = dev
	if _, err := os.Stat(dev); err != nil {
		return id, fmt.Errorf("identify %s: %w", path, unwrapPath(err))
	}
	devicePath := filepath.Join(sysClassTTY, filepath.Base(dev), "device")
	if _, err := os.Stat(devicePath); err != nil {
		return id, nil // no device behind it: a pty, a virtual console
	}
	real, err := filepath.EvalSymlinks(devicePath)
	if err != nil {
		return id, fmt.Errorf("identify %s: %w", path, err)
	}
	subsystem, err := filepath.EvalSymlinks(filepath.Join(real, "subsystem"))
	if err != nil {
		return id, fmt.Errorf("identify %s: %w", path, err)
	}
	var usbDevice string
	switch filepath.Base(subsystem) {
	case "usb-serial": // .../1-1/1-1:1.0/ttyUSB0: the USB device is two levels up
		usbDevice = filepath.Dir(filepath.Dir(real))
	case "usb": // CDC-ACM: .../1-1/1-1:1.0
		usbDevice = filepath.Dir(real)
	default:
		return id, nil
	}
	attrs := map[string]*string{
		"idVendor": &id.VID, "idProduct": &id.PID, "serial": &id.SerialNumber,
		"manufacturer": &id.Manufacturer, "product": &id.Product,
	}
	for name, dst := range attrs {
		v, err := readAttr(filepath.Join(usbDevice, name))
		if err != nil {
			return id, fmt.Errorf("identify %s: %w", path, err)
		}
		*dst = v
	}
	id.VID, id.PID = strings.ToUpper(id.VID), strings.ToUpper(id.PID)
	id.USB = id.VID != "" && id.PID != ""
	return id, nil
}

// readAttr reads the first line of a sysfs attribute; a missing or empty one is "".
func readAttr(name string) (string, error) {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, _, err := bufio.NewReader(f).ReadLine()
	if errors.Is(err, io.EOF) {
		return "", nil
	}
	return strings.TrimSpace(string(line)), err
}
