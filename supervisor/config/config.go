// Package config loads and validates the supervisor's YAML configuration file.
//
// A config names the state directory, the client-facing listen address, logging, the
// coordinator to dial (absent: the embedded local connector), host-wide defaults and the
// boards. [Load] reads a file, [Parse] decodes it strictly (an unknown key is an error),
// fills in defaults and calls [Config.Validate], which reports every problem it finds,
// one line each:
//
//	<file>:<line>: board "<name>": <field path>: <problem>
//	<file>:<line>: <field path>: <problem>          (host-level fields)
//
// for example
//
//	config.yaml:14: board "rpi4-01": hooks.beforeLease.onFailure: unknown policy "retry" (want warn, endLease or exit)
//
// Each problem is a [*Problem]; the error returned joins them (errors.As finds the first,
// and the joined error's Unwrap() []error gives all of them).
//
// [Config.Resolve] merges the defaults into each board. A board's hook replaces the
// default hook of the same name wholesale; `beforeLease: {disabled: true}` on a board
// turns the default beforeLease off for that board alone. Drivers are merged per kind in
// the same way: a board's power block replaces the default power block.
//
// Besides reading the config file, the package only stats the files the config names
// (hook executables, serial devices), opens the coordinator token file to check that it
// is readable, loads the TLS certificates, keys and CA files it names to check that they
// are what they say, and looks up the users and groups of runAs blocks in the system's
// databases. testdata/example.yaml documents every field.
package config

