package client

import "testing"

// Visible leaves printable text alone and shows every C0 and C1 control, DEL and byte
// that is not UTF-8 in a visible form; its output holds none of them, so that applying
// it twice changes nothing.
func TestVisible(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"rpi4-01 ünïcode ✓", "rpi4-01 ünïcode ✓"},
		{"a\x1b]0;owned\x07b", "a^[]0;owned^Gb"},
		{"row\nforged", "row^Jforged"},
		{"cr\rover", "cr^Mover"},
		{"tab\there", "tab here"},
		{"del\x7f", "del^?"},
		{"csi\u009b2J nel\u0085", `csi\u009b2J nel\u0085`},
		{"lone \x9b and \xff", `lone \x9b and \xff`},
		{"nul\x00", "nul^@"},
	} {
		got := Visible(tc.in)
		if got != tc.want {
			t.Errorf("Visible(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if again := Visible(got); again != got {
			t.Errorf("Visible(Visible(%q)) = %q, want %q", tc.in, again, got)
		}
	}
}
