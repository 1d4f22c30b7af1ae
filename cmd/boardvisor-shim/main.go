// Command boardvisor-shim runs one lease hook for the boardvisor daemon. It is the body
// of `boardvisor hook-shim` in a binary of its own: it links only the hook package, so it
// starts in about a tenth of the time the daemon's binary takes to initialise, which is
// most of the cost of a short hook. The daemon uses it when it lies next to its own
// executable and answers --protocol with hook.ShimProtocol; otherwise it re-executes
// itself as `boardvisor hook-shim`. Its flags are those of hook.ShimMain.
package main

import (
	"os"

	"github.com/boardvisor/boardvisor/jobs/hook"
)

func main() { os.Exit(hook.ShimMain(os.Args[1:])) }
