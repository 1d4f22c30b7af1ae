package board_test

import (
	"testing"

	"github.com/boardvisor/boardvisor/jobs/hook/hooktest"
)

// A hook of these tests runs under the real shim: this test binary (see hooktest).
func TestMain(m *testing.M) { hooktest.Main(m) }
