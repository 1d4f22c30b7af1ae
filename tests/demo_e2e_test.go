package tests

import (
	"strings"
	"testing"
)

// `boardvisor demo` (what `make demo` runs) completes and shows the whole dialogue.
func TestDemoRunsToCompletion(t *testing.T) {
	out, err := runCLI(nil, "demo")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	want := []string{"Connecting to exporter...", "Waiting for beforeLease hooks to complete...", "[Hook INFO] Powering on device...",
		"[Hook WARN] USB hub is slow today", "beforeLease hooks completed successfully!", "Connected to device.",
		"Releasing lease...", "afterLease hooks running (press Ctrl+C to disconnect):", "[Hook Output] Saving logs to archive...",
		"afterLease hooks completed.", "is AVAILABLE again."}
	rest := out
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("demo output lacks %q (in order):\n%s", w, out)
		}
		rest = rest[i+len(w):]
	}
}
