package jobs

import (
	"strings"
	"testing"
)

func TestNamesAndText(t *testing.T) {
	for _, s := range []string{"rpi-4", "b0001", "lab.a_1", strings.Repeat("x", 64)} {
		if !ValidName(s) {
			t.Errorf("ValidName(%q) = false", s)
		}
	}
	for _, s := range []string{"", ".", "..", "a b", "a/b", "\x1b[31mred", "bo\nard", strings.Repeat("x", 65), "é"} {
		if ValidName(s) {
			t.Errorf("ValidName(%q) = true", s)
		}
	}
	for _, s := range []string{"device", "k8s.io/arch", "a_b-c"} {
		if !ValidLabelKey(s) {
			t.Errorf("ValidLabelKey(%q) = false", s)
		}
	}
	for _, s := range []string{"", "a b", "a=b", strings.Repeat("k", 64), "\x00"} {
		if ValidLabelKey(s) {
			t.Errorf("ValidLabelKey(%q) = true", s)
		}
	}
	for _, s := range []string{"", "rpi4", "Raspberry Pi 4 (8 GB)", "ünïcode"} {
		if err := CheckLabelValue(s); err != nil {
			t.Errorf("CheckLabelValue(%q) = %v", s, err)
		}
	}
	for s, want := range map[string]string{
		"a,b":                    "comma",
		"x\x1b]0;owned\x07":      "control character U+001B at byte 1",
		"line\nbreak":            "U+000A",
		"nul\x00":                "U+0000",
		"del\x7f":                "U+007F",
		"c1\u0085":               "U+0085",
		"bad\xff":                "not valid UTF-8 (byte 3)",
		strings.Repeat("v", 254): "longer than 253 bytes",
	} {
		if err := CheckLabelValue(s); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckLabelValue(%q) = %v, want %q", s, err, want)
		}
	}
	if err := CheckText("tab\there", 100); err == nil {
		t.Error("a tab passed CheckText")
	}
	if err := CheckText(string([]rune{0xfffd}), 100); err != nil {
		t.Errorf("a real U+FFFD is text: %v", err)
	}
}
