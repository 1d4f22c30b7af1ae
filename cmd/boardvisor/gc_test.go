package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"testing"
)

// The supervisor's runtime settings: the GC target is SupervisorGOGC unless GOGC says
// otherwise, and it runs at least SupervisorMinProcs Ps unless GOMAXPROCS does.
func TestSupervisorRuntimeSettings(t *testing.T) {
	cases := []struct {
		env   string
		set   func(int) int // sets the runtime value and returns the one before
		apply func()
		want  int // without env
		given int // env's value, which apply must leave as it is
	}{
		{"GOGC", debug.SetGCPercent, supervisorGC, SupervisorGOGC, 100},
		{"GOMAXPROCS", runtime.GOMAXPROCS, supervisorProcs, SupervisorMinProcs, 2},
	}
	for _, c := range cases {
		t.Run(c.env, func(t *testing.T) {
			was := c.set(c.given)
			t.Cleanup(func() { c.set(was) })
			t.Setenv(c.env, "") // restored after the test
			os.Unsetenv(c.env)
			c.apply()
			if got := c.set(c.given); got != c.want {
				t.Errorf("without %s: %d, want %d", c.env, got, c.want)
			}
			t.Setenv(c.env, strconv.Itoa(c.given))
			c.apply()
			if got := c.set(c.given); got != c.given {
				t.Errorf("with %s=%d: %d, want it left at %d", c.env, c.given, got, c.given)
			}
		})
	}
}
