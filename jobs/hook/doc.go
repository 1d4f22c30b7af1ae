// Package hook runs an operator's lease hook (beforeLease, afterLease) under a shim
// that outlives the daemon.
//
// # The shim
//
// The daemon never runs a hook directly. Runner.Start starts
//
//	boardvisor hook-shim --dir SPOOLDIR --timeout T --grace G --max-output BYTES [--pipe]
//	    [--cgroup BASE] [--uid U --gid G --groups G1,G2] [--ready-fd 3] -- COMMAND ARGS...
//
// (ShimMain is the body of that subcommand) in its own session, so a SIGKILL of the
// daemon, or a signal from the daemon's terminal, does not reach it. The shim makes
// itself a child subreaper and starts the hook with stdin /dev/null and stdout and
// stderr a pseudo-terminal whose master side the shim holds and copies to
// SPOOLDIR/output, so the terminal outlives the daemon like the rest of the hook's
// plumbing. The hook leads a new session (and so a new process group) with the terminal
// as its controlling terminal; the terminal keeps the bytes as written (no echo, no
// output processing: "\n" stays "\n"), has a fixed window of TerminalColumns ×
// TerminalRows, and the hook gets TERM=dumb. On a terminal, C stdio and Python write
// each line as it is printed instead of block-buffering it. Spec.Pipe (--pipe) gives the
// hook a plain pipe instead, in a new process group. On a terminal the hook starts with
// SIGHUP ignored: the hangup the kernel sends to the hook's group when its main process
// exits would otherwise race the shim's cleanup of what the hook left behind. The shim holds no descriptor of
// the terminal's slave side once the hook is started: when no process of the hook holds
// one any more, reading the master fails with EIO, which ends the output as a pipe's
// EOF does.
//
// A hook may run as another user (Spec.Credential: the config's runAs): only the hook
// process is started with that credential, the shim keeps the daemon's privileges, so
// the hook cannot signal the shim or the daemon, and cannot read the spool or the state
// directory. Such a hook works in a directory of its own (mode 0700, outside the state
// directory, also its HOME), where its JMP_MOTD_FILE points; the shim copies that file to
// the lease's JMP_MOTD_FILE afterwards if it is a regular file of the hook's user (not a
// link), and removes the directory.
//
// With Runner.CgroupBase set (FindCgroupBase: the config's hookCgroup, or
// boardvisor-hooks in the daemon's own cgroup of the cgroup v2 hierarchy in
// /proc/self/mountinfo), each run gets a cgroup of its own: the shim creates it, records
// its path in SPOOLDIR/cgroup and starts the hook directly in it (clone3 with
// CLONE_INTO_CGROUP). When the hook's run ends the shim writes cgroup.kill, waits
// (bounded) until cgroup.events says "populated 0", and removes it; a daemon that finds a
// shim vanished does the same from SPOOLDIR/cgroup, so nothing a hook started survives,
// not a setsid'd process, not a double fork, not even once the hook killed its own
// shim. Without a writable cgroup v2 the subreaper below remains.
//
// The shim enforces the timeout ladder itself (SIGTERM to the group, grace period,
// SIGKILL), so the ladder holds while the daemon is down. When the hook's main process
// has exited, the shim kills and reaps every descendant still alive, including those
// that escaped the process group with setsid, and only then writes SPOOLDIR/status
// (JSON, atomically renamed into place). A SIGTERM to the shim stops the hook the same
// way.
//
// The output is bounded (Spec.MaxOutput, 64 MiB by default): past the bound the shim
// reads on, discarding, so a hook is never blocked by its output and its spool stays
// within the bound; once the output has ended it writes one line "JMP_WARN: boardvisor:
// output truncated after N bytes (...): B more bytes in L lines dropped". A write to the
// spool that fails (a full disk) drops nothing: the shim stops reading, so the hook
// blocks on its own output (its timeout still applies), retries the write with back-off
// (50ms doubling to 2s) and goes on when it succeeds. Only once every process of the
// hook is gone does a spool that stays unwritable for DefaultDrainTimeout make the
// shim drop what it holds, with the same marker. A hook whose shim dies gets EIO (or,
// on a pipe, EPIPE or SIGPIPE) on its next write.
//
// The spool directory holds:
//
//	output    what the hook wrote, plus lines from the shim prefixed "boardvisor:"
//	status    the outcome, written once every process of the hook is gone
//	shim.log  the shim's own diagnostics
//	cgroup    the path of the run's cgroup, while it exists
//	rundir    the path of the hook's own directory (with a Credential), while it exists
//
// # The daemon side
//
// A Run tails SPOOLDIR/output, splits it into lines with jobs.LineSplitter and hands
// each line, with the spool offset just past it, to a callback. The offset is what the
// daemon journals: after a restart, Runner.Adopt finds the shim again by pid and start
// time (so a reused pid is never mistaken for it) and goes on from that offset, so no
// line is lost or repeated.
//
// A line the hook redraws with carriage returns (a progress bar) is also handed on
// while it is redrawn, as progress lines (Line.Progress): its state when a read of the
// spool ends, if it changed, at most one per ProgressInterval (500ms) per run, with the
// offset of the start of the line; its final state comes as the ordinary line at its
// newline. A tail resumed from a progress line's offset reads the unfinished line again,
// so its ordinary line still comes exactly once.
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
