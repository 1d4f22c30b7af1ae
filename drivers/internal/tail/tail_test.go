package tail

import (
	"strings"
	"testing"
)

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		max    int
		writes []string
		want   string
	}{
		{16, nil, ""},
		{16, []string{" \n\r\n "}, ""},
		{16, []string{"a\n", "b\r\n\n c \n"}, "a | b | c"},
		{8, []string{"0123456789"}, "...23456789"},
		{8, []string{"0123", "456789ab"}, "...456789ab"},
		{8, []string{"01234", "567"}, "01234567"},
		{8, []string{"a\nb\nc\nd\n"}, "...c | d"},
		{16, []string{"bad \xff utf8"}, "bad \uFFFD utf8"},
	} {
		b := New(tc.max)
		for _, w := range tc.writes {
			if n, err := b.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if got := b.Line(); got != tc.want {
			t.Errorf("max %d, writes %q: Line() = %q, want %q", tc.max, tc.writes, got, tc.want)
		}
		if strings.ContainsAny(b.Line(), "\r\n") {
			t.Errorf("Line() has a line break")
		}
	}
}
