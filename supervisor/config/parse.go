package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load reads the config file at path and parses it with Parse.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s: cannot read config: %w", oneLine.Replace(path), err)
	}
	return Parse(path, data)
}

// Parse decodes data, the contents of the config file path, into a Config. The data
// must hold exactly one YAML document, a mapping; keys are matched strictly, so an
// unknown or misspelt key is an error naming its line. Defaults are then applied
// (ApplyDefaults) and the config validated (Validate). Every problem found is reported,
// each as a *Problem on a line of its own; decoding problems (unknown keys, values of
// the wrong type) are reported without going on to validation.
func Parse(path string, data []byte) (*Config, error) {
	root, perr := parseNode(path, data)
	if perr != nil {
		return nil, perr
	}
	pos := newPositions(root)
	if len(pos.dups) > 0 {
		// Reported here in one pass: yaml.v3 compares every pair of keys and reports
		// every duplicate pair, which grows with the square of the copies.
		probs := make([]*Problem, len(pos.dups))
		for i, d := range pos.dups {
			probs[i] = pos.problem(path, d.keyLine, d.path, fmt.Sprintf("key given twice (first at line %d)", d.firstLine))
		}
		return nil, joinProblems(probs)
	}
	var c Config
	if err := decodeStrict(data, &c); err != nil {
		return nil, joinProblems(pos.decodeProblems(path, err))
	}
	c.Path = path
	c.pos = pos
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// parseNode parses data into a node tree and checks that it is one document holding a
// mapping. It returns the mapping node.
func parseNode(path string, data []byte) (*yaml.Node, *Problem) {
	prob := func(line int, format string, args ...any) *Problem {
		return &Problem{File: path, Line: line, Message: fmt.Sprintf(format, args...)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, prob(0, "empty config file (want a mapping with at least stateDir and boards)")
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	err := guard(func() error { return dec.Decode(&doc) })
	if errors.Is(err, io.EOF) {
		return nil, prob(0, "empty config file: only comments (want a mapping with at least stateDir and boards)")
	}
	if err != nil {
		return nil, syntaxProblem(path, err)
	}
	var next yaml.Node
	switch err := guard(func() error { return dec.Decode(&next) }); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxProblem(path, err)
	default:
		return nil, prob(next.Line, "a second YAML document starts here; the config must be a single document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, prob(doc.Line, "not a YAML document")
	}
	top := doc.Content[0]
	if top.Kind == yaml.ScalarNode && top.ShortTag() == "!!null" {
		return nil, prob(top.Line, "empty config (want a mapping with at least stateDir and boards)")
	}
	if top.Kind != yaml.MappingNode {
		return nil, prob(top.Line, "the config must be a mapping of keys to values, got %s", kindName(top))
	}
	return top, nil
}

// decodeStrict decodes the (single) document in data into c, rejecting unknown keys.
func decodeStrict(data []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	return guard(func() error { return dec.Decode(c) })
}

// guard runs a yaml.v3 call and turns a panic inside the library into an error, so that
// no input, however malformed, takes the daemon down.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: cannot parse: %v", r)
		}
	}()
	return f()
}

var syntaxRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxProblem turns a yaml.v3 parse error into a Problem.
func syntaxProblem(path string, err error) *Problem {
	msg := err.Error()
	if m := syntaxRe.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &Problem{File: path, Line: line, Message: "invalid YAML: " + m[2]}
	}
	return &Problem{File: path, Message: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// positions remembers where each field of the YAML document is, by field path
// ("boards[0].hooks.beforeLease.onFailure").
type positions struct {
	entries []entry
	lines   map[string]int    // path -> line of its key (or of the item, in a list)
	names   map[string]string // "boards[i]" -> the board's name as written
	dups    []duplicate       // keys given twice in one mapping
}

// duplicate is a key given a second time in a mapping.
type duplicate struct {
	path      string
	keyLine   int
	firstLine int
}

// maxWalkDepth bounds how deep positions are recorded: far deeper than any field of a
// Config, shallow enough that absurdly nested input costs little.
const maxWalkDepth = 32

// entry is one key/value pair or list item of the document.
type entry struct {
	path      string
	key       string // the key; "" for a list item
	keyLine   int
	value     *yaml.Node
	valueLine int
}

func newPositions(top *yaml.Node) *positions {
	p := &positions{lines: map[string]int{}, names: map[string]string{}}
	p.walk(top, "", 0)
	return p
}

func (p *positions) add(e entry) {
	p.entries = append(p.entries, e)
	if _, ok := p.lines[e.path]; !ok {
		p.lines[e.path] = e.keyLine
	}
}

func (p *positions) walk(n *yaml.Node, path string, depth int) {
	if depth >= maxWalkDepth {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		type seenKey struct {
			kind  yaml.Kind
			value string
		}
		seen := map[seenKey]int{} // key -> line of its first occurrence
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			child := k.Value
			if path != "" {
				child = path + "." + k.Value
			}
			// The same test as yaml.v3's unique-key check: same kind, same text.
			sk := seenKey{k.Kind, k.Value}
			if first, dup := seen[sk]; dup {
				p.dups = append(p.dups, duplicate{path: child, keyLine: k.Line, firstLine: first})
			} else {
				seen[sk] = k.Line
			}
			p.add(entry{path: child, key: k.Value, keyLine: k.Line, value: v, valueLine: v.Line})
			if k.Value == "name" && v.Kind == yaml.ScalarNode && boardRe.MatchString(path) {
				if _, ok := p.names[path]; !ok {
					p.names[path] = v.Value
				}
			}
			p.walk(v, child, depth+1)
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			child := fmt.Sprintf("%s[%d]", path, i)
			p.add(entry{path: child, keyLine: v.Line, value: v, valueLine: v.Line})
			p.walk(v, child, depth+1)
		}
	}
	// Aliases are not followed: an anchor may contain itself.
}

// line returns the line of path, or of its nearest ancestor that is in the document;
// 0 when none is (or p is nil).
func (p *positions) line(path string) int {
	if p == nil {
		return 0
	}
	for path != "" {
		if l, ok := p.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return 0
}

var (
	boardRe        = regexp.MustCompile(`^boards\[\d+\]$`)
	boardPathRe    = regexp.MustCompile(`^(boards\[\d+\])(?:\.(.*))?$`)
	lineMsgRe      = regexp.MustCompile(`^line (\d+): (?:column (\d+): )?(.*)$`)
	notFoundRe     = regexp.MustCompile(`^field (.*) not found in type (\S+)$`)
	cannotRe       = regexp.MustCompile("^cannot unmarshal (\\S+)(?: `(.*)`)? into (.+)$")
	duplicateKeyRe = regexp.MustCompile(`^mapping key (".*") already defined at line (\d+)$`)
)

// problem builds a Problem for the field at the absolute path, attributing it to its
// board when the path is inside one.
func (p *positions) problem(file string, line int, path, msg string) *Problem {
	pr := &Problem{File: file, Line: line, Field: path, Message: msg}
	if m := boardPathRe.FindStringSubmatch(path); m != nil {
		if name := p.names[m[1]]; name != "" {
			pr.Board, pr.Field = name, m[2]
		}
	}
	return pr
}

// decodeProblems turns the error of the strict decode into Problems naming fields.
func (p *positions) decodeProblems(file string, err error) []*Problem {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []*Problem{syntaxProblem(file, err)}
	}
	var out []*Problem
	for _, s := range te.Errors {
		m := lineMsgRe.FindStringSubmatch(s)
		if m == nil {
			out = append(out, &Problem{File: file, Message: s})
			continue
		}
		line, _ := strconv.Atoi(m[1])
		col, _ := strconv.Atoi(m[2]) // set by Duration.UnmarshalYAML only
		out = append(out, p.decodeProblem(file, line, col, m[3]))
	}
	return out
}

