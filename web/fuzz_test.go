package web

import (
	"testing"
	"time"
)

// A session cookie is attacker input: whatever its value, looking it up never panics
// and never finds a session but the one it names.
func FuzzSessionCookie(f *testing.F) {
	s, _, err := openSessions("", time.Hour, time.Now)
	if err != nil {
		f.Fatal(err)
	}
	sid, _, err := s.create("tok-fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sid)
	f.Add("")
	f.Add("AAAA")
	f.Add(sid[:len(sid)-1] + "A")
	f.Add(sid + "=")
	f.Fuzz(func(t *testing.T, v string) {
		if got := s.get(v); got != nil && v != sid {
			t.Fatalf("cookie %q opens a session", v)
		}
	})
}
