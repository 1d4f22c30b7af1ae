package hook

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Names of the files in a spool directory.
const (
	outputFile  = "output"
	statusFile  = "status"
	shimLogFile = "shim.log"
)

// maxCleanupGrace bounds the grace period given to processes a hook left behind, between
// their SIGTERM and their SIGKILL.
const maxCleanupGrace = time.Second

// pipeCloseWait bounds how long the shim waits, once every process of the hook is gone,
// for the end of the output (only a process outside the hook's tree, handed a
// descriptor of the terminal or pipe, can still hold it open).
const pipeCloseWait = time.Second

// shimStatus is the JSON document the shim writes to DIR/status.
type shimStatus struct {
	// ExitCode is the hook's exit code; -1 if it was killed by a signal, 127 if its
	// command does not exist, 126 if it exists but cannot be run.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed the hook ("SIGKILL"), or is empty.
	Signal    string    `json:"signal"`
	TimedOut  bool      `json:"timed_out"`
	Stopped   bool      `json:"stopped"`
	StartedAt time.Time `json:"started_at"` // RFC 3339 with nanoseconds
	EndedAt   time.Time `json:"ended_at"`
	// Error says why the hook could not be run, or is empty.
	Error string `json:"error"`
	// Truncated reports that the hook wrote more than the spool keeps (--max-output)
	// or that output could not be written to the spool in time; Discarded counts the
	// bytes not kept.
	Truncated bool  `json:"truncated,omitempty"`
	Discarded int64 `json:"discarded,omitempty"`
}

// ShimProtocol names the shim's command line and spool layout. A shim binary answers
// --protocol with it; the daemon uses a separate shim binary only if it answers with the
// daemon's own number, so a stale boardvisor-shim left next to a newer daemon is not run.
const ShimProtocol = "boardvisor-shim/1"

// ShimMain is the body of the hidden "boardvisor hook-shim" subcommand; args are the
// arguments after the subcommand's name:
//
//	--dir SPOOLDIR --timeout DURATION --grace DURATION [--max-output BYTES] [--pipe] [--ready-fd N] -- COMMAND [ARG...]
//
// It runs COMMAND (looked up as a path, not in $PATH) in a new session, with stdin
// /dev/null and stdout and stderr a pseudo-terminal (its controlling terminal; with
// --pipe a pipe instead) that the shim copies to SPOOLDIR/output, and with the shim's
// own environment and working directory. At most --max-output bytes (default
// DefaultMaxOutput) of the hook's output are kept: past them the shim reads on and
// discards, so the hook never blocks on its output, and once the output has ended it
// appends one line "JMP_WARN: boardvisor: output truncated after N bytes (...): B more
// bytes in L lines dropped". When the spool cannot be written (a full disk) the shim
// stops reading and retries with back-off, so the hook waits on its own output and
// nothing is lost; once the hook's processes are gone it retries for at most
// --drain-timeout (default DefaultDrainTimeout) before dropping what it holds, with the
// same marker. At --timeout (0: none) it sends SIGTERM to the hook's process group,
// after --grace SIGKILL. A SIGTERM to the shim does the same at once and marks the run
// stopped. Once the command's main process has exited, every descendant still alive
// (the shim is their child subreaper) gets SIGTERM and, after min(--grace, 1s),
// SIGKILL; when all are reaped the shim writes SPOOLDIR/status and exits. If --ready-fd
// is given, the shim closes that descriptor once it handles SIGTERM and the command has
// been started (or failed to start). With --cgroup BASE the command starts in a new
// cgroup under BASE, killed and removed at the end of the run; with --uid, --gid and
// --groups it runs as that user, in a directory of its own (see the package doc).
//
// ShimMain returns the shim's exit status: 0 when the status file was written,
// whatever the hook's outcome, 1 if it could not be, 2 for a usage error. The caller is
// expected to start it in a session of its own (setsid) with stdin /dev/null.
func ShimMain(args []string) int {
	if len(args) == 1 && args[0] == "--protocol" {
		fmt.Println(ShimProtocol)
		return 0
	}
	fset := flag.NewFlagSet("hook-shim", flag.ContinueOnError)
	fset.SetOutput(os.Stderr)
	dir := fset.String("dir", "", "spool `directory` (output and status files)")
	timeout := fset.Duration("timeout", 0, "time the hook may run before it is terminated (0: no limit)")
	grace := fset.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL")
	readyFD := fset.Int("ready-fd", -1, "file descriptor to close once the hook has been started")
	maxOutput := fset.Int64("max-output", DefaultMaxOutput, "most `bytes` of hook output kept in the spool")
	pipe := fset.Bool("pipe", false, "give the hook a pipe as stdout and stderr instead of a pseudo-terminal")
	drain := fset.Duration("drain-timeout", DefaultDrainTimeout, "how long to retry writing held output to a full spool once the hook has ended")
	cgroup := fset.String("cgroup", "", "cgroup v2 `directory` under which the hook's run gets a cgroup of its own")
	uid := fset.Int("uid", -1, "user id the hook runs as (default: the shim's)")
	gid := fset.Int("gid", -1, "group id the hook runs as (with --uid)")
	groups := fset.String("groups", "", "comma-separated supplementary group ids of the hook (with --uid)")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	var ready *os.File
	if *readyFD >= 0 {
		unix.CloseOnExec(*readyFD)
		ready = os.NewFile(uintptr(*readyFD), "ready")
	}
	defer func() {
		if ready != nil {
			ready.Close()
		}
	}()
	argv := fset.Args()
	if *dir == "" || len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "usage: hook-shim --dir SPOOLDIR [--timeout D] [--grace D] [--pipe] -- COMMAND [ARG...]")
		return 2
	}
	if *grace < 0 {
		*grace = 0
	}
	s := &shim{dir: *dir, timeout: *timeout, grace: *grace, maxOutput: *maxOutput, pipe: *pipe, drain: *drain,
		cgroupBase: *cgroup, argv: argv}
	if *uid >= 0 {
		cred, err := parseCredential(*uid, *gid, *groups)
		if err != nil {
			fmt.Fprintln(os.Stderr, "hook-shim:", err)
			return 2
		}
		s.cred = cred
	}
	return s.run(func() {
		if ready != nil {
			ready.Close()
			ready = nil
		}
	})
}

