package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/connector/tlsconf"
	"github.com/boardvisor/boardvisor/jobs"
)

// Validate checks the whole config and returns every problem found, joined, one
// *Problem per line (nil if there is none). Fields left at their zero value where a
// default exists (listen, log, timeouts, queue, lease durations, serial line settings)
// are accepted, so a config built in code need not call ApplyDefaults first.
//
// Besides checking values, Validate stats each hook's exec file (it must be a regular,
// executable file) and each serial device (it must exist), and opens the coordinator's
// token file (it must be a readable regular file).
func (c *Config) Validate() error {
	v := &validator{c: c}
	v.host()
	v.defaults()
	v.boards()
	return joinProblems(v.probs)
}

// validator collects the problems of one config.
type validator struct {
	c     *Config
	probs []*Problem
}

// scope is where a group of fields lives: the host level (prefix "" or "defaults") or
// one board (prefix "boards[i]").
type scope struct {
	v      *validator
	prefix string
	board  string // the board's name; "" at host level or for a board without a name
}

// add reports a problem with the field at rel, a path relative to the scope.
func (s scope) add(rel, format string, args ...any) {
	full := rel
	if s.prefix != "" {
		full = s.prefix + "." + rel
	}
	p := &Problem{
		File:    s.v.c.Path,
		Line:    s.v.c.pos.line(full),
		Field:   full,
		Message: fmt.Sprintf(format, args...),
	}
	if s.board != "" {
		p.Board, p.Field = s.board, rel
	}
	s.v.probs = append(s.v.probs, p)
}

var (
	logLevels  = []string{"trace", "debug", "info", "warn", "error"}
	logFormats = []string{"json", "text", "auto"}
	parities   = []string{"none", "odd", "even", "mark", "space"}
	// standardBauds are the rates termios names (B50 to B4000000).
	standardBauds = []int{50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800,
		9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
		1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000}
)

func (v *validator) host() {
	s := scope{v: v}
	c := v.c
	switch {
	case c.StateDir == "":
		s.add("stateDir", "required (an absolute directory path; created if missing)")
	case !filepath.IsAbs(c.StateDir):
		s.add("stateDir", "%q is not an absolute path", c.StateDir)
	}
	if c.Listen != "" {
		if msg := checkHostPort(c.Listen, false); msg != "" {
			s.add("listen", "%s", msg)
		}
	}
	if t := c.TLS; t != nil {
		switch {
		case t.CertFile == "":
			s.add("tls.certFile", "required (the client service's certificate, PEM; leave out the tls block to serve plaintext)")
		case t.KeyFile == "":
			s.add("tls.keyFile", "required (the certificate's private key, PEM)")
		default:
			checkKeyPair(s, "tls.certFile", "tls.keyFile", t.CertFile, t.KeyFile)
		}
		if t.ClientCAFile != "" {
			if msg := checkReadable(t.ClientCAFile); msg != "" {
				s.add("tls.clientCAFile", "%s", msg)
			} else if _, err := tlsconf.LoadPool(t.ClientCAFile); err != nil {
				s.add("tls.clientCAFile", "%s holds no PEM certificate", t.ClientCAFile)
			}
		}
	}
	if c.Log.Level != "" && !slices.Contains(logLevels, c.Log.Level) {
		s.add("log.level", "unknown level %q (want trace, debug, info, warn or error)", c.Log.Level)
	}
	if c.Log.Format != "" && !slices.Contains(logFormats, c.Log.Format) {
		s.add("log.format", "unknown format %q (want json, text or auto)", c.Log.Format)
	}
	if c.HookCgroup != "" && !filepath.IsAbs(c.HookCgroup) {
		s.add("hookCgroup", "%q is not an absolute path (want a directory in a cgroup v2 hierarchy)", c.HookCgroup)
	}
	if c.Metrics != "" {
		if msg := checkHostPort(c.Metrics, false); msg != "" {
			s.add("metrics", "%s", msg)
		}
	}
	if c.Images.MaxBytes < 0 {
		s.add("images.maxBytes", "%d must not be negative", c.Images.MaxBytes)
	}
	for i, r := range c.Images.PlainHTTP {
		if msg := checkHostPort(r, true); msg != "" {
			s.add(fmt.Sprintf("images.plainHTTP[%d]", i), "%s", msg)
		}
	}
	if c.Images.FetchTimeout < 0 || c.Images.ProvisionTimeout < 0 {
		s.add("images", "timeouts must not be negative")
	}
	if co := c.Coordinator; co != nil {
		if addrs := co.AddressList(); len(addrs) == 0 {
			s.add("coordinator.address", "required (host:port of the coordinator, or several comma-separated; leave out the coordinator block to run without one)")
		} else {
			for _, a := range addrs {
				if msg := checkHostPort(a, true); msg != "" {
					s.add("coordinator.address", "%s", msg)
				}
			}
		}
		if co.TokenFile != "" {
			if msg := checkReadable(co.TokenFile); msg != "" {
				s.add("coordinator.tokenFile", "%s", msg)
			}
		}
		if co.CAFile != "" {
			if msg := checkReadable(co.CAFile); msg != "" {
				s.add("coordinator.caFile", "%s", msg)
			}
		}
		switch {
		case co.CertFile == "" && co.KeyFile == "":
		case co.CertFile == "":
			s.add("coordinator.certFile", "required with coordinator.keyFile (the certificate this supervisor presents)")
		case co.KeyFile == "":
			s.add("coordinator.keyFile", "required with coordinator.certFile (the certificate's private key)")
		case co.CAFile == "":
			s.add("coordinator.certFile", "a client certificate needs TLS: set coordinator.caFile too")
		default:
			checkKeyPair(s, "coordinator.certFile", "coordinator.keyFile", co.CertFile, co.KeyFile)
		}
		if co.OutboxMaxBytes < 0 {
			s.add("coordinator.outboxMaxBytes", "must not be negative")
		}
		if co.ReconnectMaxBackoff < 0 {
			s.add("coordinator.reconnectMaxBackoff", "%s must not be negative", co.ReconnectMaxBackoff)
		}
		if co.RefusedBackoff < 0 {
			s.add("coordinator.refusedBackoff", "%s must not be negative", co.RefusedBackoff)
		}
		if co.SupervisorID != "" && !jobs.ValidName(co.SupervisorID) {
			s.add("coordinator.supervisorId", "%q is not a valid name ([A-Za-z0-9._-], 1 to 64 characters)", co.SupervisorID)
		}
	}
}

