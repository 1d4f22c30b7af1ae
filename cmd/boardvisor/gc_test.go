package main

import (
	"os"
	"runtime/debug"
	"testing"
)

// The supervisor collects garbage at SupervisorGOGC unless GOGC says otherwise.
func TestSupervisorGC(t *testing.T) {
	was := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(was) })
	if v, set := os.LookupEnv("GOGC"); set {
		t.Cleanup(func() { os.Setenv("GOGC", v) })
	} else {
		t.Cleanup(func() { os.Unsetenv("GOGC") })
	}
	os.Unsetenv("GOGC")
	supervisorGC()
	if got := debug.SetGCPercent(100); got != SupervisorGOGC {
		t.Errorf("without GOGC: GC percent %d, want %d", got, SupervisorGOGC)
	}
	os.Setenv("GOGC", "100")
	supervisorGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("with GOGC=100: GC percent %d, want it left at 100", got)
	}
}
