package jobs

import (
	"fmt"
	"unicode/utf8"
)

// Bounds of what a client may put in a StartJob: its name and the job's parameters
// reach the hooks' environment, where a control character, or a string the kernel
// refuses (E2BIG), would make the hook fail to start and, under onFailure: exit,
// quarantine the board for a client's typo.
const (
	MaxClientBytes     = 256
	MaxParams          = 64
	MaxParamKeyBytes   = 128
	MaxParamValueBytes = 4096
)

// checkInput checks the client-given fields of a spec: the client name and the
// parameters must be valid UTF-8 without control characters, within the bounds above.
func (s Spec) checkInput() error {
	if err := checkText("client name", s.Client, MaxClientBytes); err != nil {
		return err
	}
	if len(s.Params) > MaxParams {
		return fmt.Errorf("%d parameters, more than %d", len(s.Params), MaxParams)
	}
	for k, v := range s.Params {
		if k == "" {
			return fmt.Errorf("a parameter has an empty name")
		}
		if err := checkText("parameter name", k, MaxParamKeyBytes); err != nil {
			return err
		}
		if err := checkText(fmt.Sprintf("parameter %q", k), v, MaxParamValueBytes); err != nil {
			return err
		}
	}
	return nil
}

// checkText refuses a string that is longer than max bytes, not valid UTF-8, or holds a
// control character (C0, DEL or C1: NUL, newline, escape, ...).
func checkText(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes long, more than %d", what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for _, r := range s {
		if r < 0x20 || r >= 0x7f && r < 0xa0 {
			return fmt.Errorf("%s %q holds a control character (U+%04X); use printable text", what, s, r)
		}
	}
	return nil
}