func (v *validator) defaults() {
	s := scope{v: v, prefix: "defaults"}
	d := v.c.Defaults
	checkLease(s, d.LeaseDuration, d.Queue)
	checkHooks(s, d.Hooks)
	checkRunAs(s, "runAs", d.RunAs)
	if d.Drivers.Serial != nil {
		s.add("drivers.serial", "a serial console belongs to one board: set it under boards[].drivers.serial")
	}
	checkPower(s, d.Drivers.Power)
	checkVirtual(s, d.Drivers.Virtual)
}

func (v *validator) boards() {
	c := v.c
	if len(c.Boards) == 0 {
		scope{v: v}.add("boards", "at least one board is required")
		return
	}
	firstByName := map[string]int{}   // name -> index of the first board with it
	firstByDevice := map[string]int{} // serial device -> index of the first board using it
	for i, b := range c.Boards {
		s := scope{v: v, prefix: fmt.Sprintf("boards[%d]", i), board: b.Name}
		switch {
		case b.Name == "":
			s.add("name", "required")
		case b.Name == "." || b.Name == "..":
			s.add("name", "%q is reserved (board names are used as directory names)", b.Name)
		case !jobs.ValidName(b.Name): // the coordinator checks announced names by the same rule
			s.add("name", "%q is not a valid board name (want 1 to 64 of A-Z a-z 0-9 . _ -)", b.Name)
		}
		if b.Name != "" {
			if j, dup := firstByName[b.Name]; dup {
				s.add("name", "duplicate board name %q (first defined %s)", b.Name, where(v, j, "name"))
			} else {
				firstByName[b.Name] = i
			}
		}
		for _, k := range sortedKeys(b.Labels) {
			if !jobs.ValidLabelKey(k) {
				s.add("labels."+k, "invalid label key %q (want 1 to 63 of A-Z a-z 0-9 . _ / -)", k)
			}
			if err := jobs.CheckLabelValue(b.Labels[k]); err != nil {
				s.add("labels."+k, "label value %q: %v", b.Labels[k], err)
			}
		}
		checkLease(s, b.LeaseDuration, b.Queue)
		checkHooks(s, b.Hooks)
		checkRunAs(s, "runAs", b.RunAs)
		if ser := b.Drivers.Serial; ser != nil {
			checkSerial(s, ser)
			if ser.Device != "" {
				if j, dup := firstByDevice[ser.Device]; dup {
					s.add("drivers.serial.device", "%s is also the serial device of board %q (%s)",
						ser.Device, c.Boards[j].Name, where(v, j, "drivers.serial.device"))
				} else {
					firstByDevice[ser.Device] = i
				}
			}
		}
		checkPower(s, b.Drivers.Power)
		checkVirtual(s, b.Drivers.Virtual)
		if q := b.Drivers.QEMU; q != nil {
			if q.MemoryMiB < 0 {
				s.add("drivers.qemu.memoryMiB", "%d must not be negative", q.MemoryMiB)
			}
			if b.Drivers.Serial != nil || b.Drivers.Virtual != nil {
				s.add("drivers", "qemu excludes serial and virtual (an emulated board has its own console; a default virtual is not inherited)")
			}
		}
		// A simulated or emulated board has power of its own: a power block inherited
		// from the defaults would replace it without a word, and the board would never
		// boot. A board's own power block says so on the board's line.
		if b.Drivers.Power == nil && c.Defaults.Drivers.Power != nil &&
			(b.Drivers.QEMU != nil || b.Drivers.Virtual != nil || b.Drivers.Serial == nil && c.Defaults.Drivers.Virtual != nil) {
			kind := "simulated"
			if b.Drivers.QEMU != nil {
				kind = "emulated (qemu)"
			}
			line := ""
			if l := c.pos.line("defaults.drivers.power"); l > 0 {
				line = fmt.Sprintf(" (line %d)", l)
			}
			s.add("drivers.power", "inherited from defaults.drivers.power%s, which would replace this %s board's own power and it would never boot: set power on the boards that need it, not in defaults", line, kind)
		}
		if b.Drivers.Serial != nil {
			switch {
			case b.Drivers.Virtual != nil:
				s.add("drivers", "serial and virtual exclude each other (a virtual board has a simulated console)")
			case c.Defaults.Drivers.Virtual != nil:
				s.add("drivers", "serial and virtual exclude each other (virtual is inherited from defaults.drivers.virtual)")
			}
		}
	}
}

