package config

import (
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every problem it reports is one line
// naming the file, and that what it accepts resolves to usable boards.
func FuzzParse(f *testing.F) {
	f.Add([]byte("stateDir: /bv\nboards:\n  - name: b1\n    drivers: {virtual: {bootDelay: 1s}}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a config and an error: %v", err)
			}
			for _, l := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(l, "fuzz.yaml:") {
					t.Fatalf("problem does not start with the file name: %q", l)
				}
			}
			problemLines(t, err)
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("a parsed config does not validate again: %v", err)
		}
		names := map[string]bool{}
		for _, r := range c.Resolve() {
			if r.Name == "" || names[r.Name] {
				t.Fatalf("board name %q empty or repeated", r.Name)
			}
			names[r.Name] = true
			if r.LeaseDuration <= 0 || r.Queue < 0 || r.Queue > MaxQueue {
				t.Fatalf("board %q: lease %s queue %d", r.Name, r.LeaseDuration, r.Queue)
			}
			for _, h := range []*ResolvedHook{r.Before, r.After} {
				if h == nil {
					continue
				}
				if (h.Script == "") == (h.Exec == "") || h.Policy.Timeout <= 0 {
					t.Fatalf("board %q: hook %+v", r.Name, h)
				}
			}
			if r.Serial != nil && (r.Virtual != nil || r.Serial.Baud == 0 || r.Serial.DataBits == 0 ||
				r.Serial.StopBits == 0 || r.Serial.Parity == "") {
				t.Fatalf("board %q: serial %+v virtual %+v", r.Name, r.Serial, r.Virtual)
			}
			if r.Power != nil && r.Power.Timeout <= 0 {
				t.Fatalf("board %q: power %+v", r.Name, r.Power)
			}
		}
	})
}
