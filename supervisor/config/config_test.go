package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/connector/tlsconf/tlstest"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/supervisor/config/configtest"
)

// env is a temporary directory holding a config file and the files it names.
type env struct {
	t   *testing.T
	dir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, dir: t.TempDir()}
}

// file writes a file under the env's directory and returns its path.
func (e *env) file(name, content string, mode os.FileMode) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // WriteFile's mode is masked by umask
		e.t.Fatal(err)
	}
	return p
}

// path is where config.yaml is written.
func (e *env) path() string { return filepath.Join(e.dir, "config.yaml") }

// load writes text (with {{DIR}} replaced by the env's directory) to config.yaml and
// loads it.
func (e *env) load(text string) (*Config, error) {
	e.t.Helper()
	e.file("config.yaml", strings.ReplaceAll(text, "{{DIR}}", e.dir), 0o644)
	return Load(e.path())
}

// problemLines returns the lines of err, checking that each joined problem is a
// *Problem whose text is one line.
func problemLines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		t.Fatal("no error, want problems")
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	var lines []string
	for _, e := range errs {
		var p *Problem
		if !errors.As(e, &p) {
			t.Errorf("problem %q is a %T, not a *Problem", e, e)
		}
		if strings.ContainsAny(e.Error(), "\r\n") {
			t.Errorf("problem is not one line: %q", e.Error())
		}
		lines = append(lines, e.Error())
	}
	if got := strings.Join(lines, "\n"); got != err.Error() {
		t.Errorf("joined error %q, want the problems one per line %q", err.Error(), got)
	}
	return lines
}

// wantOnly checks that err is exactly the problems want, each given without the
// "<dir>/" prefix of the config path.
func (e *env) wantOnly(err error, want ...string) {
	e.t.Helper()
	lines := problemLines(e.t, err)
	for i := range want {
		want[i] = filepath.Join(e.dir, want[i])
	}
	if !reflect.DeepEqual(lines, want) {
		e.t.Errorf("problems:\n  %s\nwant:\n  %s", strings.Join(lines, "\n  "), strings.Join(want, "\n  "))
	}
}

// wantContains checks that some line of err contains every one of parts.
func wantContains(t *testing.T, err error, parts ...string) {
	t.Helper()
	lines := problemLines(t, err)
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("no problem contains all of %q; problems:\n  %s", parts, strings.Join(lines, "\n  "))
}

const fullConfig = `stateDir: /var/lib/boardvisor
listen: 0.0.0.0:7411
log: {level: debug, format: text}
coordinator:
  address: coord.lab:7400
  tokenFile: {{DIR}}/token
defaults:
  leaseDuration: 2h
  queue: 3
  hooks:
    beforeLease: {script: "echo before", timeout: 90s, onFailure: endLease}
    afterLease:  {exec: {{DIR}}/after.sh}
  drivers:
    power: {on: "pdu on", off: "pdu off", cycle: "pdu cycle", timeout: 10s}
boards:
  - name: rpi4-01
    labels: {device: rpi4, arch: arm64, rev: 2}
    drivers:
      serial: {device: {{DIR}}/ttyUSB0, baud: 921600, parity: even, dataBits: 7, stopBits: 2}
  - name: virt.02
    hooks:
      beforeLease: {disabled: true}
      afterLease: {script: "echo bye", onFailure: exit, timeout: 1m30s}
    drivers:
      virtual: {bootDelay: 100ms}
      power: {cycle: "echo cycle"}
    leaseDuration: 15m
    queue: 0
  - name: minimal_03
    drivers:
      serial: {device: {{DIR}}/ttyUSB1}
`

func fullEnv(t *testing.T) *env {
	e := newEnv(t)
	e.file("token", "secret\n", 0o600)
	e.file("after.sh", "#!/bin/sh\necho after\n", 0o755)
	e.file("ttyUSB0", "", 0o600)
	e.file("ttyUSB1", "", 0o600)
	return e
}

