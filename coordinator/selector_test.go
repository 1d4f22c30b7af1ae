package coordinator

import (
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	labels := map[string]string{"device": "rpi4", "arch": "arm64", "jumpstarter.dev/name": "lab-1"}
	for _, tc := range []struct {
		in, canon string
		match     bool
	}{
		{"", "", true},
		{"device=rpi4", "device=rpi4", true},
		{" device = rpi4 , arch==arm64 ", "arch=arm64,device=rpi4", true},
		{"device=rpi4,device=rpi4", "device=rpi4", true},
		{"device=rpi3", "device=rpi3", false},
		{"device!=rpi3", "device!=rpi3", true},
		{"device!=rpi4", "device!=rpi4", false},
		{"missing!=x", "missing!=x", true},
		{"missing=x", "missing=x", false},
		{"jumpstarter.dev/name=lab-1", "jumpstarter.dev/name=lab-1", true},
		{"device=rpi4,device=rpi5", "device=rpi4,device=rpi5", false},
		{"ver=1:2", "ver=1:2", false},
	} {
		sel, err := ParseSelector(tc.in)
		if err != nil {
			t.Fatalf("ParseSelector(%q): %v", tc.in, err)
		}
		if sel.String() != tc.canon || sel.Matches(labels) != tc.match {
			t.Errorf("ParseSelector(%q) = %q matching %v; want %q matching %v", tc.in, sel, sel.Matches(labels), tc.canon, tc.match)
		}
	}
	for _, tc := range []struct{ in, err string }{
		{"device", `term 1: "device" is not key=value or key!=value`},
		{"a=b,", "term 2: empty term"},
		{",a=b", "term 1: empty term"},
		{"=rpi4", "empty key"},
		{"device=", `key "device": empty value`},
		{"a=b=c", `value "b=c" has the character '='`},
		{"dev ice=x", `key "dev ice" has the character ' '`},
		{"a:b=c", `key "a:b" has the character ':'`},
		{"a=" + strings.Repeat("x", 300), "value longer than 253 bytes"},
		{strings.Repeat("a=b,", 65) + "a=b", "more than 64 terms"},
	} {
		_, err := ParseSelector(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseSelector(%q) error = %v, want one containing %q", tc.in, err, tc.err)
		}
	}
}

// FuzzParseSelector checks that the parser never panics, that the canonical form parses
// back to itself, and that a selector matches the labels its own equality terms describe
// unless it contradicts itself.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"device=rpi4", "device=rpi4,arch!=x86", " a == b ", "a=b,,c=d", "k/x.y-z=v:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error for %q: %v", s, err)
			}
			return
		}
		again, err := ParseSelector(sel.String())
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", sel.String(), s, err)
		}
		if again.String() != sel.String() {
			t.Fatalf("canonical form not stable: %q -> %q -> %q", s, sel.String(), again.String())
		}
		labels := map[string]string{}
		consistent := true
		for _, tm := range sel.terms {
			if !tm.not {
				if v, ok := labels[tm.key]; ok && v != tm.value {
					consistent = false
				}
				labels[tm.key] = tm.value
			}
		}
		for _, tm := range sel.terms {
			if tm.not && labels[tm.key] == tm.value {
				consistent = false
			}
		}
		if consistent != sel.Matches(labels) {
			t.Fatalf("%q: Matches(%v) = %v, want %v", s, labels, sel.Matches(labels), consistent)
		}
	})
}
