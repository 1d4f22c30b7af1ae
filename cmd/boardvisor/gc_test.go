package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
)

// The supervisor collects garbage at SupervisorGOGC unless GOGC says otherwise.
func TestSupervisorGC(t *testing.T) {
	was := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(was) })
	t.Setenv("GOGC", "") // restored after the test
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

// The supervisor runs with at least SupervisorMinProcs Ps unless GOMAXPROCS says
// otherwise.
func TestSupervisorProcs(t *testing.T) {
	was := runtime.GOMAXPROCS(2)
	t.Cleanup(func() { runtime.GOMAXPROCS(was) })
	t.Setenv("GOMAXPROCS", "") // restored after the test
	os.Unsetenv("GOMAXPROCS")
	supervisorProcs()
	if got := runtime.GOMAXPROCS(2); got != SupervisorMinProcs {
		t.Errorf("without GOMAXPROCS: %d Ps, want %d", got, SupervisorMinProcs)
	}
	os.Setenv("GOMAXPROCS", "2")
	supervisorProcs()
	if got := runtime.GOMAXPROCS(0); got != 2 {
		t.Errorf("with GOMAXPROCS=2: %d Ps, want it left at 2", got)
	}
}