func TestLoadFullConfig(t *testing.T) {
	e := fullEnv(t)
	c, err := e.load(fullConfig)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if c.Path != e.path() || c.StateDir != "/var/lib/boardvisor" || c.Listen != "0.0.0.0:7411" {
		t.Errorf("host fields: %q %q %q", c.Path, c.StateDir, c.Listen)
	}
	if c.Log != (LogConfig{Level: "debug", Format: "text"}) {
		t.Errorf("log: %+v", c.Log)
	}
	if c.Coordinator == nil || !reflect.DeepEqual(*c.Coordinator, CoordinatorConfig{Address: "coord.lab:7400", TokenFile: e.dir + "/token"}) {
		t.Errorf("coordinator: %+v", c.Coordinator)
	}
	after := &ResolvedHook{Exec: e.dir + "/after.sh",
		Policy: jobs.HookPolicy{Timeout: jobs.DefaultHookTimeout, OnFailure: jobs.PolicyWarn}}
	defaultPower := &Power{On: "pdu on", Off: "pdu off", Cycle: "pdu cycle", Timeout: Duration(10 * time.Second)}
	want := []ResolvedBoard{
		{
			Name:   "rpi4-01",
			Labels: map[string]string{"device": "rpi4", "arch": "arm64", "rev": "2"},
			Before: &ResolvedHook{Script: "echo before",
				Policy: jobs.HookPolicy{Timeout: 90 * time.Second, OnFailure: jobs.PolicyEndLease}},
			After:         after,
			Serial:        &Serial{Device: e.dir + "/ttyUSB0", Baud: 921600, Parity: "even", DataBits: 7, StopBits: 2},
			Power:         defaultPower,
			LeaseDuration: 2 * time.Hour,
			Queue:         3,
		},
		{
			Name: "virt.02",
			After: &ResolvedHook{Script: "echo bye",
				Policy: jobs.HookPolicy{Timeout: 90 * time.Second, OnFailure: jobs.PolicyExit}},
			Virtual:       &Virtual{BootDelay: Duration(100 * time.Millisecond)},
			Power:         &Power{Cycle: "echo cycle", Timeout: Duration(DefaultPowerTimeout)},
			LeaseDuration: 15 * time.Minute,
			Queue:         0,
		},
		{
			Name: "minimal_03",
			Before: &ResolvedHook{Script: "echo before",
				Policy: jobs.HookPolicy{Timeout: 90 * time.Second, OnFailure: jobs.PolicyEndLease}},
			After:         after,
			Serial:        &Serial{Device: e.dir + "/ttyUSB1", Baud: 115200, Parity: "none", DataBits: 8, StopBits: 1},
			Power:         defaultPower,
			LeaseDuration: 2 * time.Hour,
			Queue:         3,
		},
	}
	got := c.Resolve()
	if len(got) != len(want) {
		t.Fatalf("Resolve: %d boards, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("board %d:\n got %s\nwant %s", i, dump(got[i]), dump(want[i]))
		}
	}

	// Resolved boards are copies: changing one changes neither the config nor another.
	got[0].Power.On = "changed"
	got[0].Labels["device"] = "changed"
	got[0].Serial.Baud = 9600
	again := c.Resolve()
	if again[0].Power.On != "pdu on" || again[2].Power.On != "pdu on" ||
		again[0].Labels["device"] != "rpi4" || again[0].Serial.Baud != 921600 {
		t.Errorf("Resolve shares memory with the config: %s", dump(again[0]))
	}
}

// dump formats a resolved board with its pointers followed, for failure messages.
func dump(r ResolvedBoard) string {
	deref := func(v any) any {
		rv := reflect.ValueOf(v)
		if rv.Kind() == reflect.Pointer && !rv.IsNil() {
			return rv.Elem().Interface()
		}
		return v
	}
	return fmt.Sprintf("%s labels=%v before=%+v after=%+v serial=%+v power=%+v virtual=%+v lease=%s queue=%d",
		r.Name, r.Labels, deref(r.Before), deref(r.After), deref(r.Serial), deref(r.Power), deref(r.Virtual),
		r.LeaseDuration, r.Queue)
}