import (
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

// Defaults applied where the config gives no value.
const (
	// DefaultListen is the client-facing gRPC address when listen is not set.
	DefaultListen = "127.0.0.1:7410"
	// DefaultLogLevel is the log level when log.level is not set.
	DefaultLogLevel = "info"
	// DefaultLogFormat is the log format when log.format is not set: text on a
	// terminal, JSON otherwise (journald, log shippers).
	DefaultLogFormat = "auto"
	// DefaultLeaseDuration bounds a lease whose StartJob carries no duration, when
	// defaults.leaseDuration is not set.
	DefaultLeaseDuration = time.Hour
	// DefaultQueue is how many leases may wait for a busy board when no queue is set.
	DefaultQueue = 1
	// MaxQueue is the largest queue a config may set.
	MaxQueue = 16
	// DefaultPowerTimeout bounds one power command when the power block gives no timeout.
	DefaultPowerTimeout = 30 * time.Second
	// DefaultBaud is a serial console's rate when baud is not set.
	DefaultBaud = 115200
	// DefaultParity is a serial console's parity when parity is not set.
	DefaultParity = "none"
	// DefaultDataBits is a serial console's data bits when dataBits is not set.
	DefaultDataBits = 8
	// DefaultStopBits is a serial console's stop bits when stopBits is not set.
	DefaultStopBits = 1
	// DefaultOnFailure is a hook's onFailure policy when the hook gives none.
	DefaultOnFailure = "warn"
)

// Config is the supervisor's configuration, as read from one YAML file.
type Config struct {
	// Path is the file the config came from; it prefixes every problem reported.
	Path string `yaml:"-"`
	// StateDir holds the journal, hook spools and outbox. Required, absolute; the daemon
	// creates it if it is missing.
	StateDir string `yaml:"stateDir"`
	// Listen is the client-facing gRPC address, host:port (default DefaultListen).
	Listen string `yaml:"listen"`
	// TLS, if set, serves the client service (and the per-board TCP endpoints of
	// --jumpstarter-listen) over TLS; nil: plaintext.
	TLS *TLSConfig `yaml:"tls"`
	// Log configures the daemon's own log.
	// Metrics, if set, is the host:port of the Prometheus endpoint (/metrics).
	Metrics string    `yaml:"metrics"`
	Log     LogConfig `yaml:"log"`
	// Coordinator is the coordinator to dial; nil means the embedded local connector.
	Coordinator *CoordinatorConfig `yaml:"coordinator"`
	// Defaults are host-wide settings each board may override.
	Defaults Defaults `yaml:"defaults"`
	// RunAsRoot lets the hooks of boards without a runAs run as root when the daemon
	// runs as root; without it such a daemon refuses to start (see CheckHookPrivileges).
	RunAsRoot bool `yaml:"runAsRoot"`
	// HookCgroup is the cgroup v2 directory under which each hook run gets a cgroup of
	// its own; empty: boardvisor-hooks in the daemon's own cgroup, found at start-up.
	HookCgroup string `yaml:"hookCgroup"`
	// Images configures the image store of image jobs (docs/images.md).
	Images ImagesConfig `yaml:"images"`
	// Boards are the boards this supervisor serves; at least one.
	Boards []Board `yaml:"boards"`

	// pos maps field paths to YAML line numbers; nil for a config built in code.
	pos *positions
}

// ImagesConfig configures the image store (StateDir/images) of jobs that boot an image.
type ImagesConfig struct {
	// MaxBytes bounds the blobs the store keeps (default 20 GiB); images no live lease
	// uses are evicted, least recently used first.
	MaxBytes int64 `yaml:"maxBytes"`
	// PlainHTTP names registries (host:port) reached over plain HTTP; loopback
	// registries always are, all others over HTTPS.
	PlainHTTP []string `yaml:"plainHTTP"`
	// FetchTimeout bounds an image fetch (default 30m); ProvisionTimeout a board's
	// provisioning with it (default 5m).
	FetchTimeout     Duration `yaml:"fetchTimeout"`
	ProvisionTimeout Duration `yaml:"provisionTimeout"`
}

// TLSConfig is the client service's TLS: the certificate it presents, and whether
// clients must present one of their own.
type TLSConfig struct {
	// CertFile is the service's certificate (PEM, the leaf first, then any
	// intermediates); it must name the address the coordinator tells clients (listen's
	// host, as an IP address or DNS name). Required in this block.
	CertFile string `yaml:"certFile"`
	// KeyFile is its private key (PEM), readable by the daemon's user alone. Required
	// in this block.
	KeyFile string `yaml:"keyFile"`
	// ClientCAFile, if set, makes every call need a client certificate signed by a CA
	// in this PEM file (hooks' driver calls with their hook token excepted).
	ClientCAFile string `yaml:"clientCAFile"`
}

// LogConfig configures the daemon's own log.
type LogConfig struct {
	// Level is trace, debug, info, warn or error (default info).
	Level string `yaml:"level"`
	// Format is json, text or auto (default auto: text on a terminal, else json).
	Format string `yaml:"format"`
}

// CoordinatorConfig says how to reach the coordinator.
type CoordinatorConfig struct {
	// Address is the coordinator's host:port. Required unless Addresses is set. Several
	// coordinators (one active, the others standing by) may be given comma-separated.
	Address string `yaml:"address"`
	// Addresses are several coordinators' host:port, tried in turn: the supervisor
	// follows the active one. They come after Address's.
	Addresses []string `yaml:"addresses"`
	// TokenFile, if set, names a readable file holding the supervisor's token.
	TokenFile string `yaml:"tokenFile"`
	// SupervisorID names this supervisor to the coordinator; default: the host name.
	SupervisorID string `yaml:"supervisorId"`
	// CAFile, if set, turns on TLS: the coordinator's certificate must be signed by a CA
	// in this PEM file.
	CAFile string `yaml:"caFile"`
	// CertFile and KeyFile, if set, are the certificate (PEM) this supervisor presents
	// to the coordinator, and its private key: a coordinator started with --tls-client-ca
	// requires one, signed by that CA and naming supervisorId (its common name or a DNS
	// name). They need caFile (TLS).
	CertFile string `yaml:"certFile"`
	KeyFile  string `yaml:"keyFile"`
	// OutboxMaxBytes bounds the events kept on disk while the coordinator is away
	// (default 256 MiB, at least 64 KiB); past it console bytes are dropped first, and
	// said so.
	OutboxMaxBytes int64 `yaml:"outboxMaxBytes"`
	// ReconnectMaxBackoff bounds the wait between reconnects (default 30s), and is the
	// wait after "another live supervisor holds this ID".
	ReconnectMaxBackoff Duration `yaml:"reconnectMaxBackoff"`
	// RefusedBackoff is the wait after the coordinator refused this supervisor's token
	// (default 5m): fixing the config is needed, retrying fast is not.
	RefusedBackoff Duration `yaml:"refusedBackoff"`
}

// Defaults are host-wide settings; each board may override each of them.
type Defaults struct {
	// LeaseDuration bounds a lease whose StartJob carries no duration (default 1h).
	LeaseDuration Duration `yaml:"leaseDuration"`
	// Queue is how many leases may wait for a busy board, 0..MaxQueue (default 1).
	// nil means not set.
	Queue *int `yaml:"queue"`
	// Hooks are the hooks of every board that does not set its own.
	Hooks Hooks `yaml:"hooks"`
	// Drivers are the drivers of every board that does not set its own of that kind.
	// A serial console belongs to one board and may not be set here.
	Drivers Drivers `yaml:"drivers"`
	// RunAs is who the hooks of every board that sets none run as; nil: the daemon's
	// user.
	RunAs *RunAs `yaml:"runAs"`
}

// RunAs is the user, group and supplementary groups a board's hooks run as.
type RunAs struct {
	// User is a user name or a numeric uid. Required.
	User string `yaml:"user"`
	// Group is a group name or a numeric gid; default: the user's primary group.
	Group string `yaml:"group"`
	// Groups are supplementary groups (names or gids), e.g. dialout for serial ports.
	Groups []string `yaml:"groups"`
}

// Board is one board as configured.
type Board struct {
	// Name identifies the board: required, unique, 1-64 of [A-Za-z0-9._-].
	Name string `yaml:"name"`
	// Labels are matched by clients' and the coordinator's label selectors.
	Labels map[string]string `yaml:"labels"`
	// Hooks override the default hooks, each hook wholesale.
	Hooks Hooks `yaml:"hooks"`
	// Drivers override the default drivers, each kind wholesale.
	Drivers Drivers `yaml:"drivers"`
	// LeaseDuration overrides defaults.leaseDuration; zero means not set.
	LeaseDuration Duration `yaml:"leaseDuration"`
	// Queue overrides defaults.queue; nil means not set.
	Queue *int `yaml:"queue"`
	// RunAs overrides defaults.runAs wholesale; nil means not set.
	RunAs *RunAs `yaml:"runAs"`
}

// Hooks are a board's two lease hooks; nil means not set (a board inherits the default).
type Hooks struct {
	// BeforeLease runs before the board is handed to the client.
	BeforeLease *Hook `yaml:"beforeLease"`
	// AfterLease runs after the client is done with the board.
	AfterLease *Hook `yaml:"afterLease"`
}

// Hook is one hook: exactly one of Script and Exec, or Disabled.
type Hook struct {
	// Script is a shell script run with /bin/sh.
	Script string `yaml:"script"`
	// Exec is the absolute path of an executable file run without arguments.
	Exec string `yaml:"exec"`
	// Timeout bounds the hook (default jobs.DefaultHookTimeout).
	Timeout Duration `yaml:"timeout"`
	// OnFailure is warn, endLease or exit (default warn); see jobs.Policy.
	OnFailure string `yaml:"onFailure"`
	// Terminal false gives the hook a plain pipe as stdout and stderr instead of a
	// pseudo-terminal (the default), for a hook that must not see a terminal; nil
	// means not set (true).
	Terminal *bool `yaml:"terminal"`
	// Disabled, on a board, turns off the default hook of the same name for that board.
	// It excludes every other field.
	Disabled bool `yaml:"disabled"`
}

// Drivers are a board's drivers; nil means not set.
type Drivers struct {
	// Serial is the board's serial console.
	Serial *Serial `yaml:"serial"`
	// Power switches the board on and off with commands.
	Power *Power `yaml:"power"`
	// Virtual makes the board a simulated one; it excludes Serial and QEMU.
	Virtual *Virtual `yaml:"virtual"`
	// QEMU makes the board an emulated machine; it excludes Serial and Virtual.
	QEMU *QEMU `yaml:"qemu"`
}

// QEMU is an emulated board: qemu-system-x86_64 with its serial port as the console.
type QEMU struct {
	// Binary is the emulator (default qemu-system-x86_64, found on PATH).
	Binary string `yaml:"binary"`
	// Machine is QEMU's -machine (default pc).
	Machine string `yaml:"machine"`
	// MemoryMiB is the guest's memory (default 64).
	MemoryMiB int `yaml:"memoryMiB"`
	// Args are extra arguments, e.g. a disk image.
	Args []string `yaml:"args"`
}

// Serial is a serial console.
type Serial struct {
	// Device is the absolute path of the tty, e.g. /dev/ttyUSB0. Required; it must exist.
	Device string `yaml:"device"`
	// Baud is a standard rate from 50 to 4000000 (default 115200).
	Baud int `yaml:"baud"`
	// Parity is none, odd, even, mark or space (default none).
	Parity string `yaml:"parity"`
	// DataBits is 5 to 8 (default 8).
	DataBits int `yaml:"dataBits"`
	// StopBits is 1 or 2 (default 1).
	StopBits int `yaml:"stopBits"`
	// Coalesce is how long an unattended console's bytes may gather in the kernel
	// between two reads (default 250ms; never more than 3 KiB at the line rate, so that
	// no byte is lost to it). An attended console (followed, or typed into lately) is
	// read at once.
	Coalesce Duration `yaml:"coalesce"`
}

// Power switches a board with shell commands; at least one command is required.
type Power struct {
	// On powers the board on.
	On string `yaml:"on"`
	// Off powers the board off.
	Off string `yaml:"off"`
	// Cycle power-cycles the board.
	Cycle string `yaml:"cycle"`
	// Timeout bounds each command (default DefaultPowerTimeout).
	Timeout Duration `yaml:"timeout"`
}

// Virtual is a simulated board.
type Virtual struct {
	// BootDelay is how long the simulated board takes to boot after power-on.
	BootDelay Duration `yaml:"bootDelay"`
	// Baud is the line rate its console is paced to (default 115200).
	Baud int `yaml:"baud"`
	// RandomBytes, when positive, makes the board a data source for tests and
	// benchmarks: each power-on prints exactly this many pseudo-random bytes (from Seed)
	// at the line rate, and nothing else.
	RandomBytes int64 `yaml:"randomBytes"`
	// Seed seeds the RandomBytes stream.
	Seed uint64 `yaml:"seed"`
}

// ApplyDefaults fills in the defaults of every field left unset that has one: listen,
// log level and format, defaults.leaseDuration and queue, each hook's timeout and
// onFailure, each power block's timeout and each serial block's line settings. A board's
// leaseDuration and queue stay unset: they are inherited when the board is resolved.
// Parse calls it before Validate.
func (c *Config) ApplyDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Log.Level == "" {
		c.Log.Level = DefaultLogLevel
	}
	if c.Log.Format == "" {
		c.Log.Format = DefaultLogFormat
	}
	if c.Defaults.LeaseDuration == 0 {
		c.Defaults.LeaseDuration = Duration(DefaultLeaseDuration)
	}
	if c.Defaults.Queue == nil {
		q := DefaultQueue
		c.Defaults.Queue = &q
	}
	c.Defaults.Hooks.applyDefaults()
	c.Defaults.Drivers.applyDefaults()
	for i := range c.Boards {
		c.Boards[i].Hooks.applyDefaults()
		c.Boards[i].Drivers.applyDefaults()
	}
}

