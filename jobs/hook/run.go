package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// Defaults for a Spec's Timeout and Grace.
const (
	DefaultTimeout = 120 * time.Second
	DefaultGrace   = 5 * time.Second
)

const (
	// pollInterval is how often a run reads its output when inotify is unavailable.
	pollInterval = 10 * time.Millisecond
	// aliveCheckInterval is how often an adopted run checks that its shim is still
	// alive when pidfd is unavailable.
	aliveCheckInterval = 100 * time.Millisecond
	// readyTimeout bounds how long Start waits for the shim to report that it has
	// started the hook.
	readyTimeout = 10 * time.Second
	// defaultPath is the hook's PATH when the daemon has none.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// ProgressInterval is the least time between two progress lines of one run (so at
// most two a second): the state of a redrawn line is passed on when it changes, at
// most this often; the final state arrives as the ordinary line at its newline.
const ProgressInterval = 500 * time.Millisecond

// ErrShimVanished is the Result.Err (wrapped) of a run whose shim is gone without having
// written a status file: it was killed, or it crashed, or the pid and start time given
// to Adopt name no live shim and the spool holds no status.
var ErrShimVanished = errors.New("hook shim vanished without writing a status")

// ErrDetached is the Result.Err of a run that was detached (see Run.Detach) before its
// shim exited.
var ErrDetached = errors.New("hook run detached before the shim exited")

// Spec says which hook to run and how.
type Spec struct {
	// Name names the hook in errors and logs, e.g. "beforeLease".
	Name string
	// Script is inline shell, run with /bin/sh -c. Exactly one of Script and Exec is set.
	Script string
	// Exec is the path of a program, run directly without arguments. A relative path is
	// taken from WorkDir.
	Exec string
	// Timeout is how long the hook may run before the shim sends SIGTERM to its process
	// group (DefaultTimeout if zero). Grace is the time between that SIGTERM and the
	// SIGKILL (DefaultGrace if zero).
	Timeout, Grace time.Duration
	// Env is added to the hook's environment, which otherwise holds only the daemon's
	// PATH and HOME. See Env for the lease variables.
	Env []string
	// Dir is the spool directory of this run: created with mode 0700 if missing, and it
	// must be empty. It holds the output and status files and is what Adopt is given
	// after a restart.
	Dir string
	// WorkDir is the hook's working directory; empty means the daemon's.
	WorkDir string
	// MaxOutput bounds the bytes of the hook's output kept in the spool
	// (DefaultMaxOutput if zero or negative). Past it the shim discards the rest (the
	// hook runs on undisturbed) and adds, at the end, one line "JMP_WARN: boardvisor:
	// output truncated after N bytes (...): B more bytes in L lines dropped".
	MaxOutput int64
	// Pipe gives the hook a plain pipe as stdout and stderr. By default they are a
	// pseudo-terminal (its controlling terminal, TERM=dumb, TerminalColumns ×
	// TerminalRows, no echo, no output processing), so that programs that block-buffer
	// into a pipe (C stdio, Python) write each line as they print it.
	Pipe bool
	// Credential, if set, is the user the hook runs as (the shim keeps the daemon's
	// privileges). The hook then works in a directory of its own (mode 0700, outside
	// the state directory, removed when the run ends), which is its HOME and working
	// directory (WorkDir is then only the shim's); its JMP_MOTD_FILE is a file there,
	// copied to the lease's JMP_MOTD_FILE when the hook is over.
	Credential *Credential
}

// Runner starts hook shims and re-adopts them after a restart. Its zero value is ready
// to use; it must not be copied after first use. It is safe for concurrent use.
type Runner struct {
	// ShimCommand is the argv prefix that runs the shim, e.g.
	// {"/usr/bin/boardvisor", "hook-shim"}; the shim's flags, "--" and the hook's
	// command follow it. Empty means DefaultShimCommand.
	ShimCommand []string
	// Logger receives the runner's own diagnostics; nil means none.
	Logger hclog.Logger
	// CgroupBase, if set, is a cgroup v2 directory (see FindCgroupBase) under which each
	// run gets a cgroup of its own, killed when the run ends. Empty: runs have none, and
	// the shim's subreaper alone collects what a hook leaves (which a process in a new
	// session escapes if the shim itself is killed).
	CgroupBase string

	// noInotify and noPidfd make runs use the fallbacks (for their tests).
	noInotify, noPidfd bool

	wmu sync.Mutex
	w   *watcher // shared inotify instance, nil while no run is tailing

	shimOnce sync.Once
	shimArgv []string // DefaultShimCommand's answer, found once
	shimErr  error
}

// ShimBinary is the name of the shim's own binary (cmd/boardvisor-shim), looked for next
// to the daemon's executable.
const ShimBinary = "boardvisor-shim"

// DefaultShimCommand returns the shim command a Runner without ShimCommand uses:
// ShimBinary in the directory of this executable if it is there and answers --protocol
// with ShimProtocol (it starts several times faster than the daemon's binary), else
// this executable's own hook-shim subcommand. why says which and, for the fallback,
// why; it is meant for the daemon's log.
func DefaultShimCommand() (argv []string, why string, err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("find the shim executable: %w", err)
	}
	argv, why = ShimCommandNextTo(exe)
	return argv, why, nil
}

