// Package configtest holds the config mistakes the config tests know, each with the
// one problem line it must give, so that the package's tests and the tests of
// `boardvisor config check` (the real binary) go through the same table.
package configtest

import (
	"os"
	"strings"

	"github.com/boardvisor/boardvisor/connector/tlsconf/tlstest"
)

// Case is one mistaken config: its text ({{DIR}} stands for a directory holding Files)
// and the problem it gives, with the config file's directory left out of its path
// (config.yaml).
type Case struct {
	Name, Config, Want string
}

// File is a file the cases name, under {{DIR}}.
type File struct {
	Content string
	Mode    os.FileMode
}

// Files are the files every case's directory holds: server.pem and server.key are a
// certificate and its key, other.key the key of another (made when the package is
// loaded: no key is committed).
var Files = map[string]File{
	"plain.sh": {"#!/bin/sh\n", 0o644},
	"tty":      {"", 0o600},
}

func init() {
	ca := tlstest.NewCA(tlstest.NoTest, "configtest CA")
	cert, key := ca.Issue(tlstest.NoTest, tlstest.Localhost("b1"))
	_, other := ca.Issue(tlstest.NoTest, tlstest.Localhost("b2"))
	Files["server.pem"] = File{string(cert), 0o644}
	Files["server.key"] = File{string(key), 0o600}
	Files["other.key"] = File{string(other), 0o600}
}

const board = "boards:\n  - name: b1\n"