func TestDefaultsApplied(t *testing.T) {
	e := newEnv(t)
	c, err := e.load("stateDir: /srv/bv\nboards:\n  - name: b1\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.Log.Level != "info" || c.Log.Format != "auto" || c.Coordinator != nil {
		t.Errorf("host defaults: listen %q log %+v coordinator %v", c.Listen, c.Log, c.Coordinator)
	}
	if c.Defaults.LeaseDuration.Std() != time.Hour || c.Defaults.Queue == nil || *c.Defaults.Queue != 1 {
		t.Errorf("defaults: %+v", c.Defaults)
	}
	want := ResolvedBoard{Name: "b1", LeaseDuration: time.Hour, Queue: 1}
	if got := c.Resolve(); len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("Resolve = %+v, want [%+v]", got, want)
	}
}

// TestInvalid checks that each kind of mistake gives exactly one problem, worded as
// <file>:<line>: [board "<name>": ]<field>: <problem>.
func TestInvalid(t *testing.T) {
	for _, tc := range configtest.Invalid {
		t.Run(tc.Name, func(t *testing.T) {
			e := newEnv(t)
			for name, f := range configtest.Files {
				e.file(name, f.Content, f.Mode)
			}
			_, err := e.load(tc.Config)
			e.wantOnly(err, strings.ReplaceAll(tc.Want, "{{DIR}}", e.dir))
		})
	}
}

func TestTokenFileUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	e := newEnv(t)
	e.file("token", "x", 0o000)
	_, err := e.load("stateDir: /bv\ncoordinator: {address: c:1, tokenFile: {{DIR}}/token}\nboards: [{name: b1}]\n")
	wantContains(t, err, "config.yaml:2: coordinator.tokenFile: "+e.dir+"/token is not readable: permission denied")
}

func TestSeveralProblemsAllReported(t *testing.T) {
	e := newEnv(t)
	e.file("plain.sh", "#!/bin/sh\n", 0o644)
	_, err := e.load(`stateDir: relative
log: {level: loud}
defaults:
  queue: 99
boards:
  - name: rpi4-01
    hooks:
      beforeLease: {script: x, onFailure: retry}
      afterLease: {exec: {{DIR}}/plain.sh}
    drivers:
      serial: {device: {{DIR}}/ttyUSB0, baud: 7}
  - name: bad/name
    drivers: {power: {}}
`)
	e.wantOnly(err,
		`config.yaml:1: stateDir: "relative" is not an absolute path`,
		`config.yaml:2: log.level: unknown level "loud" (want trace, debug, info, warn or error)`,
		`config.yaml:4: defaults.queue: 99 is out of range (want 0 to 16)`,
		`config.yaml:8: board "rpi4-01": hooks.beforeLease.onFailure: unknown policy "retry" (want warn, endLease or exit)`,
		`config.yaml:9: board "rpi4-01": hooks.afterLease.exec: `+e.dir+`/plain.sh is not executable (mode 0644)`,
		`config.yaml:11: board "rpi4-01": drivers.serial.device: `+e.dir+`/ttyUSB0 does not exist`,
		`config.yaml:11: board "rpi4-01": drivers.serial.baud: 7 is not a standard rate (e.g. 9600, 115200, 921600; 50 to 4000000)`,
		`config.yaml:12: board "bad/name": name: "bad/name" is not a valid board name (want 1 to 64 of A-Z a-z 0-9 . _ -)`,
		`config.yaml:13: board "bad/name": drivers.power: at least one of on, off or cycle is required`,
	)
}

func TestSeveralDecodeProblemsAllReported(t *testing.T) {
	e := newEnv(t)
	_, err := e.load(`stateDir: /bv
boards:
  - name: rpi4-01
    hoooks: {}
    leaseDuration: 5
  - name: b2
    drivers: {power: {on: x, timeout: 3 minutes}}
`)
	e.wantOnly(err,
		`config.yaml:4: board "rpi4-01": hoooks: unknown field (did you mean "hooks"?)`,
		`config.yaml:5: board "rpi4-01": leaseDuration: duration 5 has no unit (write e.g. "5s" or "5m")`,
		`config.yaml:7: board "b2": drivers.power.timeout: invalid duration "3 minutes" (want e.g. "90s", "2m" or "1h30m")`,
	)
}