// where says where board j's field is: "at line N", or "at boards[j]" when the line is
// not known.
func where(v *validator, j int, field string) string {
	path := fmt.Sprintf("boards[%d]", j)
	if l := v.c.pos.line(path + "." + field); l > 0 {
		return fmt.Sprintf("at line %d", l)
	}
	return "at " + path
}

func checkLease(s scope, lease Duration, queue *int) {
	if lease < 0 {
		s.add("leaseDuration", "%s must be positive", lease)
	}
	if queue != nil && (*queue < 0 || *queue > MaxQueue) {
		s.add("queue", "%d is out of range (want 0 to %d)", *queue, MaxQueue)
	}
}

func checkHooks(s scope, h Hooks) {
	checkHook(s, "hooks.beforeLease", h.BeforeLease)
	checkHook(s, "hooks.afterLease", h.AfterLease)
}

func checkHook(s scope, rel string, h *Hook) {
	if h == nil {
		return
	}
	if h.Disabled {
		if h.Script != "" || h.Exec != "" || h.Timeout != 0 || h.OnFailure != "" || h.Terminal != nil {
			s.add(rel+".disabled", "a disabled hook takes no script, exec, timeout, onFailure or terminal")
		}
		return
	}
	switch {
	case h.Script != "" && h.Exec != "":
		s.add(rel, "set either script or exec, not both")
	case strings.TrimSpace(h.Script) == "" && h.Exec == "":
		s.add(rel, "one of script or exec is required (or disabled: true, to turn off a default hook)")
	case h.Exec != "":
		if msg := checkExecutable(h.Exec); msg != "" {
			s.add(rel+".exec", "%s", msg)
		}
	}
	if h.Timeout < 0 {
		s.add(rel+".timeout", "%s must be positive", h.Timeout)
	}
	if h.OnFailure != "" {
		if _, err := jobs.ParsePolicy(h.OnFailure); err != nil {
			s.add(rel+".onFailure", "unknown policy %q (want warn, endLease or exit)", h.OnFailure)
		}
	}
}

