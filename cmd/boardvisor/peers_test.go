package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/audit"
	"github.com/hashicorp/go-hclog"
)

// A flood of refused connections from one address is audited once, then at most every
// refusalReportEvery with the count of those not recorded one by one; another address
// is recorded on its own.
func TestRefusalReportBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	al, err := audit.Open(path, audit.Who("supervisor"))
	if err != nil {
		t.Fatal(err)
	}
	r := &refusalReport{logger: hclog.NewNullLogger(), audit: al, last: map[string]*refused{}}
	for range 1000 {
		r.refused("127.0.0.2:4000", "too many unauthenticated connections from this address")
	}
	r.refused("127.0.0.3:4000", "not authenticated within 10m0s")
	// The next report of 127.0.0.2, once its period is over, carries the count.
	r.last["127.0.0.2"].at = r.last["127.0.0.2"].at.Add(-refusalReportEvery)
	r.refused("127.0.0.2:4001", "too many unauthenticated connections from this address")
	if err := al.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "127.0.0.2:4000") || !strings.Contains(lines[1], "127.0.0.3:4000") ||
		!strings.Contains(lines[2], "and 999 more from this address not recorded one by one") {
		t.Fatalf("audit records:\n%s", data)
	}
}