func TestDuplicateBoardNames(t *testing.T) {
	e := newEnv(t)
	_, err := e.load(`stateDir: /bv
boards:
  - name: rpi4-01
    labels: {device: rpi4}
  - name: rpi4-02
  - labels: {device: rpi4}
    name: rpi4-01
`)
	e.wantOnly(err, `config.yaml:7: board "rpi4-01": name: duplicate board name "rpi4-01" (first defined at line 3)`)
}

func TestExecNotExecutable(t *testing.T) {
	e := newEnv(t)
	script := e.file("after.sh", "#!/bin/sh\necho after\n", 0o755)
	const text = "stateDir: /bv\nboards:\n  - name: rpi4-01\n    hooks:\n      afterLease: {exec: {{DIR}}/after.sh}\n"
	if _, err := e.load(text); err != nil {
		t.Fatalf("executable hook: %v", err)
	}
	if err := os.Chmod(script, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := e.load(text)
	wantContains(t, err, e.path()+":5: ", `board "rpi4-01"`, "hooks.afterLease.exec", script+" is not executable")
}

func TestMissingSerialDevice(t *testing.T) {
	e := newEnv(t)
	_, err := e.load("stateDir: /bv\nboards:\n  - name: rpi4-01\n    drivers:\n      serial: {device: /dev/boardvisor-test-no-such-tty}\n")
	wantContains(t, err, e.path()+":5: ", `board "rpi4-01"`, "drivers.serial.device", "/dev/boardvisor-test-no-such-tty does not exist")
}

func TestDisableDefaultHook(t *testing.T) {
	e := newEnv(t)
	c, err := e.load(`stateDir: /bv
defaults:
  hooks:
    beforeLease: {script: "echo default before"}
    afterLease: {script: "echo default after", onFailure: endLease}
boards:
  - name: inherits
  - name: overrides
    hooks:
      beforeLease: {script: "echo mine", timeout: 5s}
  - name: disables
    hooks:
      afterLease: {disabled: true}
  - name: null-inherits
    hooks:
      beforeLease: null
      afterLease:
`)
	if err != nil {
		t.Fatal(err)
	}
	rs := c.Resolve()
	defBefore := &ResolvedHook{Script: "echo default before", Policy: jobs.HookPolicy{Timeout: jobs.DefaultHookTimeout}}
	defAfter := &ResolvedHook{Script: "echo default after",
		Policy: jobs.HookPolicy{Timeout: jobs.DefaultHookTimeout, OnFailure: jobs.PolicyEndLease}}
	want := []struct{ before, after *ResolvedHook }{
		{defBefore, defAfter},
		{&ResolvedHook{Script: "echo mine", Policy: jobs.HookPolicy{Timeout: 5 * time.Second}}, defAfter},
		{defBefore, nil},
		{defBefore, defAfter},
	}
	for i, w := range want {
		if !reflect.DeepEqual(rs[i].Before, w.before) || !reflect.DeepEqual(rs[i].After, w.after) {
			t.Errorf("%s: before %+v after %+v, want %+v %+v", rs[i].Name, rs[i].Before, rs[i].After, w.before, w.after)
		}
	}
}

func TestPowerKeysOnOff(t *testing.T) {
	// YAML 1.1 read on/off as booleans; the keys must still reach the power fields.
	e := newEnv(t)
	c, err := e.load("stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      power:\n        on: yes\n        off: no\n")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Boards[0].Drivers.Power; p.On != "yes" || p.Off != "no" || p.Timeout.Std() != DefaultPowerTimeout {
		t.Errorf("power = %+v", p)
	}
}

func TestNotAConfig(t *testing.T) {
	cases := []struct{ name, text, want string }{
		{"empty", "", `config.yaml: empty config file (want a mapping with at least stateDir and boards)`},
		{"blank", "\n  \n", `config.yaml: empty config file (want a mapping with at least stateDir and boards)`},
		{"comments only", "# nothing yet\n", `config.yaml: empty config file: only comments (want a mapping with at least stateDir and boards)`},
		{"null document", "---\n~\n", `config.yaml:2: empty config (want a mapping with at least stateDir and boards)`},
		{"list", "- a\n- b\n", `config.yaml:1: the config must be a mapping of keys to values, got a list`},
		{"scalar", "hello\n", `config.yaml:1: the config must be a mapping of keys to values, got "hello"`},
		{"two documents", "stateDir: /bv\nboards: [{name: b1}]\n---\nstateDir: /bv2\n",
			`config.yaml:3: a second YAML document starts here; the config must be a single document`},
		{"unclosed quote", "stateDir: /bv\nlisten: \"127.0.0.1:7410\nboards: []\n",
			`config.yaml:2: invalid YAML: found unexpected end of stream`},
		{"tab indentation", "stateDir: /bv\nboards:\n\t- name: b1\n",
			`config.yaml:3: invalid YAML: found character that cannot start any token`},
		{"self-referencing anchor", "stateDir: &a [*a]\n", `config.yaml:1: stateDir: want a string, got a list`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c, err := e.load(tc.text)
			if c != nil {
				t.Errorf("got a config: %+v", c)
			}
			e.wantOnly(err, tc.want)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(p)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load = %v, want a not-exist error", err)
	}
	if want := p + ": cannot read config: no such file or directory"; err.Error() != want {
		t.Errorf("Load = %q, want %q", err, want)
	}
}

func TestValidateBuiltInCode(t *testing.T) {
	// A config built in code: no file, no lines; zero values mean defaults.
	c := &Config{StateDir: "/bv", Boards: []Board{
		{Name: "b1", Hooks: Hooks{BeforeLease: &Hook{Script: "true"}}},
		{Name: "", Drivers: Drivers{Power: &Power{}}},
	}}
	err := c.Validate()
	lines := problemLines(t, err)
	want := []string{
		`config: boards[1].name: required`,
		`config: boards[1].drivers.power: at least one of on, off or cycle is required`,
	}
	if !reflect.DeepEqual(lines, want) {
		t.Errorf("problems %q, want %q", lines, want)
	}
	var p *Problem
	if !errors.As(err, &p) || p.Field != "boards[1].name" || p.Board != "" || p.Line != 0 {
		t.Errorf("first problem = %+v", p)
	}

	c.Boards = c.Boards[:1]
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	r := c.Resolve()[0]
	want0 := ResolvedBoard{Name: "b1", LeaseDuration: DefaultLeaseDuration, Queue: DefaultQueue,
		Before: &ResolvedHook{Script: "true", Policy: jobs.HookPolicy{Timeout: jobs.DefaultHookTimeout}}}
	if !reflect.DeepEqual(r, want0) {
		t.Errorf("Resolve = %+v, want %+v", r, want0)
	}
}

func TestProblemFormat(t *testing.T) {
	cases := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "c.yaml", Line: 14, Board: "rpi4-01", Field: "hooks.beforeLease.onFailure", Message: `unknown policy "retry"`},
			`c.yaml:14: board "rpi4-01": hooks.beforeLease.onFailure: unknown policy "retry"`},
		{Problem{File: "c.yaml", Field: "stateDir", Message: "required"}, `c.yaml: stateDir: required`},
		{Problem{Message: "x"}, `config: x`},
		{Problem{File: "a\nb", Board: "x\ny", Field: "labels.a\nb", Message: "m\r\n"},
			`a\nb: board "x\ny": labels.a\nb: m\r\n`},
	}
	for _, tc := range cases {
		if got := tc.p.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func TestDurationYAML(t *testing.T) {
	e := newEnv(t)
	c, err := e.load("stateDir: /bv\ndefaults: {leaseDuration: 1h30m}\nboards:\n  - name: b1\n    leaseDuration: \"45s\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Defaults.LeaseDuration.Std() != 90*time.Minute || c.Boards[0].LeaseDuration.Std() != 45*time.Second {
		t.Errorf("durations %s %s", c.Defaults.LeaseDuration, c.Boards[0].LeaseDuration)
	}
	if v, _ := Duration(90 * time.Second).MarshalYAML(); v != "1m30s" {
		t.Errorf("MarshalYAML = %v", v)
	}
	for _, text := range []string{"leaseDuration: 1.5", "leaseDuration: [1s]", "leaseDuration: {a: 1}"} {
		_, err := e.load("stateDir: /bv\nboards:\n  - name: b1\n    " + text + "\n")
		wantContains(t, err, e.path()+":4: ", `board "b1": leaseDuration: `)
	}
}

// exampleFull is testdata/example.yaml with its commented-out settings (lines starting
// with "#~") switched on, the paths they name pointed at files of e.
func exampleFull(t *testing.T, e *env, data []byte) (text, tty string) {
	t.Helper()
	tty = e.file("ttyUSB0", "", 0o600)
	token := e.file("token", "secret", 0o600)
	ca := e.file("ca.pem", "-----BEGIN CERTIFICATE-----\n", 0o600)
	// The TLS files are real: the config loads them.
	lab := tlstest.NewCA(t, "lab CA")
	srvCert, srvKey := lab.WriteLeaf(t, e.dir, "supervisor", tlstest.Localhost("lab-a"))
	supCert, supKey := lab.WriteLeaf(t, e.dir, "lab-a", tlstest.Leaf{CN: "lab-a", Client: true})
	clientsCA := lab.WriteCA(t, e.dir, "clients-ca.pem")
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "#~"))
	}
	full := strings.Join(lines, "\n")
	full = strings.ReplaceAll(full, "/dev/ttyUSB0", tty)
	full = strings.ReplaceAll(full, "/etc/boardvisor/token", token)
	full = strings.ReplaceAll(full, "/etc/boardvisor/ca.pem", ca)
	for from, to := range map[string]string{"/etc/boardvisor/supervisor.pem": srvCert, "/etc/boardvisor/supervisor.key": srvKey,
		"/etc/boardvisor/lab-a.pem": supCert, "/etc/boardvisor/lab-a.key": supKey, "/etc/boardvisor/clients-ca.pem": clientsCA} {
		if !strings.Contains(full, from) {
			t.Fatalf("example.yaml has no #~ line naming %s", from)
		}
		full = strings.ReplaceAll(full, from, to)
	}
	if full == string(data) || !strings.Contains(full, tty) || !strings.Contains(full, token) || !strings.Contains(full, ca) {
		t.Fatal("example.yaml has no #~ lines naming /dev/ttyUSB0, /etc/boardvisor/token and /etc/boardvisor/ca.pem")
	}
	return full, tty
}