func checkSerial(s scope, ser *Serial) {
	switch {
	case ser.Device == "":
		s.add("drivers.serial.device", "required (e.g. /dev/ttyUSB0)")
	case !filepath.IsAbs(ser.Device):
		s.add("drivers.serial.device", "%q is not an absolute path", ser.Device)
	default:
		if _, err := os.Stat(ser.Device); err != nil {
			s.add("drivers.serial.device", "%s", statMessage(ser.Device, err))
		}
	}
	if ser.Baud != 0 && !slices.Contains(standardBauds, ser.Baud) {
		s.add("drivers.serial.baud", "%d is not a standard rate (e.g. 9600, 115200, 921600; 50 to 4000000)", ser.Baud)
	}
	if ser.Parity != "" && !slices.Contains(parities, ser.Parity) {
		s.add("drivers.serial.parity", "unknown parity %q (want none, odd, even, mark or space)", ser.Parity)
	}
	if ser.DataBits != 0 && (ser.DataBits < 5 || ser.DataBits > 8) {
		s.add("drivers.serial.dataBits", "%d is out of range (want 5 to 8)", ser.DataBits)
	}
	if ser.StopBits != 0 && ser.StopBits != 1 && ser.StopBits != 2 {
		s.add("drivers.serial.stopBits", "%d is not 1 or 2", ser.StopBits)
	}
	if ser.Coalesce < 0 || ser.Coalesce.Std() > time.Minute {
		s.add("drivers.serial.coalesce", "%s is out of range (want 0s to 1m; 0s means the default, 250ms)", ser.Coalesce.Std())
	}
}

func checkPower(s scope, p *Power) {
	if p == nil {
		return
	}
	if strings.TrimSpace(p.On) == "" && strings.TrimSpace(p.Off) == "" && strings.TrimSpace(p.Cycle) == "" {
		s.add("drivers.power", "at least one of on, off or cycle is required")
	}
	if p.Timeout < 0 {
		s.add("drivers.power.timeout", "%s must be positive", p.Timeout)
	}
}

func checkVirtual(s scope, vb *Virtual) {
	if vb == nil {
		return
	}
	if vb.BootDelay < 0 {
		s.add("drivers.virtual.bootDelay", "%s must not be negative", vb.BootDelay)
	}
	if vb.Baud < 0 || vb.Baud > 100_000_000 {
		s.add("drivers.virtual.baud", "%d is out of range (0 to 100000000; 0 means 115200)", vb.Baud)
	}
	if vb.RandomBytes < 0 {
		s.add("drivers.virtual.randomBytes", "%d must not be negative", vb.RandomBytes)
	}
}

// checkHostPort checks a host:port address; it returns "" if it is fine, else a message.
// A listen address may leave the host out (all interfaces) and use port 0 (any port).
func checkHostPort(addr string, dial bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not a host:port address", addr)
	}
	if dial && host == "" {
		return fmt.Sprintf("%q has no host", addr)
	}
	if strings.ContainsAny(host, " \t\r\n/") {
		return fmt.Sprintf("%q has an invalid host", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (dial && n == 0) {
		lo := 0
		if dial {
			lo = 1
		}
		return fmt.Sprintf("%q has an invalid port %q (want a number from %d to 65535)", addr, port, lo)
	}
	return ""
}

// checkExecutable checks that path is an absolute path to a regular file with an
// execute bit set; it returns "" if so, else a message.
func checkExecutable(path string) string {
	if !filepath.IsAbs(path) {
		return fmt.Sprintf("%q is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return statMessage(path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fmt.Sprintf("%s is not executable (mode %04o)", path, fi.Mode().Perm())
	}
	return ""
}

// checkReadable checks that path is a regular file that can be opened for reading; it
// returns "" if so, else a message. It stats before opening, so a FIFO never blocks.
// checkKeyPair checks that a certificate and its key are readable files that belong
// together; a problem is reported at the field of the file it concerns.
func checkKeyPair(s scope, certField, keyField, certFile, keyFile string) {
	if msg := checkReadable(certFile); msg != "" {
		s.add(certField, "%s", msg)
		return
	}
	if msg := checkReadable(keyFile); msg != "" {
		s.add(keyField, "%s", msg)
		return
	}
	if _, err := tlsconf.LoadKeyPair(certFile, keyFile); err != nil {
		s.add(certField, "%v", err)
	}
}

func checkReadable(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return statMessage(path, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Sprintf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("%s is not readable: %v", path, unwrapPath(err))
	}
	f.Close()
	return ""
}

func statMessage(path string, err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("%s does not exist", path)
	}
	return fmt.Sprintf("cannot stat %s: %v", path, unwrapPath(err))
}

// unwrapPath drops the operation and path an *fs.PathError repeats.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
