// Package hook runs an operator's lease hook (beforeLease, afterLease) under a shim
// that outlives the daemon.
//
// # The shim
//
// The daemon never runs a hook directly. Runner.Start starts
//
//	boardvisor hook-shim --dir SPOOLDIR --timeout T --grace G --max-output BYTES [--ready-fd 3] -- COMMAND ARGS...
//
// (ShimMain is the body of that subcommand) in its own session, so a SIGKILL of the
// daemon, or a signal from the daemon's terminal, does not reach it. The shim makes
// itself a child subreaper, starts the hook in its own process group with stdin
// /dev/null and stdout and stderr a pipe that it copies to SPOOLDIR/output, and enforces
// the timeout ladder itself (SIGTERM to the group, grace period, SIGKILL), so the ladder
// holds while the daemon is down. When the hook's main process has exited, the shim
// kills and reaps every descendant still alive, including those that escaped the
// process group with setsid, and only then writes SPOOLDIR/status (JSON, atomically
// renamed into place). A SIGTERM to the shim stops the hook the same way.
//
// The output is bounded (Spec.MaxOutput, 64 MiB by default): past the bound, or when
// the spool cannot be written (a full disk), the shim writes one line
// "JMP_WARN: boardvisor: output truncated after N bytes" and reads on, discarding, so a
// hook is never blocked by its output and its spool stays within the bound. A hook whose shim dies
// gets EPIPE (or SIGPIPE) on its next write.
//
// The spool directory holds:
//
//	output    what the hook wrote, plus lines from the shim prefixed "boardvisor:"
//	status    the outcome, written once every process of the hook is gone
//	shim.log  the shim's own diagnostics
//
// # The daemon side
//
// A Run tails SPOOLDIR/output, splits it into lines with jobs.LineSplitter and hands
// each line, with the spool offset just past it, to a callback. The offset is what the
// daemon journals: after a restart, Runner.Adopt finds the shim again by pid and start
// time (so a reused pid is never mistaken for it) and goes on from that offset, so no
// line is lost or repeated.
//
// A run wakes up to read new output through inotify (one instance shared by all the
// runs of a Runner, so many hooks at once stay within the kernel's per-user limit on
// instances); a line reaches the callback within about a millisecond of its newline.
// If inotify cannot be used, the run reads the output every 10ms instead. An adopted
// run learns that its shim (not the daemon's child) has exited by polling a pidfd
// through Go's poller; without pidfd support it checks /proc every 100ms.
//
// Every goroutine a Run starts ends when its Done channel is closed (the goroutine
// reading the shared inotify instance ends with the last run), except the one reaping
// a shim after Run.Detach.
package hook