// ShimCommandNextTo is DefaultShimCommand for the daemon executable exe.
func ShimCommandNextTo(exe string) (argv []string, why string) {
	fallback := []string{exe, "hook-shim"}
	bin := filepath.Join(filepath.Dir(exe), ShimBinary)
	if _, err := os.Stat(bin); err != nil {
		return fallback, fmt.Sprintf("no %s next to %s: hooks run under %s hook-shim, which starts slower", ShimBinary, exe, exe)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--protocol").Output()
	switch got := strings.TrimSpace(string(out)); {
	case err != nil:
		return fallback, fmt.Sprintf("%s --protocol failed (%v): hooks run under %s hook-shim", bin, err, exe)
	case got != ShimProtocol:
		return fallback, fmt.Sprintf("%s speaks %q, not %q (is it from another build?): hooks run under %s hook-shim", bin, got, ShimProtocol, exe)
	}
	return []string{bin}, "hooks run under " + bin
}

// shimCommand returns the argv prefix that runs the shim.
func (r *Runner) shimCommand() ([]string, error) {
	if len(r.ShimCommand) > 0 {
		return r.ShimCommand, nil
	}
	r.shimOnce.Do(func() {
		var why string
		r.shimArgv, why, r.shimErr = DefaultShimCommand()
		if r.Logger != nil && why != "" {
			r.Logger.Info(why)
		}
	})
	return r.shimArgv, r.shimErr
}

// Line is one line of a hook's output.
type Line struct {
	jobs.HookLine
	// Offset is where a tail resumed with Adopt must start so that no ordinary line is
	// lost or repeated: for an ordinary line the byte offset in the spool output just
	// past it, for a progress line (Progress set) the offset of the start of the line
	// it shows the state of (the Offset of the ordinary line before it). A tail resumed
	// from a progress line's Offset reads the unfinished line again: its ordinary line
	// comes once, and some of its progress states may be shown again.
	Offset int64
}

// Result is how a hook run ended.
type Result struct {
	// ExitCode is the hook's exit code: -1 if it was killed by a signal or its outcome
	// is unknown, 127 if its command does not exist, 126 if it cannot be run.
	ExitCode int
	// Signal names the signal that killed the hook's main process ("SIGTERM"), or is
	// empty.
	Signal string
	// TimedOut reports that the hook ran into its timeout and was terminated.
	TimedOut bool
	// Stopped reports that the hook was terminated by Run.Stop.
	Stopped bool
	// Truncated reports that not all of the hook's output was kept: it wrote more than
	// Spec.MaxOutput, or the spool could not be written. It does not make a run fail.
	Truncated bool
	// Err is set when the hook could not be run, when the shim vanished without a status
	// (errors.Is(Err, ErrShimVanished)) or when the run was detached (ErrDetached). A
	// hook that ran and failed has Err nil and a non-zero ExitCode or a Signal.
	Err error
	// Started and Ended are when the shim started the hook and saw its main process
	// exit. They are zero when unknown.
	Started, Ended time.Time
}

// OK reports whether the hook succeeded: it exited 0, within its timeout, and nothing
// went wrong running it.
func (r Result) OK() bool {
	return r.ExitCode == 0 && r.Signal == "" && !r.TimedOut && r.Err == nil
}

// Run is one hook run being watched: it tails the output and reports the result. Its
// goroutines end when Done is closed, except, after Detach, the one waiting for the
// exit of a shim started by this process (see Detach).
type Run struct {
	r         *Runner
	label     string // for errors: the hook's name, or its spool dir
	dir       string
	pid       int
	startTime uint64
	onLines   func([]Line)
	log       hclog.Logger

	cmd       *exec.Cmd        // Start: the shim is our child
	waitState *os.ProcessState // Start: set before exited is closed
	exited    chan struct{}    // closed once the shim has exited

	mu         sync.Mutex
	pidfd      *os.File      // Adopt: a pidfd of the shim, nil without pidfd support
	waiterDone chan struct{} // Adopt with a live shim: closed when waitAdopted ends

	stopOnce   sync.Once
	detachOnce sync.Once
	detach     chan struct{}
	done       chan struct{}
	result     Result

	// Owned by the loop goroutine.
	out       *os.File
	offset    int64
	lineStart int64 // offset of the start of the current, unfinished line
	buf       []byte
	split     jobs.LineSplitter
	pending   []jobs.HookLine // lines of the current, unfinished output line
	batch     []Line          // lines completed by the current read, passed on at its end
	progSent  bool            // a progress line of the current line was passed on: lastProg
	lastProg  jobs.HookLine
	progAt    time.Time   // when the last progress line was passed on
	progT     *time.Timer // armed while a newer progress state waits for its turn
	progC     <-chan time.Time
}

// Pid returns the process id of the shim.
func (run *Run) Pid() int { return run.pid }

// StartTime returns the shim's start time (field 22 of /proc/PID/stat). Journal it with
// the pid: Adopt checks both, so a reused pid is never taken for the shim.
func (run *Run) StartTime() uint64 { return run.startTime }

// Dir returns the run's spool directory (absolute).
func (run *Run) Dir() string { return run.dir }

// Done returns a channel closed when the run is over: the shim has exited, every
// output line has been passed to onLines, and Result is ready.
func (run *Run) Done() <-chan struct{} { return run.done }

// Exited returns a channel closed once the shim has exited: the hook is over and its
// status is written (or the shim vanished), although output may still be on its way to
// onLines. Done follows once every line was passed on.
func (run *Run) Exited() <-chan struct{} { return run.exited }

// Result waits for Done and returns how the run ended.
func (run *Run) Result() Result {
	<-run.done
	return run.result
}

// Stop asks the shim to stop the hook: it sends SIGTERM to the hook's process group,
// SIGKILL after the grace period, kills whatever the hook left behind and reports
// Stopped. Stop does not wait (use Done); calling it again, or after Done, does nothing.
func (run *Run) Stop() {
	run.stopOnce.Do(func() {
		select {
		case <-run.done:
			return
		default:
		}
		var err error
		run.mu.Lock()
		switch {
		case run.cmd != nil:
			err = run.cmd.Process.Signal(syscall.SIGTERM)
		case run.pidfd != nil:
			var rc syscall.RawConn
			if rc, err = run.pidfd.SyscallConn(); err == nil {
				cerr := rc.Control(func(fd uintptr) {
					err = unix.PidfdSendSignal(int(fd), unix.SIGTERM, nil, 0)
				})
				if cerr != nil {
					err = cerr
				}
			}
		default:
			if sameProcess(run.pid, run.startTime) {
				err = unix.Kill(run.pid, unix.SIGTERM)
			}
		}
		run.mu.Unlock()
		if err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, unix.ESRCH) {
			run.log.Warn("cannot signal the hook shim", "error", err)
		}
	})
}

