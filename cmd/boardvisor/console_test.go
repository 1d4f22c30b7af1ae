package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// What is typed goes to the console as it comes, each read at once and in order: a key
// is not held until a line is complete. Off a terminal a newline is Enter (a carriage
// return); on a terminal Ctrl-] leaves and what follows it is not sent.
func TestTypeIntoSendsEachReadAtOnce(t *testing.T) {
	r, w := io.Pipe()
	got := make(chan string, 16)
	done := make(chan error, 1)
	go func() {
		done <- typeInto(context.Background(), r, false, func(p []byte) error { got <- string(p); return nil })
	}()
	for _, k := range []struct{ in, want string }{{"a", "a"}, {"b", "b"}, {"ls\n", "ls\r"}, {"\x03", "\x03"}} {
		if _, err := io.WriteString(w, k.in); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != k.want {
				t.Fatalf("typed %q, the console got %q; want %q", k.in, s, k.want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("typed %q: nothing sent before the next key", k.in)
		}
	}
	w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var sent []string
	err := typeInto(context.Background(), strings.NewReader("ab\x1dcd"), true, func(p []byte) error { sent = append(sent, string(p)); return nil })
	if err != nil || strings.Join(sent, "") != "ab" {
		t.Fatalf("raw: sent %q (%v), want \"ab\" and then leave at Ctrl-]", sent, err)
	}
}