// TestExample loads testdata/example.yaml as it is, and again with its commented-out
// settings switched on.
func TestExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse("testdata/example.yaml", data)
	if err != nil {
		t.Fatalf("example.yaml: %v", err)
	}
	rs := c.Resolve()
	if len(rs) != 2 || rs[0].Name != "virt-01" || rs[0].Queue != 4 || rs[0].LeaseDuration != 30*time.Minute ||
		rs[0].Before == nil || rs[0].Before.Policy.OnFailure != jobs.PolicyEndLease || rs[0].After.Exec != "/bin/true" {
		t.Errorf("example boards: %+v", rs)
	}
	if rs[1].Before != nil || rs[1].After.Policy.OnFailure != jobs.PolicyExit || !rs[1].After.Pipe || rs[0].Before.Pipe ||
		rs[0].Power != nil || rs[1].Power != nil || rs[0].Virtual == nil || rs[1].Virtual == nil {
		t.Errorf("example virt-02: %+v", rs[1])
	}
	if c.Coordinator != nil || c.Log.Format != "auto" {
		t.Errorf("example as it is: coordinator %+v, log %+v", c.Coordinator, c.Log)
	}

	e := newEnv(t)
	full, tty := exampleFull(t, e, data)
	c, err = Parse("example-full.yaml", []byte(full))
	if err != nil {
		t.Fatalf("example.yaml with #~ lines: %v", err)
	}
	if rs := c.Resolve(); rs[0].RunAs == nil || rs[0].RunAs.User != "nobody" || len(rs[0].RunAs.Groups) != 1 || c.HookCgroup == "" {
		t.Errorf("example runAs %+v, hookCgroup %q", rs[0].RunAs, c.HookCgroup)
	}
	if co := c.Coordinator; co == nil || co.Address != "coord.lab:7400" || co.SupervisorID != "lab-a" || co.OutboxMaxBytes != 256<<20 ||
		co.CAFile == "" || co.TokenFile == "" || co.CertFile == "" || co.KeyFile == "" || c.Metrics != "127.0.0.1:9410" {
		t.Errorf("coordinator %+v, metrics %q", c.Coordinator, c.Metrics)
	}
	if c.TLS == nil || c.TLS.CertFile == "" || c.TLS.KeyFile == "" || c.TLS.ClientCAFile == "" {
		t.Errorf("tls %+v", c.TLS)
	}
	rs = c.Resolve()
	want := &Serial{Device: tty, Baud: 115200, Parity: "none", DataBits: 8, StopBits: 1, Coalesce: Duration(250 * time.Millisecond)}
	if len(rs) != 4 || !reflect.DeepEqual(rs[2].Serial, want) || rs[2].Power == nil || rs[2].Power.Cycle != "echo cycle" {
		t.Fatalf("serial board: %+v", rs)
	}
	if q := rs[3].QEMU; q == nil || q.Machine != "pc" || q.MemoryMiB != 64 || len(q.Args) != 2 {
		t.Errorf("qemu board: %+v", rs[3])
	}
}

