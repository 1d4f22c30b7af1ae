package client

import (
	"bytes"
	"strings"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
)

// A hook's line is untrusted: in the dialogue (shell and release --follow) and in
// `logs`, its control characters are made visible, never sent to the terminal.
func TestHookLinesMadeVisible(t *testing.T) {
	var out bytes.Buffer
	c := &Client{Out: &out}
	c.hookLine(jpb.LogSource_LOG_SOURCE_AFTER_LEASE_HOOK, "INFO", "\x1b]0;owned\x07saving", false)
	if got, want := out.String(), "[Hook Output] ^[]0;owned^Gsaving\n"; got != want {
		t.Errorf("dialogue line %q, want %q", got, want)
	}
	e := &pb.LeaseLogEntry{Body: &pb.LeaseLogEntry_HookLine{HookLine: &pb.LeaseLogHookLine{
		Source: jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, Severity: pb.Severity_SEVERITY_WARN, Text: "\x1b[2Jslow\u009b"}}}
	if got := FormatLogEntry(e); strings.ContainsAny(got, "\x1b\u009b") || !strings.HasSuffix(got, "BEFORE_LEASE_HOOK WARN  ^[[2Jslow\\u009b") {
		t.Errorf("logs line %q", got)
	}
}
