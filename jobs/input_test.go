package jobs

import (
	"strings"
	"testing"
)

// What a client puts in a StartJob reaches the hooks' environment: control characters,
// invalid UTF-8 and oversized strings are refused with an error naming the field.
func TestSpecValidateClientInput(t *testing.T) {
	good := spec(hookP(PolicyExit), nil)
	good.Client = "Zoë the tester"
	good.Params = map[string]string{"image": "rpi4-2024.img", "note": "tabs are\u00a0fine as NBSP"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := 0; i <= MaxParams; i++ {
		many[strings.Repeat("k", i+1)] = "v"
	}
	bad := []struct {
		mut  func(*Spec)
		want string
	}{
		{func(s *Spec) { s.Client = "alice\x00" }, `client name "alice\x00" holds a control character (U+0000)`},
		{func(s *Spec) { s.Client = "alice\nbob" }, "client name \"alice\\nbob\" holds a control character (U+000A)"},
		{func(s *Spec) { s.Client = "\x1b]0;owned\x07" }, "(U+001B)"},
		{func(s *Spec) { s.Client = "a\u0085b" }, "(U+0085)"},
		{func(s *Spec) { s.Client = "bad \xff" }, "is not valid UTF-8"},
		{func(s *Spec) { s.Client = strings.Repeat("x", MaxClientBytes+1) }, "client name is 257 bytes long"},
		{func(s *Spec) { s.Params = map[string]string{"im\x00age": "x"} }, "parameter name \"im\\x00age\" holds a control character"},
		{func(s *Spec) { s.Params = map[string]string{"image": "a\x00b"} }, `parameter "image" "a\x00b" holds a control character`},
		{func(s *Spec) { s.Params = map[string]string{"": "x"} }, "a parameter has an empty name"},
		{func(s *Spec) { s.Params = map[string]string{"image": strings.Repeat("x", MaxParamValueBytes+1)} }, "more than 4096"},
		{func(s *Spec) { s.Params = many }, "65 parameters, more than 64"},
	}
	for _, b := range bad {
		s := spec(hookP(PolicyExit), nil)
		b.mut(&s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), b.want) || !strings.HasPrefix(err.Error(), "job "+s.JobID+": ") {
			t.Errorf("err = %v, want %q", err, b.want)
		}
	}
}
