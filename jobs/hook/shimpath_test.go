package hook

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The daemon runs hooks under boardvisor-shim only if it lies next to the daemon's
// executable and speaks the daemon's protocol; otherwise under its own hook-shim
// subcommand, saying why.
func TestShimCommandNextTo(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "boardvisor")
	shim := filepath.Join(dir, ShimBinary)
	script := func(body string) {
		t.Helper()
		if err := os.WriteFile(shim, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, body string // body "" means no shim binary
		want       []string
		why        string
	}{
		{"no shim binary", "", []string{exe, "hook-shim"}, "no boardvisor-shim next to"},
		{"shim of another build", `echo boardvisor-shim/0`, []string{exe, "hook-shim"}, `speaks "boardvisor-shim/0"`},
		{"shim that fails", `exit 2`, []string{exe, "hook-shim"}, "--protocol failed"},
		{"shim that answers", `[ "$1" = --protocol ] && echo ` + ShimProtocol, []string{shim}, "hooks run under " + shim},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(shim)
			if c.body != "" {
				script(c.body)
			}
			argv, why := ShimCommandNextTo(exe)
			if strings.Join(argv, " ") != strings.Join(c.want, " ") || !strings.Contains(why, c.why) {
				t.Fatalf("ShimCommandNextTo = %q, %q; want %q and a reason with %q", argv, why, c.want, c.why)
			}
		})
	}
}
