// Package hooktest lets a test binary serve as the hook shim, so that tests of packages
// that run hooks use real shim processes without building the boardvisor binary.
//
// In the test package:
//
//	func TestMain(m *testing.M) { hooktest.Main(m) }
//
// and give the hook.Runner ShimCommand: hooktest.ShimCommand().
package hooktest

import (
	"os"
	"testing"

	"github.com/boardvisor/boardvisor/jobs/hook"
)

// Marker is the environment variable that makes the test binary act as the shim.
const Marker = "BOARDVISOR_TEST_SHIM"

// Main runs the shim when the binary was started as one, and the tests otherwise.
func Main(m *testing.M) {
	if os.Getenv(Marker) == "1" {
		// Neither is passed on to the hook.
		os.Unsetenv(Marker)
		os.Unsetenv("GORACE")
		os.Exit(hook.ShimMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// ShimCommand returns the argv prefix that runs this test binary as the shim.
func ShimCommand() []string {
	exe, err := os.Executable()
	if err != nil {
		panic("hooktest: " + err.Error())
	}
	// With -race a process sleeps 1s at exit unless told otherwise, and the runner waits
	// for the shim's exit.
	return []string{"/usr/bin/env", Marker + "=1", "GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0", exe}
}