func (h Hooks) applyDefaults() {
	for _, hk := range []*Hook{h.BeforeLease, h.AfterLease} {
		if hk == nil || hk.Disabled {
			continue
		}
		if hk.Timeout == 0 {
			hk.Timeout = Duration(jobs.DefaultHookTimeout)
		}
		if hk.OnFailure == "" {
			hk.OnFailure = DefaultOnFailure
		}
	}
}

func (d Drivers) applyDefaults() {
	if s := d.Serial; s != nil {
		s.applyDefaults()
	}
	if p := d.Power; p != nil && p.Timeout == 0 {
		p.Timeout = Duration(DefaultPowerTimeout)
	}
}

func (s *Serial) applyDefaults() {
	if s.Baud == 0 {
		s.Baud = DefaultBaud
	}
	if s.Parity == "" {
		s.Parity = DefaultParity
	}
	if s.DataBits == 0 {
		s.DataBits = DefaultDataBits
	}
	if s.StopBits == 0 {
		s.StopBits = DefaultStopBits
	}
}

// AddressList returns every coordinator address configured: Address's
// (comma-separated) and then Addresses, blanks dropped.
func (co *CoordinatorConfig) AddressList() []string {
	var out []string
	for _, a := range append(strings.Split(co.Address, ","), co.Addresses...) {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