// Detach stops watching the run without touching the shim, which goes on running the
// hook and writes its status as usual. It is what a daemon crash (or a restart) looks
// like to the shim; the run can be picked up again with Runner.Adopt, from the Offset of
// the last line seen. Detach returns once Done is closed; Result then has ErrDetached
// unless the shim had exited first. It must not be called from onLines.
//
// A shim started by this process is still its child, so one goroutine stays behind to
// reap it when it exits; it does nothing else.
func (run *Run) Detach() {
	run.detachOnce.Do(func() { close(run.detach) })
	<-run.done
}

// Start starts the shim running spec's hook and returns at once when the hook has been
// started (a hook that cannot be run is reported by Result, not here). onLines, if not
// nil, is called with the lines of output, in order, from one goroutine: once per read
// of the spool (up to 64 KiB), with every line that read completed (so a hook printing
// flat out is passed on in chunks, a slow one line by line as each is complete); the
// last line is passed at the end even without a newline. A line the hook redraws with
// carriage returns is passed on, while it is redrawn, as progress lines (its state when
// a read ends, when it changed, at most one per ProgressInterval), then as the ordinary
// line at its newline. The slice is the callee's to keep. onLines may block: the tail
// waits for it (that is how a consumer holds the hook's output back in the spool while
// it cannot keep up). All calls happen before Done is closed; Detach does not interrupt
// a call, so a blocking onLines must be released by its owner before Detach.
func (r *Runner) Start(spec Spec, onLines func([]Line)) (*Run, error) {
	name := spec.Name
	if name == "" {
		name = "hook"
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("hook %s: "+format, append([]any{name}, args...)...)
	}
	var command []string
	switch {
	case spec.Script != "" && spec.Exec != "":
		return nil, fail("both script and exec are set")
	case spec.Script != "":
		command = []string{"/bin/sh", "-c", spec.Script}
	case spec.Exec != "":
		command = []string{spec.Exec}
	default:
		return nil, fail("neither script nor exec is set")
	}
	timeout, grace := spec.Timeout, spec.Grace
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if grace <= 0 {
		grace = DefaultGrace
	}
	if spec.Dir == "" {
		return nil, fail("no spool directory")
	}
	dir, err := filepath.Abs(spec.Dir)
	if err != nil {
		return nil, fail("spool directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fail("create spool directory: %w", err)
	}
	if empty, err := isEmptyDir(dir); err != nil {
		return nil, fail("spool directory: %w", err)
	} else if !empty {
		return nil, fail("spool directory %s is not empty", dir)
	}
	// Create the output file now, so the tail can watch it from the start.
	out, err := os.OpenFile(filepath.Join(dir, outputFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fail("create output file: %w", err)
	}
	out.Close()

	shim, err := r.shimCommand()
	if err != nil {
		return nil, fail("%w", err)
	}
	argv := append([]string(nil), shim...)
	maxOutput := spec.MaxOutput
	if maxOutput <= 0 {
		maxOutput = DefaultMaxOutput
	}
	argv = append(argv, "--dir", dir, "--timeout", timeout.String(), "--grace", grace.String(),
		"--max-output", strconv.FormatInt(maxOutput, 10), "--ready-fd", "3")
	if spec.Pipe {
		argv = append(argv, "--pipe")
	}
	if r.CgroupBase != "" {
		argv = append(argv, "--cgroup", r.CgroupBase)
	}
	if spec.Credential != nil {
		argv = append(argv, spec.Credential.args()...)
	}
	argv = append(argv, "--")
	argv = append(argv, command...)

	logf, err := os.OpenFile(filepath.Join(dir, shimLogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fail("create shim log: %w", err)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, fail("start shim: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = hookEnv(!spec.Pipe, spec.Env)
	cmd.Dir = spec.WorkDir
	cmd.Stdout, cmd.Stderr = logf, logf // stdin: /dev/null
	cmd.ExtraFiles = []*os.File{readyW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	logf.Close()
	readyW.Close()
	if err != nil {
		readyR.Close()
		return nil, fail("start shim: %w", err)
	}
	pid := cmd.Process.Pid
	// The shim is our unreaped child, so its pid cannot be reused before this read.
	st, err := startTimeOf(pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		readyR.Close()
		return nil, fail("start shim: %w", err)
	}
	// Wait until the shim handles SIGTERM and has started the hook (it closes fd 3),
	// so that a Stop right after Start is never lost.
	readyR.SetReadDeadline(time.Now().Add(readyTimeout))
	_, rerr := io.Copy(io.Discard, readyR)
	readyR.Close()

	run := r.newRun(name, dir, pid, st, 0, onLines)
	if rerr != nil {
		run.log.Warn("shim did not report that the hook started", "error", rerr)
	}
	run.cmd = cmd
	go func() {
		cmd.Wait()
		run.waitState = cmd.ProcessState
		close(run.exited)
	}()
	run.log.Debug("hook started", "dir", dir, "start_time", st)
	go run.loop()
	return run, nil
}

// Adopt watches a run started before a restart of the daemon: dir is its spool
// directory, pid and startTime identify its shim (Run.Pid, Run.StartTime) and offset is
// where to resume reading output (the Offset of the last line handled, 0 for all).
// onLines is called as for Start. If the shim still runs, Adopt tails the output and
// waits for its exit; if it is gone, or pid names another process, the run passes the
// remaining output and the status file. With no status file and no live shim, the
// Result's Err wraps ErrShimVanished.
func (r *Runner) Adopt(dir string, pid int, startTime uint64, offset int64, onLines func([]Line)) (*Run, error) {
	if dir == "" {
		return nil, errors.New("hook: adopt: no spool directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("hook at %s: adopt: %w", dir, err)
	}
	dir = abs
	if offset < 0 {
		return nil, fmt.Errorf("hook at %s: adopt: negative offset %d", dir, offset)
	}
	run := r.newRun("at "+dir, dir, pid, startTime, offset, onLines)
	alive := false
	if pid > 0 {
		// Open the pidfd before checking the start time: if the check passes, the
		// pidfd is known to refer to the shim.
		fd, err := unix.PidfdOpen(pid, 0)
		if err == nil && r.noPidfd {
			unix.Close(fd)
			err = unix.ENOSYS
		}
		switch {
		case err == nil:
			if sameProcess(pid, startTime) {
				unix.SetNonblock(fd, true) // lets Go's poller wait on it
				run.pidfd = os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
				alive = true
			} else {
				unix.Close(fd)
			}
		case errors.Is(err, unix.ESRCH):
		default:
			run.log.Warn("pidfd unavailable, checking the shim periodically", "error", err)
			alive = sameProcess(pid, startTime)
		}
	}
	if alive {
		run.waiterDone = make(chan struct{})
		go run.waitAdopted(run.pidfd)
	} else {
		close(run.exited)
	}
	run.log.Debug("hook adopted", "dir", dir, "alive", alive, "offset", offset)
	go run.loop()
	return run, nil
}

func (r *Runner) newRun(label, dir string, pid int, startTime uint64, offset int64, onLines func([]Line)) *Run {
	log := r.Logger
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &Run{
		r:         r,
		label:     label,
		dir:       dir,
		pid:       pid,
		startTime: startTime,
		onLines:   onLines,
		log:       log.With("hook", label, "pid", pid),
		exited:    make(chan struct{}),
		detach:    make(chan struct{}),
		done:      make(chan struct{}),
		offset:    offset,
		lineStart: offset,
	}
}

// waitAdopted closes run.exited when the adopted shim exits: it waits for its pidfd to
// become readable through Go's poller, or, if that cannot be done, checks the process
// every aliveCheckInterval. It ends early on Detach.
func (run *Run) waitAdopted(pidfd *os.File) {
	defer close(run.waiterDone)
	if pidfd != nil {
		err := waitReadable(pidfd)
		if err == nil {
			close(run.exited)
			return
		}
		select {
		case <-run.detach:
			return
		default:
		}
		run.log.Warn("cannot wait on the shim's pidfd, checking it periodically", "error", err)
	}
	t := time.NewTicker(aliveCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-run.detach:
			return
		case <-t.C:
			if !sameProcess(run.pid, run.startTime) {
				close(run.exited)
				return
			}
		}
	}
}

// waitReadable blocks until f is readable (a pidfd is when its process has exited) or f
// is closed.
func waitReadable(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		if err != nil && !errors.Is(err, unix.EINTR) {
			perr = err
			return true
		}
		return n > 0
	})
	if err == nil {
		err = perr
	}
	return err
}

// loop tails the output until the shim exits or the run is detached, then reports the
// result. It is the only goroutine that calls onLines.
func (run *Run) loop() {
	defer close(run.done)
	defer func() {
		if run.out != nil {
			run.out.Close()
		}
	}()
	var (
		wake   <-chan struct{}
		broken <-chan struct{}
		tick   <-chan time.Time
	)
	var ticker *time.Ticker
	startTicker := func() {
		ticker = time.NewTicker(pollInterval)
		tick = ticker.C
	}
	defer func() {
		if ticker != nil {
			ticker.Stop()
		}
	}()
	path := filepath.Join(run.dir, outputFile)
	if run.r.noInotify {
		startTicker()
	} else if sub, err := run.r.subscribe(path); err != nil {
		run.log.Warn("cannot watch the hook output with inotify, polling it every "+pollInterval.String(), "error", err)
		startTicker()
	} else {
		defer run.r.unsubscribe(sub)
		wake, broken = sub.wake, sub.w.broken
	}
	run.buf = make([]byte, 64<<10)
	defer run.stopProgress()
	for {
		run.read()
		select {
		case <-wake:
		case <-tick:
		case <-run.progC:
			run.progC = nil
			run.progress(time.Now())
			run.pass()
		case <-broken:
			run.log.Warn("inotify failed, polling the hook output every " + pollInterval.String())
			wake, broken = nil, nil
			startTicker()
		case <-run.exited:
			// Every writer of the output is gone: read the rest, once.
			run.read()
			run.flush()
			run.endWaiter()
			run.result = run.collect()
			run.log.Debug("hook finished", "exit_code", run.result.ExitCode, "signal", run.result.Signal,
				"timed_out", run.result.TimedOut, "stopped", run.result.Stopped, "error", run.result.Err)
			return
		case <-run.detach:
			run.endWaiter()
			run.result = Result{ExitCode: -1, Err: fmt.Errorf("hook %s: %w", run.label, ErrDetached)}
			return
		}
	}
}

// endWaiter closes the pidfd, if any, and waits for waitAdopted to end.
func (run *Run) endWaiter() {
	run.mu.Lock()
	if run.pidfd != nil {
		run.pidfd.Close() // wakes waitAdopted if it still waits
		run.pidfd = nil
	}
	run.mu.Unlock()
	if run.waiterDone != nil {
		<-run.waiterDone
	}
}

// read reads the output from run.offset to its end, passing on the lines each read
// of up to 64 KiB completed, and, at the end, the state of a line being redrawn.
func (run *Run) read() {
	defer func() {
		run.progress(time.Now())
		run.pass()
	}()
	if run.out == nil {
		f, err := os.Open(filepath.Join(run.dir, outputFile))
		if err != nil {
			return // not there (yet)
		}
		run.out = f
	}
	for {
		n, err := run.out.ReadAt(run.buf, run.offset)
		if n > 0 {
			run.feed(run.buf[:n])
			run.pass()
		}
		if err != nil {
			if err != io.EOF {
				run.log.Warn("read hook output", "error", err)
			}
			return
		}
	}
}

// feed splits p, the output at run.offset, into lines. A line is passed on when its
// newline arrives, with the offset just past that newline. The splitter emits a cut
// line before the end of the line it cut; it is held back until that end, so that its
// Offset is a line boundary too.
func (run *Run) feed(p []byte) {
	hold := func(l jobs.HookLine) { run.pending = append(run.pending, l) }
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			run.split.Write(p, hold)
			run.offset += int64(len(p))
			return
		}
		run.split.Write(p[:i+1], hold)
		run.offset += int64(i + 1)
		p = p[i+1:]
		run.emitPending()
	}
}

// flush passes on the last line, even without a newline.
func (run *Run) flush() {
	run.split.Flush(func(l jobs.HookLine) { run.pending = append(run.pending, l) })
	run.emitPending()
	run.pass()
}

// emitPending adds the lines held for the current output line to the batch, with the
// offset just past it.
func (run *Run) emitPending() {
	if run.onLines != nil {
		for _, l := range run.pending {
			run.batch = append(run.batch, Line{HookLine: l, Offset: run.offset})
		}
	}
	clear(run.pending)
	run.pending = run.pending[:0]
	run.lineStart = run.offset
	run.progSent = false
	run.stopProgress()
}

// progress adds the state of the line being redrawn to the batch if it changed since
// the last one passed on and ProgressInterval has passed since then; if it must wait,
// a timer brings the loop back in time.
func (run *Run) progress(now time.Time) {
	l, ok := run.split.Progress()
	if !ok || run.progSent && l == run.lastProg {
		run.stopProgress()
		return
	}
	if wait := run.progAt.Add(ProgressInterval).Sub(now); wait > 0 {
		if run.progC == nil {
			if run.progT == nil {
				run.progT = time.NewTimer(wait)
			} else {
				run.progT.Reset(wait)
			}
			run.progC = run.progT.C
		}
		return
	}
	run.stopProgress()
	run.lastProg, run.progSent, run.progAt = l, true, now
	if run.onLines != nil {
		run.batch = append(run.batch, Line{HookLine: l, Offset: run.lineStart})
	}
}

// stopProgress disarms the progress timer.
func (run *Run) stopProgress() {
	if run.progT != nil {
		run.progT.Stop()
	}
	run.progC = nil
}

// pass hands the batch to onLines.
func (run *Run) pass() {
	if len(run.batch) == 0 {
		return
	}
	b := run.batch
	run.batch = nil
	run.onLines(b)
}

// collect builds the Result from the status file.
func (run *Run) collect() Result {
	st, err := readStatus(run.dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			how := ""
			if run.waitState != nil {
				how = " (" + run.waitState.String() + ")"
			}
			return Result{ExitCode: -1, Err: fmt.Errorf("hook %s: shim (pid %d) exited%s%s: %w",
				run.label, run.pid, how, run.cleanUpVanished(), ErrShimVanished)}
		}
		return Result{ExitCode: -1, Err: fmt.Errorf("hook %s: read status: %w", run.label, err)}
	}
	res := Result{
		ExitCode:  st.ExitCode,
		Signal:    st.Signal,
		TimedOut:  st.TimedOut,
		Stopped:   st.Stopped,
		Truncated: st.Truncated,
		Started:   st.StartedAt,
		Ended:     st.EndedAt,
	}
	if st.Error != "" {
		res.Err = fmt.Errorf("hook %s: %s", run.label, st.Error)
	}
	return res
}

// cleanUpVanished does what the shim of a run could not do, having vanished: it kills
// the run's cgroup (nothing the hook started survives) and removes the hook's own
// directory. It returns what it did, for the run's error.
func (run *Run) cleanUpVanished() string {
	said := ""
	switch cg, err := endRunCgroup(run.dir); {
	case err != nil:
		run.log.Error("kill the cgroup of a hook whose shim vanished", "error", err)
		said = "; killing its cgroup failed: " + err.Error()
	case cg != "":
		run.log.Warn("killed the cgroup of a hook whose shim vanished", "cgroup", cg)
		said = "; every process it left was killed with its cgroup"
	}
	if b, err := os.ReadFile(filepath.Join(run.dir, runDirFile)); err == nil {
		if d := strings.TrimSpace(string(b)); filepath.IsAbs(d) {
			if err := os.RemoveAll(d); err != nil {
				run.log.Warn("remove the directory of a hook whose shim vanished", "error", err)
			}
		}
		os.Remove(filepath.Join(run.dir, runDirFile))
	}
	return said
}

// hookEnv is the environment of the shim and of the hook: the daemon's PATH and HOME,
// TERM=dumb on a terminal (a terminal that draws nothing but text), then extra.
func hookEnv(terminal bool, extra []string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	env := []string{"PATH=" + path}
	if home, ok := os.LookupEnv("HOME"); ok {
		env = append(env, "HOME="+home)
	}
	if terminal {
		env = append(env, "TERM=dumb")
	}
	return append(env, extra...)
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}
