package config

import (
	"fmt"
	"time"

	"gopkg.in/yaml.v3"
)

// Duration is a time.Duration written in YAML as a Go duration string ("90s", "2m",
// "1h30m"). A number without a unit is rejected, so "timeout: 90" is an error rather
// than 90 nanoseconds.
type Duration time.Duration

// Std returns d as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// String formats d as time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes d as a duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// UnmarshalYAML reads a duration string. Its errors are *yaml.TypeError values naming
// the line (and column, which Parse uses to find the field), so that the decoder goes on
// and reports every bad value at once.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	bad := func(format string, args ...any) error {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: column %d: ", n.Line, n.Column) + fmt.Sprintf(format, args...)}}
	}
	if n.Kind != yaml.ScalarNode {
		return bad("want a duration such as \"90s\" or \"2m\", got %s", kindName(n))
	}
	switch n.ShortTag() {
	case "!!int", "!!float":
		return bad("duration %s has no unit (write e.g. \"%ss\" or \"%sm\")", n.Value, n.Value, n.Value)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return bad("invalid duration %q (want e.g. \"90s\", \"2m\" or \"1h30m\")", n.Value)
	}
	*d = Duration(v)
	return nil
}

// kindName describes a node's kind for messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.DocumentNode:
		return "a document"
	}
	return fmt.Sprintf("%q", n.Value)
}