// shim is the state of one ShimMain.
type shim struct {
	dir            string
	timeout, grace time.Duration
	maxOutput      int64
	pipe           bool          // a pipe instead of a terminal
	drain          time.Duration // --drain-timeout
	cgroupBase     string        // --cgroup; "" for none
	cgroup         string        // the run's cgroup, while it exists
	cred           *syscall.Credential
	runDir         string // the hook's own directory (with cred), its working directory and HOME
	motd           string // the lease's JMP_MOTD_FILE, where the hook's motd is copied (with cred)
	argv           []string
	out            *os.File // DIR/output, append-only
	spool          *spool   // the hook's terminal or pipe, copied to out
	st             shimStatus
}

// reaped is one child collected by wait4.
type reaped struct {
	pid int
	ws  unix.WaitStatus
}

func (s *shim) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s boardvisor hook-shim[%d]: %s\n",
		time.Now().UTC().Format(time.RFC3339Nano), os.Getpid(), fmt.Sprintf(format, args...))
}

// note appends a line from the shim itself to the output, on a line of its own, after
// what the hook wrote before it.
func (s *shim) note(severity, format string, args ...any) {
	s.spool.note("JMP_" + severity + ": boardvisor: " + fmt.Sprintf(format, args...))
}

func (s *shim) run(ready func()) int {
	defer ready()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		s.logf("cannot become child subreaper, processes that leave the hook's process group may outlive it: %v", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGTERM)
	defer signal.Stop(sigs)

	out, err := os.OpenFile(filepath.Join(s.dir, outputFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.logf("open output: %v", err)
		now := time.Now()
		s.st = shimStatus{ExitCode: 126, StartedAt: now, EndedAt: now, Error: "open hook output: " + err.Error()}
		return s.finish()
	}
	s.out = out
	defer out.Close()
	s.spool = newSpool(out, s.maxOutput, s.drain, s.logf)

	devnull, err := os.Open(os.DevNull)
	if err != nil {
		s.logf("open %s: %v", os.DevNull, err)
		s.st = shimStatus{ExitCode: 126, StartedAt: time.Now(), EndedAt: time.Now(), Error: err.Error()}
		return s.finish()
	}
	// The hook is the leader of a new session (so also of a new process group, which
	// the timeout ladder signals), with the terminal as its controlling terminal; with a
	// pipe, only of a new process group.
	var w *os.File
	sys := &syscall.SysProcAttr{Setpgid: true}
	what := "terminal"
	if s.pipe {
		what = "pipe"
		w, err = s.spool.pipe()
	} else {
		w, err = s.spool.terminal()
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 1}
		// When the hook's main process (the session leader) exits, the kernel sends
		// SIGHUP to the terminal's foreground group. The hook starts with SIGHUP
		// ignored (the shim's disposition is inherited), so what it left behind is
		// found, named and killed by the shim, as on a pipe, rather than racing it.
		signal.Ignore(unix.SIGHUP)
	}
	if err != nil {
		devnull.Close()
		s.logf("create the output %s: %v", what, err)
		s.st = shimStatus{ExitCode: 126, StartedAt: time.Now(), EndedAt: time.Now(), Error: "create the hook's output " + what + ": " + err.Error()}
		return s.finish()
	}
	attr := &os.ProcAttr{Env: os.Environ(), Files: []*os.File{devnull, w, w}, Sys: sys}
	if s.cred != nil {
		if err := s.asUser(attr, w); err != nil {
			devnull.Close()
			w.Close()
			go s.spool.copy()
			return s.cannotRun(ready, "cannot run hook as uid "+strconv.Itoa(int(s.cred.Uid))+": "+err.Error(), 126)
		}
	}
	cgfd := s.newCgroup()
	if cgfd >= 0 {
		sys.UseCgroupFD, sys.CgroupFD = true, cgfd
	}
	s.st.StartedAt = time.Now()
	proc, err := os.StartProcess(s.argv[0], s.argv, attr)
	if err != nil && cgfd >= 0 && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) && !errors.Is(err, unix.EACCES) {
		// Not the hook's fault: perhaps the cgroup. Without it, the subreaper still
		// collects what the hook leaves.
		s.logf("start the hook in cgroup %s: %v; starting it without a cgroup of its own", s.cgroup, err)
		s.dropCgroup()
		sys.UseCgroupFD, sys.CgroupFD = false, 0
		proc, err = os.StartProcess(s.argv[0], s.argv, attr)
	}
	if cgfd >= 0 {
		unix.Close(cgfd)
	}
	devnull.Close()
	w.Close() // the hook and its descendants hold the only write ends (or slave descriptors)
	go s.spool.copy()
	if err != nil {
		code := 126
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			code = 127
		}
		return s.cannotRun(ready, "cannot run hook: "+err.Error(), code)
	}
	pid := proc.Pid
	proc.Release() // we reap it ourselves, with wait4(-1)
	ready()

	// The reaper collects every child: the hook and the orphans reparented to us. It
	// ends when there is no child left, which, as we are a subreaper, means that no
	// descendant is left.
	reapc := make(chan reaped, 16)
	go func() {
		defer close(reapc)
		for {
			var ws unix.WaitStatus
			p, err := unix.Wait4(-1, &ws, 0, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			reapc <- reaped{p, ws}
		}
	}()

	s.waitMain(pid, sigs, reapc)
	s.st.EndedAt = time.Now()
	s.killLeftovers(reapc)
	s.endCgroup()
	s.spool.end()
	s.endRunDir()
	return s.finish()
}

