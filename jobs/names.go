package jobs

import (
	"fmt"
	"unicode/utf8"
)

// Rules for the names and labels a supervisor announces and the text a client sends,
// shared by the supervisor's config and the coordinator, which checks what supervisors
// and clients send it with the same rules.

// MaxNameLen bounds board names and supervisor IDs.
const MaxNameLen = 64

// MaxLabelKeyLen bounds label keys.
const MaxLabelKeyLen = 63

// MaxLabelValueLen bounds label values.
const MaxLabelValueLen = 253

// ValidName reports whether s may name a board or a supervisor: 1 to 64 of A-Z a-z 0-9
// . _ - (names are used as directory names and printed in tables), and not "." or "..".
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > MaxNameLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidLabelKey reports whether s may be a label key: 1 to 63 of A-Z a-z 0-9 . _ / -.
func ValidLabelKey(s string) bool {
	if len(s) == 0 || len(s) > MaxLabelKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '/' || c == '-') {
			return false
		}
	}
	return true
}

// CheckLabelValue returns why s may not be a label value (nil if it may): at most 253
// bytes of UTF-8 text without a comma (selectors separate terms with commas) and without
// control characters.
func CheckLabelValue(s string) error {
	if len(s) > MaxLabelValueLen {
		return fmt.Errorf("longer than %d bytes", MaxLabelValueLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return fmt.Errorf("contains a comma")
		}
	}
	return CheckText(s, MaxLabelValueLen)
}

// CheckText returns why s may not be free text from an untrusted party (a client name,
// a reason, a job parameter): nil if it is valid UTF-8 of at most max bytes without
// control characters (C0, DEL, C1: a NUL, a line break or an escape sequence would reach
// hooks' environments, logs and other people's terminals).
func CheckText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("longer than %d bytes", max)
	}
	for i, r := range s {
		switch {
		case r == utf8.RuneError:
			if _, n := utf8.DecodeRuneInString(s[i:]); n <= 1 {
				return fmt.Errorf("is not valid UTF-8 (byte %d)", i)
			}
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f):
			return fmt.Errorf("has the control character %U at byte %d", r, i)
		}
	}
	return nil
}
