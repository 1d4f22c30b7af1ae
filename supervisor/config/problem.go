package config

import (
	"errors"
	"fmt"
	"strings"
)

// Problem is one thing wrong with a config, reported on one line:
//
//	<file>:<line>: board "<name>": <field>: <message>
//
// Line is left out when unknown (0), the board part for host-level fields and for a
// board without a name (whose Field then starts with "boards[i]"), the field part when
// the problem concerns no field (e.g. a YAML syntax error).
type Problem struct {
	// File is the config file (Config.Path); "config" when empty.
	File string
	// Line is the 1-based YAML line of the field, or 0 when unknown.
	Line int
	// Board is the name of the board the field belongs to, or "" for host-level fields.
	Board string
	// Field is the field path, relative to the board when Board is set, e.g.
	// "hooks.beforeLease.onFailure", or absolute, e.g. "defaults.queue".
	Field string
	// Message says what is wrong.
	Message string
}

// Error formats the problem on one line; newlines inside any part are escaped.
func (p *Problem) Error() string {
	var b strings.Builder
	if p.File == "" {
		b.WriteString("config")
	} else {
		b.WriteString(p.File)
	}
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Board != "" {
		fmt.Fprintf(&b, "board %q: ", p.Board)
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return oneLine.Replace(b.String())
}

var oneLine = strings.NewReplacer("\r\n", `\r\n`, "\n", `\n`, "\r", `\r`)

// joinProblems returns nil for no problems, else all of them joined (one per line).
func joinProblems(ps []*Problem) error {
	if len(ps) == 0 {
		return nil
	}
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errors.Join(errs...)
}