func (p *positions) decodeProblem(file string, line, col int, msg string) *Problem {
	if m := notFoundRe.FindStringSubmatch(msg); m != nil {
		if e, ok := p.byKey(line, m[1]); ok {
			return p.problem(file, line, e.path, unknownFieldMessage(m[1], m[2]))
		}
		return &Problem{File: file, Line: line, Field: m[1], Message: unknownFieldMessage(m[1], m[2])}
	}
	if m := duplicateKeyRe.FindStringSubmatch(msg); m != nil {
		key, err := strconv.Unquote(m[1])
		if err != nil {
			key = m[1]
		}
		text := fmt.Sprintf("key given twice (first at line %s)", m[2])
		if e, ok := p.byKey(line, key); ok {
			return p.problem(file, line, e.path, text)
		}
		return &Problem{File: file, Line: line, Field: key, Message: text}
	}
	match := func(e entry) bool { return col == 0 || e.value.Column == col }
	if m := cannotRe.FindStringSubmatch(msg); m != nil {
		tag, value := m[1], m[2]
		got := tagName(tag)
		if value != "" {
			got += " " + strconv.Quote(value)
		}
		msg = fmt.Sprintf("want %s, got %s", typeName(m[3]), got)
		match = func(e entry) bool {
			// yaml.v3 cuts long values to 7 bytes and "...".
			return e.value.ShortTag() == tag &&
				strings.HasPrefix(e.value.Value, strings.TrimSuffix(value, "..."))
		}
	}
	if e, ok := p.byValueLine(line, match); ok {
		return p.problem(file, line, e.path, msg)
	}
	return &Problem{File: file, Line: line, Message: msg}
}

// byKey finds the entry whose key is key, written on line.
func (p *positions) byKey(line int, key string) (entry, bool) {
	for _, e := range p.entries {
		if e.keyLine == line && e.key == key && e.value != nil {
			return e, true
		}
	}
	return entry{}, false
}

// byValueLine finds the entry whose value starts on line: the last one (in document
// order, so the innermost) that match accepts, else the last one.
func (p *positions) byValueLine(line int, match func(entry) bool) (entry, bool) {
	var last, best entry
	var lastOK, bestOK bool
	for _, e := range p.entries {
		if e.valueLine != line || e.value.Kind == yaml.AliasNode {
			continue // an error names the node an alias points to, never the alias
		}
		last, lastOK = e, true
		if match(e) {
			best, bestOK = e, true
		}
	}
	if bestOK {
		return best, true
	}
	return last, lastOK
}

// knownTypes are the config's struct types, by the name yaml.v3 gives them in errors.
var knownTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, v := range []any{Config{}, LogConfig{}, CoordinatorConfig{}, Defaults{}, Board{},
		Hooks{}, Hook{}, Drivers{}, Serial{}, Power{}, Virtual{}} {
		t := reflect.TypeOf(v)
		m[t.String()] = t
	}
	return m
}()

// fieldNames lists a struct type's YAML keys in declaration order.
func fieldNames(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" {
			names = append(names, tag)
		}
	}
	return names
}

func unknownFieldMessage(field, typ string) string {
	t, ok := knownTypes[typ]
	if !ok {
		return "unknown field"
	}
	names := fieldNames(t)
	best, bestD := "", 3
	lf := strings.ToLower(field)
	for _, n := range names {
		ln := strings.ToLower(n)
		d := editDistance(lf, ln)
		if len(lf) >= 3 && len(ln) >= 3 && (strings.HasPrefix(lf, ln) || strings.HasPrefix(ln, lf)) {
			d = min(d, 2) // "baudrate" for "baud", "before" for "beforeLease"
		}
		if d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown field (did you mean %q?)", best)
	}
	return "unknown field (known fields: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64 // too far apart to be a typo; keeps the cost bounded
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func tagName(tag string) string {
	switch tag {
	case "!!str":
		return "a string"
	case "!!int":
		return "an integer"
	case "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	case "!!map":
		return "a mapping"
	case "!!seq":
		return "a list"
	}
	return tag
}

func typeName(goType string) string {
	switch {
	case goType == "string":
		return "a string"
	case goType == "bool":
		return "true or false"
	case strings.HasPrefix(goType, "int") || strings.HasPrefix(goType, "uint"):
		return "an integer"
	case strings.HasPrefix(goType, "map["):
		return "a mapping"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case strings.HasPrefix(goType, "config."):
		return "a mapping"
	}
	return goType
}