// Invalid are the mistakes, each giving exactly one problem, worded as
// <file>:<line>: [board "<name>": ]<field>: <problem>.
var Invalid = []Case{
	{"stateDir missing", board,
		`config.yaml: stateDir: required (an absolute directory path; created if missing)`},
	{"stateDir relative", "stateDir: var/bv\n" + board,
		`config.yaml:1: stateDir: "var/bv" is not an absolute path`},
	{"listen not host:port", "stateDir: /bv\nlisten: localhost\n" + board,
		`config.yaml:2: listen: "localhost" is not a host:port address`},
	{"listen bad port", "stateDir: /bv\nlisten: localhost:http\n" + board,
		`config.yaml:2: listen: "localhost:http" has an invalid port "http" (want a number from 0 to 65535)`},
	{"log level", "stateDir: /bv\nlog:\n  level: verbose\n" + board,
		`config.yaml:3: log.level: unknown level "verbose" (want trace, debug, info, warn or error)`},
	{"log format", "stateDir: /bv\nlog: {format: xml}\n" + board,
		`config.yaml:2: log.format: unknown format "xml" (want json, text or auto)`},
	{"coordinator without address", "stateDir: /bv\ncoordinator: {tokenFile: \"\"}\n" + board,
		`config.yaml:2: coordinator.address: required (host:port of the coordinator, or several comma-separated; leave out the coordinator block to run without one)`},
	{"coordinator address without host", "stateDir: /bv\ncoordinator:\n  address: \":7400\"\n" + board,
		`config.yaml:3: coordinator.address: ":7400" has no host`},
	{"coordinator port 0", "stateDir: /bv\ncoordinator:\n  address: coord:0\n" + board,
		`config.yaml:3: coordinator.address: "coord:0" has an invalid port "0" (want a number from 1 to 65535)`},
	{"token file missing", "stateDir: /bv\ncoordinator:\n  address: coord:7400\n  tokenFile: {{DIR}}/nope\n" + board,
		`config.yaml:4: coordinator.tokenFile: {{DIR}}/nope does not exist`},
	{"token file a directory", "stateDir: /bv\ncoordinator:\n  address: coord:7400\n  tokenFile: {{DIR}}\n" + board,
		`config.yaml:4: coordinator.tokenFile: {{DIR}} is not a regular file`},
	{"tls without certFile", "stateDir: /bv\ntls:\n  keyFile: {{DIR}}/server.key\n" + board,
		`config.yaml:2: tls.certFile: required (the client service's certificate, PEM; leave out the tls block to serve plaintext)`},
	{"tls without keyFile", "stateDir: /bv\ntls: {certFile: {{DIR}}/server.pem}\n" + board,
		`config.yaml:2: tls.keyFile: required (the certificate's private key, PEM)`},
	{"tls certificate missing", "stateDir: /bv\ntls:\n  certFile: {{DIR}}/nope.pem\n  keyFile: {{DIR}}/server.key\n" + board,
		`config.yaml:3: tls.certFile: {{DIR}}/nope.pem does not exist`},
	{"tls key of another certificate", "stateDir: /bv\ntls:\n  certFile: {{DIR}}/server.pem\n  keyFile: {{DIR}}/other.key\n" + board,
		`config.yaml:3: tls.certFile: certificate {{DIR}}/server.pem with key {{DIR}}/other.key: private key does not match public key`},
	{"tls key not a key", "stateDir: /bv\ntls:\n  certFile: {{DIR}}/server.pem\n  keyFile: {{DIR}}/plain.sh\n" + board,
		`config.yaml:3: tls.certFile: certificate {{DIR}}/server.pem with key {{DIR}}/plain.sh: failed to find any PEM data in key input`},
	{"tls client CA not PEM", "stateDir: /bv\ntls:\n  certFile: {{DIR}}/server.pem\n  keyFile: {{DIR}}/server.key\n  clientCAFile: {{DIR}}/plain.sh\n" + board,
		`config.yaml:5: tls.clientCAFile: {{DIR}}/plain.sh holds no PEM certificate`},
	{"coordinator certificate without key", "stateDir: /bv\ncoordinator:\n  address: coord:7400\n  caFile: {{DIR}}/server.pem\n  certFile: {{DIR}}/server.pem\n" + board,
		`config.yaml:2: coordinator.keyFile: required with coordinator.certFile (the certificate's private key)`},
	{"coordinator certificate without TLS", "stateDir: /bv\ncoordinator:\n  address: coord:7400\n  certFile: {{DIR}}/server.pem\n  keyFile: {{DIR}}/server.key\n" + board,
		`config.yaml:4: coordinator.certFile: a client certificate needs TLS: set coordinator.caFile too`},
	{"coordinator key of another certificate", "stateDir: /bv\ncoordinator:\n  address: coord:7400\n  caFile: {{DIR}}/server.pem\n  certFile: {{DIR}}/server.pem\n  keyFile: {{DIR}}/other.key\n" + board,
		`config.yaml:5: coordinator.certFile: certificate {{DIR}}/server.pem with key {{DIR}}/other.key: private key does not match public key`},
	{"no boards", "stateDir: /bv\nboards: []\n",
		`config.yaml:2: boards: at least one board is required`},
	{"boards missing", "stateDir: /bv\n",
		`config.yaml: boards: at least one board is required`},
	{"board without name", "stateDir: /bv\nboards:\n  - labels: {a: b}\n",
		`config.yaml:3: boards[0].name: required`},
	{"board name invalid", "stateDir: /bv\nboards:\n  - name: rpi 4\n",
		`config.yaml:3: board "rpi 4": name: "rpi 4" is not a valid board name (want 1 to 64 of A-Z a-z 0-9 . _ -)`},
	{"board name too long", "stateDir: /bv\nboards:\n  - name: " + strings.Repeat("x", 65) + "\n",
		`config.yaml:3: board "` + strings.Repeat("x", 65) + `": name: "` + strings.Repeat("x", 65) + `" is not a valid board name (want 1 to 64 of A-Z a-z 0-9 . _ -)`},
	{"board name dot-dot", "stateDir: /bv\nboards:\n  - name: ..\n",
		`config.yaml:3: board "..": name: ".." is reserved (board names are used as directory names)`},
	{"label key", "stateDir: /bv\nboards:\n  - name: b1\n    labels:\n      \"a=b\": c\n",
		`config.yaml:5: board "b1": labels.a=b: invalid label key "a=b" (want 1 to 63 of A-Z a-z 0-9 . _ / -)`},
	{"hook script and exec", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease: {script: x, exec: /bin/true}\n",
		`config.yaml:5: board "b1": hooks.beforeLease: set either script or exec, not both`},
	{"hook neither", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease: {timeout: 5s}\n",
		`config.yaml:5: board "b1": hooks.afterLease: one of script or exec is required (or disabled: true, to turn off a default hook)`},
	{"hook blank script", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease:\n        script: \"  \"\n",
		`config.yaml:5: board "b1": hooks.afterLease: one of script or exec is required (or disabled: true, to turn off a default hook)`},
	{"exec relative", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease:\n        exec: after.sh\n",
		`config.yaml:6: board "b1": hooks.afterLease.exec: "after.sh" is not an absolute path`},
	{"exec missing", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease:\n        exec: {{DIR}}/nope.sh\n",
		`config.yaml:6: board "b1": hooks.afterLease.exec: {{DIR}}/nope.sh does not exist`},
	{"exec a directory", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease:\n        exec: {{DIR}}\n",
		`config.yaml:6: board "b1": hooks.afterLease.exec: {{DIR}} is not a regular file`},
	{"exec not executable", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease:\n        exec: {{DIR}}/plain.sh\n",
		`config.yaml:6: board "b1": hooks.afterLease.exec: {{DIR}}/plain.sh is not executable (mode 0644)`},
	{"default exec not executable", "stateDir: /bv\ndefaults:\n  hooks:\n    beforeLease: {exec: {{DIR}}/plain.sh}\n" + board,
		`config.yaml:4: defaults.hooks.beforeLease.exec: {{DIR}}/plain.sh is not executable (mode 0644)`},
	{"hook timeout negative", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease:\n        script: x\n        timeout: -5s\n",
		`config.yaml:7: board "b1": hooks.beforeLease.timeout: -5s must be positive`},
	{"hook timeout without unit", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease:\n        script: x\n        timeout: 90\n",
		`config.yaml:7: board "b1": hooks.beforeLease.timeout: duration 90 has no unit (write e.g. "90s" or "90m")`},
	{"hook timeout garbage", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease: {script: x, timeout: soon, onFailure: warn}\n",
		`config.yaml:5: board "b1": hooks.beforeLease.timeout: invalid duration "soon" (want e.g. "90s", "2m" or "1h30m")`},
	{"onFailure unknown", "stateDir: /bv\nboards:\n  - name: rpi4-01\n    hooks:\n      beforeLease:\n        script: x\n        onFailure: retry\n",
		`config.yaml:7: board "rpi4-01": hooks.beforeLease.onFailure: unknown policy "retry" (want warn, endLease or exit)`},
	{"disabled with script", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease:\n        disabled: true\n        script: x\n",
		`config.yaml:6: board "b1": hooks.beforeLease.disabled: a disabled hook takes no script, exec, timeout, onFailure or terminal`},
	{"disabled with terminal", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      afterLease: {disabled: true, terminal: false}\n",
		`config.yaml:5: board "b1": hooks.afterLease.disabled: a disabled hook takes no script, exec, timeout, onFailure or terminal`},
	{"terminal not a boolean", "stateDir: /bv\nboards:\n  - name: b1\n    hooks:\n      beforeLease: {script: x, terminal: sometimes}\n",
		`config.yaml:5: board "b1": hooks.beforeLease.terminal: want true or false, got a string "sometimes"`},
	{"default queue too big", "stateDir: /bv\ndefaults:\n  queue: 17\n" + board,
		`config.yaml:3: defaults.queue: 17 is out of range (want 0 to 16)`},
	{"board queue negative", "stateDir: /bv\nboards:\n  - name: b1\n    queue: -1\n",
		`config.yaml:4: board "b1": queue: -1 is out of range (want 0 to 16)`},
	{"lease duration negative", "stateDir: /bv\nboards:\n  - name: b1\n    leaseDuration: -1m\n",
		`config.yaml:4: board "b1": leaseDuration: -1m0s must be positive`},
	{"serial device empty", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial: {baud: 9600}\n",
		`config.yaml:5: board "b1": drivers.serial.device: required (e.g. /dev/ttyUSB0)`},
	{"serial device missing", "stateDir: /bv\nboards:\n  - name: rpi4-01\n    drivers:\n      serial:\n        device: {{DIR}}/ttyUSB9\n",
		`config.yaml:6: board "rpi4-01": drivers.serial.device: {{DIR}}/ttyUSB9 does not exist`},
	{"serial device relative", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: ttyUSB0\n",
		`config.yaml:6: board "b1": drivers.serial.device: "ttyUSB0" is not an absolute path`},
	{"serial baud", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        baud: 115201\n",
		`config.yaml:7: board "b1": drivers.serial.baud: 115201 is not a standard rate (e.g. 9600, 115200, 921600; 50 to 4000000)`},
	{"serial baud not a number", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        baud: fast\n",
		`config.yaml:7: board "b1": drivers.serial.baud: want an integer, got a string "fast"`},
	{"serial parity", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        parity: n\n",
		`config.yaml:7: board "b1": drivers.serial.parity: unknown parity "n" (want none, odd, even, mark or space)`},
	{"serial data bits", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        dataBits: 9\n",
		`config.yaml:7: board "b1": drivers.serial.dataBits: 9 is out of range (want 5 to 8)`},
	{"serial stop bits", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        stopBits: 3\n",
		`config.yaml:7: board "b1": drivers.serial.stopBits: 3 is not 1 or 2`},
	{"serial coalesce", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial:\n        device: {{DIR}}/tty\n        coalesce: 2m\n",
		`config.yaml:7: board "b1": drivers.serial.coalesce: 2m0s is out of range (want 0s to 1m; 0s means the default, 250ms)`},
	{"serial device shared", "stateDir: /bv\nboards:\n  - name: b1\n    drivers: {serial: {device: {{DIR}}/tty}}\n  - name: b2\n    drivers: {serial: {device: {{DIR}}/tty}}\n",
		`config.yaml:6: board "b2": drivers.serial.device: {{DIR}}/tty is also the serial device of board "b1" (at line 4)`},
	{"serial in defaults", "stateDir: /bv\ndefaults:\n  drivers:\n    serial: {device: {{DIR}}/tty}\n" + board,
		`config.yaml:4: defaults.drivers.serial: a serial console belongs to one board: set it under boards[].drivers.serial`},
	{"power without commands", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      power: {on: \"\", timeout: 5s}\n",
		`config.yaml:5: board "b1": drivers.power: at least one of on, off or cycle is required`},
	{"power timeout negative", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      power: {on: x, timeout: -5s}\n",
		`config.yaml:5: board "b1": drivers.power.timeout: -5s must be positive`},
	{"virtual boot delay negative", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      virtual: {bootDelay: -1s}\n",
		`config.yaml:5: board "b1": drivers.virtual.bootDelay: -1s must not be negative`},
	{"serial and virtual", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial: {device: {{DIR}}/tty}\n      virtual: {}\n",
		`config.yaml:4: board "b1": drivers: serial and virtual exclude each other (a virtual board has a simulated console)`},
	{"serial and default virtual", "stateDir: /bv\ndefaults:\n  drivers: {virtual: {}}\nboards:\n  - name: b1\n    drivers:\n      serial: {device: {{DIR}}/tty}\n",
		`config.yaml:6: board "b1": drivers: serial and virtual exclude each other (virtual is inherited from defaults.drivers.virtual)`},
	{"unknown field", "stateDir: /bv\nboards:\n  - name: rpi4-01\n    hoooks: {}\n",
		`config.yaml:4: board "rpi4-01": hoooks: unknown field (did you mean "hooks"?)`},
	{"unknown top-level field", "stateDir: /bv\nplugins: [a]\n" + board,
		`config.yaml:2: plugins: unknown field (known fields: stateDir, listen, tls, metrics, log, coordinator, defaults, runAsRoot, hookCgroup, images, boards)`},
	{"unknown nested field", "stateDir: /bv\nboards:\n  - name: b1\n    drivers:\n      serial: {device: {{DIR}}/tty, baudrate: 9600}\n",
		`config.yaml:5: board "b1": drivers.serial.baudrate: unknown field (did you mean "baud"?)`},
	{"duplicate key", "stateDir: /bv\nboards:\n  - name: b1\n    queue: 1\n    queue: 2\n",
		`config.yaml:5: board "b1": queue: key given twice (first at line 4)`},
	{"wrong type", "stateDir: /bv\nboards:\n  - name: b1\n    labels: [a, b]\n",
		`config.yaml:4: board "b1": labels: want a mapping, got a list`},
	{"path is not a key", "stateDir: /bv\npath: /x\n" + board,
		`config.yaml:2: path: unknown field (known fields: stateDir, listen, tls, metrics, log, coordinator, defaults, runAsRoot, hookCgroup, images, boards)`},
	{"default power on a simulated board", "stateDir: /bv\ndefaults:\n  drivers:\n    power: {on: pdu-on}\nboards:\n  - name: virt-01\n    drivers: {virtual: {}}\n",
		`config.yaml:7: board "virt-01": drivers.power: inherited from defaults.drivers.power (line 4), which would replace this simulated board's own power and it would never boot: set power on the boards that need it, not in defaults`},
	{"default power on a board simulated by default", "stateDir: /bv\ndefaults:\n  drivers:\n    power: {on: pdu-on}\n    virtual: {}\nboards:\n  - name: b1\n",
		`config.yaml:7: board "b1": drivers.power: inherited from defaults.drivers.power (line 4), which would replace this simulated board's own power and it would never boot: set power on the boards that need it, not in defaults`},
}
