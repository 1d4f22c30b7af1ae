package coordinator

import (
	"fmt"
	"sort"
	"strings"
)

// Selector is a parsed label selector: a conjunction of terms, each "key=value" (the
// label must be present with that value) or "key!=value" (the label must be absent or
// have another value). The empty Selector matches every board.
type Selector struct {
	terms []term
}

type term struct {
	key, value string
	not        bool
}

// Limits on selector terms, in the spirit of Kubernetes labels.
const (
	maxKeyLen      = 253
	maxValueLen    = 253
	maxTerms       = 64
	maxSelectorLen = 4096
)

// ParseSelector parses a label selector such as "device=rpi4,arch!=x86". Terms are
// separated by commas; spaces around terms, keys and values are ignored; "==" is the same
// as "=". Keys are made of letters, digits and ". _ / -"; values also allow ":". The
// empty string is the empty Selector.
func ParseSelector(s string) (Selector, error) {
	if len(s) > maxSelectorLen {
		return Selector{}, fmt.Errorf("invalid selector: longer than %d bytes", maxSelectorLen)
	}
	if strings.TrimSpace(s) == "" {
		return Selector{}, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > maxTerms {
		return Selector{}, fmt.Errorf("invalid selector %q: more than %d terms", s, maxTerms)
	}
	sel := Selector{terms: make([]term, 0, len(parts))}
	for i, p := range parts {
		t, err := parseTerm(strings.TrimSpace(p))
		if err != nil {
			return Selector{}, fmt.Errorf("invalid selector %q: term %d: %v", s, i+1, err)
		}
		sel.terms = append(sel.terms, t)
	}
	sort.Slice(sel.terms, func(i, j int) bool { return sel.terms[i].less(sel.terms[j]) })
	// Drop exact duplicates, so that String is canonical.
	out := sel.terms[:0]
	for i, t := range sel.terms {
		if i > 0 && t == sel.terms[i-1] {
			continue
		}
		out = append(out, t)
	}
	sel.terms = out
	return sel, nil
}

func (t term) less(u term) bool {
	if t.key != u.key {
		return t.key < u.key
	}
	if t.not != u.not {
		return !t.not
	}
	return t.value < u.value
}

func parseTerm(p string) (term, error) {
	if p == "" {
		return term{}, fmt.Errorf("empty term (stray comma?)")
	}
	var t term
	var key, value string
	if i := strings.Index(p, "!="); i >= 0 {
		key, value, t.not = p[:i], p[i+2:], true
	} else if i := strings.Index(p, "=="); i >= 0 {
		key, value = p[:i], p[i+2:]
	} else if i := strings.IndexByte(p, '='); i >= 0 {
		key, value = p[:i], p[i+1:]
	} else {
		return term{}, fmt.Errorf("%q is not key=value or key!=value", p)
	}
	t.key, t.value = strings.TrimSpace(key), strings.TrimSpace(value)
	if err := checkWord(t.key, "key", maxKeyLen, false); err != nil {
		return term{}, err
	}
	if err := checkWord(t.value, "value", maxValueLen, true); err != nil {
		return term{}, fmt.Errorf("key %q: %v", t.key, err)
	}
	return t, nil
}

func checkWord(w, what string, max int, colon bool) error {
	if w == "" {
		return fmt.Errorf("empty %s", what)
	}
	if len(w) > max {
		return fmt.Errorf("%s longer than %d bytes", what, max)
	}
	for _, r := range w {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			r == '.', r == '_', r == '/', r == '-':
		case r == ':' && colon:
		default:
			return fmt.Errorf("%s %q has the character %q (allowed: letters, digits and . _ / -%s)", what, w, r, map[bool]string{true: " :"}[colon])
		}
	}
	return nil
}

// Empty reports whether the selector has no terms (and so matches every board).
func (s Selector) Empty() bool { return len(s.terms) == 0 }

// Matches reports whether a board with these labels satisfies every term.
func (s Selector) Matches(labels map[string]string) bool {
	for _, t := range s.terms {
		v, ok := labels[t.key]
		if t.not {
			if ok && v == t.value {
				return false
			}
		} else if !ok || v != t.value {
			return false
		}
	}
	return true
}

// String returns the canonical form: terms sorted, duplicates removed, no spaces, "=" for
// equality. ParseSelector(s.String()) gives back an equal Selector.
func (s Selector) String() string {
	var b strings.Builder
	for i, t := range s.terms {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(t.key)
		if t.not {
			b.WriteString("!=")
		} else {
			b.WriteByte('=')
		}
		b.WriteString(t.value)
	}
	return b.String()
}

// formatLabels renders labels as "k=v,k2=v2", sorted by key.
func formatLabels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}