// cannotRun ends a run whose hook could not be started.
func (s *shim) cannotRun(ready func(), msg string, code int) int {
	s.st.ExitCode, s.st.Error = code, msg
	s.note("ERROR", "%s", msg)
	s.st.EndedAt = time.Now()
	ready()
	s.endCgroup()
	s.spool.end()
	s.endRunDir()
	return s.finish()
}

// waitMain runs the timeout ladder until the hook's main process (pid, also its process
// group) has been reaped.
func (s *shim) waitMain(pid int, sigs <-chan os.Signal, reapc <-chan reaped) {
	var timeoutC, graceC <-chan time.Time
	if s.timeout > 0 {
		t := time.NewTimer(s.timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	terminating := false
	terminate := func() {
		terminating = true
		unix.Kill(-pid, unix.SIGTERM)
		t := time.NewTimer(s.grace)
		graceC = t.C
	}
	for {
		select {
		case <-timeoutC:
			if !terminating {
				s.st.TimedOut = true
				s.note("ERROR", "hook timed out after %s, sending SIGTERM", s.timeout)
				terminate()
			}
		case <-sigs:
			if !terminating {
				s.st.Stopped = true
				s.note("WARN", "hook stopped, sending SIGTERM")
				terminate()
			}
		case <-graceC:
			graceC = nil
			if unix.Kill(-pid, unix.SIGKILL) == nil {
				s.note("ERROR", "hook still running %s after SIGTERM, sent SIGKILL", s.grace)
			}
		case r, ok := <-reapc:
			if !ok {
				s.st.ExitCode = -1
				s.st.Error = "lost track of the hook's process"
				return
			}
			if r.pid != pid {
				continue // an orphan reparented to us
			}
			switch {
			case r.ws.Exited():
				s.st.ExitCode = r.ws.ExitStatus()
			case r.ws.Signaled():
				s.st.ExitCode = -1
				s.st.Signal = unix.SignalName(r.ws.Signal())
				if s.st.Signal == "" {
					s.st.Signal = "signal " + strconv.Itoa(int(r.ws.Signal()))
				}
			default:
				s.st.ExitCode = -1
			}
			return
		}
	}
}

// killLeftovers kills every descendant still alive once the hook's main process has
// exited (SIGTERM, a short grace, then SIGKILL until none is left) and returns when all
// have been reaped.
func (s *shim) killLeftovers(reapc <-chan reaped) {
	grace := min(s.grace, maxCleanupGrace)
	if left := s.alive(); len(left) > 0 {
		pids := make([]string, len(left))
		for i, p := range left {
			pids[i] = strconv.Itoa(p.pid)
		}
		s.note("WARN", "hook left %d process(es) behind, terminating them: %s", len(left), strings.Join(pids, " "))
		for _, p := range left {
			signalProc(p, unix.SIGTERM)
		}
	}
	// Even with none seen alive, arm the timer: a process that was forking while we
	// looked may have been missed.
	graceT := time.NewTimer(grace)
	defer graceT.Stop()
	var tick <-chan time.Time
	for {
		select {
		case _, ok := <-reapc:
			if !ok {
				return
			}
		case <-graceT.C:
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			tick = t.C
			s.killAll()
			if s.cgroup != "" {
				if err := writeFile(filepath.Join(s.cgroup, "cgroup.kill"), "1"); err != nil {
					s.logf("kill cgroup %s: %v", s.cgroup, err)
				}
			}
		case <-tick:
			s.killAll()
		}
	}
}

// alive returns the shim's live descendants.
func (s *shim) alive() []procStat {
	all, err := descendants(os.Getpid())
	if err != nil {
		s.logf("list descendants: %v", err)
	}
	live := all[:0]
	for _, p := range all {
		if !p.dead() {
			live = append(live, p)
		}
	}
	return live
}

func (s *shim) killAll() {
	for _, p := range s.alive() {
		signalProc(p, unix.SIGKILL)
	}
}

// finish writes the status file and returns the shim's exit status. A status that
// cannot be written for a full disk (ENOSPC, EDQUOT) is retried with back-off for at
// most the drain timeout; any other error ends the shim at once.
func (s *shim) finish() int {
	if s.spool != nil {
		s.spool.abandon() // usually done already by end
		kept, discarded, truncated := s.spool.counts()
		s.st.Truncated, s.st.Discarded = truncated, discarded
		if discarded > 0 {
			s.logf("kept %d bytes of output, discarded %d", kept, discarded)
		}
	}
	if s.out != nil {
		if err := s.out.Sync(); err != nil {
			s.logf("sync output: %v", err)
		}
	}
	deadline := time.Now().Add(max(s.drain, retryMax))
	wait := retryFirst
	for {
		err := writeStatus(s.dir, s.st)
		if err == nil {
			return 0
		}
		if time.Now().After(deadline) || !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EDQUOT) {
			s.logf("write status: %v", err)
			return 1
		}
		if wait == retryFirst {
			s.logf("write status: %v; retrying", err)
		}
		time.Sleep(wait) // nothing to wait on: the disk may get space back
		wait = min(2*wait, retryMax)
	}
}

// writeStatus writes DIR/status atomically: DIR/status.tmp, fsync, rename, fsync DIR.
func writeStatus(dir string, st shimStatus) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, statusFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, statusFile))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// readStatus reads DIR/status; it returns an error satisfying errors.Is(err,
// fs.ErrNotExist) if the shim has not written it.
func readStatus(dir string) (shimStatus, error) {
	var st shimStatus
	f, err := os.Open(filepath.Join(dir, statusFile))
	if err != nil {
		return st, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse %s: %w", f.Name(), err)
	}
	return st, nil
}