// TestExampleDocumentsEveryField: every key of the config (every yaml tag of every
// struct reachable from Config) appears in testdata/example.yaml as a key, set or shown
// in a comment. A field added without documenting it fails here.
func TestExampleDocumentsEveryField(t *testing.T) {
	data, err := os.ReadFile("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{} // key -> the struct field it is, for the message
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(rt reflect.Type) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || seen[rt] || rt == reflect.TypeOf(Duration(0)) {
			return
		}
		seen[rt] = true
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if !f.IsExported() || tag == "-" || tag == "" {
				continue
			}
			keys[tag] = rt.Name() + "." + f.Name
			walk(f.Type)
		}
	}
	walk(reflect.TypeOf(Config{}))
	if len(keys) < 30 {
		t.Fatalf("only %d keys found: the walk is broken", len(keys))
	}
	for key, field := range keys {
		re := regexp.MustCompile(`(?m)(^|[\s{,#~-])` + regexp.QuoteMeta(key) + `:`)
		if !re.Match(data) {
			t.Errorf("example.yaml does not document %s (key %q)", field, key)
		}
	}
}

// terminal: false keeps a plain pipe for a hook; the default is a terminal.
func TestHookTerminalSetting(t *testing.T) {
	e := newEnv(t)
	c, err := e.load(`stateDir: /bv
defaults:
  hooks:
    beforeLease: {script: "echo a"}
    afterLease: {script: "echo b", terminal: false}
boards:
  - name: b1
  - name: b2
    hooks:
      beforeLease: {script: "echo c", terminal: true}
`)
	if err != nil {
		t.Fatal(err)
	}
	rs := c.Resolve()
	if rs[0].Before.Pipe || !rs[0].After.Pipe || rs[1].Before.Pipe || !rs[1].After.Pipe {
		t.Errorf("pipes: %v %v %v %v, want false true false true", rs[0].Before.Pipe, rs[0].After.Pipe, rs[1].Before.Pipe, rs[1].After.Pipe)
	}
}
