package hook_test

import (
	"testing"

	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
)

// The hooks of these tests run under the real shim: this test binary (see hooktest).
func TestMain(m *testing.M) { hooktest.Main(m) }
