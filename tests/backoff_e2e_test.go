package tests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A coordinator that refuses the supervisor's token: the supervisor (the real daemon)
// retries RefusedBackoff apart (minutes by default; 2s configured here), and each
// attempt's log line names the config key to fix. The same for a token that belongs to
// another supervisor ID.
func TestRefusedSupervisorBacksOffAndNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "supervisor-tokens")
	if err := os.WriteFile(tokens, []byte("lab-good good-token-5d1f0e9a7c3b2468\nlab-other other-token-0b7e3a9c5d1f2468\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	coordAddr := freeAddr(t)
	coord := startCoordinator(t, coordAddr, filepath.Join(dir, "coord"), "--supervisor-tokens", tokens)
	for _, tc := range []struct {
		id, token, key, coordSays string
	}{
		{"lab-bad", "wrong-token-9a8b7c6d5e4f3210", "coordinator.tokenFile", "supervisor refused: bad token"},
		{"lab-good", "other-token-0b7e3a9c5d1f2468", "coordinator.supervisorId", "token belongs to another supervisor"},
	} {
		t.Run(tc.key, func(t *testing.T) {
			tokenFile := filepath.Join(dir, tc.id+".token")
			if err := os.WriteFile(tokenFile, []byte(tc.token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := ceLabConfig(t, dir, tc.id, coordAddr, "", "", boardSpec{tc.id + "-1", "device: rpi4"})
			ceWithTokenFile(t, cfg, tokenFile)
			b, _ := os.ReadFile(cfg)
			// Short maxima, so that the test sees several attempts.
			body := strings.Replace(string(b), "supervisorId:", "refusedBackoff: 2s, reconnectMaxBackoff: 500ms, supervisorId:", 1)
			if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			before := coord.ceCountLines(tc.coordSays)
			sup := startSupervisor(t, "supervisor "+tc.id, cfg)
			time.Sleep(7 * time.Second) // counting attempts over a while: nothing to await
			sup.ceTerminate()
			out := sup.output()
			lineRe := regexp.MustCompile(`(?m)^(\S+) \[ERROR\] .*config_key=` + regexp.QuoteMeta(tc.key) + `.*$`)
			lines := lineRe.FindAllStringSubmatch(out, -1)
			attempts := coord.ceCountLines(tc.coordSays) - before
			// Waits of 1-2s (jittered) over 7s: 4 to 8 attempts; without the back-off of a
			// refusal it would be dozens (the ordinary one starts at 100ms).
			if attempts < 3 || attempts > 9 {
				t.Errorf("%d attempts in 7s with refusedBackoff 2s:\n%s", attempts, out)
			}
			if len(lines) < attempts-1 || len(lines) > attempts {
				t.Errorf("%d attempts, %d log lines naming %s:\n%s", attempts, len(lines), tc.key, out)
			}
			var prev time.Time
			for _, l := range lines {
				at, err := time.Parse("2006-01-02T15:04:05.000Z0700", l[1])
				if err != nil {
					t.Fatal(err)
				}
				if !prev.IsZero() && at.Sub(prev) < 900*time.Millisecond {
					t.Errorf("attempts %s apart, want at least 1s (half of refusedBackoff):\n%s", at.Sub(prev), out)
				}
				prev = at
			}
			if strings.Contains(out, tc.token) {
				t.Error("the token is in the supervisor's log")
			}
		})
	}
}
