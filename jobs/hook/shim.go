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
// for the end of the output pipe (only a process outside the hook's tree, handed the
// pipe's descriptor, can still hold it open).
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
	// or that the spool could not be written; Discarded counts the bytes not kept.
	Truncated bool  `json:"truncated,omitempty"`
	Discarded int64 `json:"discarded,omitempty"`
}

// ShimMain is the body of the hidden "boardvisor hook-shim" subcommand; args are the
// arguments after the subcommand's name:
//
//	--dir SPOOLDIR --timeout DURATION --grace DURATION [--max-output BYTES] [--ready-fd N] -- COMMAND [ARG...]
//
// It runs COMMAND (looked up as a path, not in $PATH) in a new process group, with
// stdin /dev/null and stdout and stderr a pipe that the shim copies to SPOOLDIR/output,
// and with the shim's own environment and working directory. At most --max-output bytes
// (default DefaultMaxOutput) of the hook's output are kept: past them, or when the
// spool cannot be written (a full disk), the shim appends one line
// "JMP_WARN: boardvisor: output truncated after N bytes", then reads on and discards the
// rest, so the hook never blocks on its output. At --timeout (0: none) it sends
// SIGTERM to the process group, after --grace SIGKILL. A SIGTERM to the shim does the
// same at once and marks the run stopped. Once the command's main process has exited,
// every descendant still alive (the shim is their child subreaper) gets SIGTERM and,
// after min(--grace, 1s), SIGKILL; when all are reaped the shim writes SPOOLDIR/status
// and exits. If --ready-fd is given, the shim closes that descriptor once it handles
// SIGTERM and the command has been started (or failed to start).
//
// ShimMain returns the shim's exit status: 0 when the status file was written,
// whatever the hook's outcome, 1 if it could not be, 2 for a usage error. The caller is
// expected to start it in a session of its own (setsid) with stdin /dev/null.
func ShimMain(args []string) int {
	fset := flag.NewFlagSet("hook-shim", flag.ContinueOnError)
	fset.SetOutput(os.Stderr)
	dir := fset.String("dir", "", "spool `directory` (output and status files)")
	timeout := fset.Duration("timeout", 0, "time the hook may run before it is terminated (0: no limit)")
	grace := fset.Duration("grace", 5*time.Second, "time between SIGTERM and SIGKILL")
	readyFD := fset.Int("ready-fd", -1, "file descriptor to close once the hook has been started")
	maxOutput := fset.Int64("max-output", DefaultMaxOutput, "most `bytes` of hook output kept in the spool")
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
		fmt.Fprintln(os.Stderr, "usage: hook-shim --dir SPOOLDIR [--timeout D] [--grace D] -- COMMAND [ARG...]")
		return 2
	}
	if *grace < 0 {
		*grace = 0
	}
	s := &shim{dir: *dir, timeout: *timeout, grace: *grace, maxOutput: *maxOutput, argv: argv}
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
	argv           []string
	out            *os.File // DIR/output, append-only
	spool          *spool   // the hook's output pipe, copied to out
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
	s.spool = newSpool(out, s.maxOutput, s.logf)

	devnull, err := os.Open(os.DevNull)
	if err != nil {
		s.logf("open %s: %v", os.DevNull, err)
		s.st = shimStatus{ExitCode: 126, StartedAt: time.Now(), EndedAt: time.Now(), Error: err.Error()}
		return s.finish()
	}
	w, err := s.spool.pipe()
	if err != nil {
		devnull.Close()
		s.logf("create the output pipe: %v", err)
		s.st = shimStatus{ExitCode: 126, StartedAt: time.Now(), EndedAt: time.Now(), Error: "create the hook's output pipe: " + err.Error()}
		return s.finish()
	}
	s.st.StartedAt = time.Now()
	proc, err := os.StartProcess(s.argv[0], s.argv, &os.ProcAttr{
		Env:   os.Environ(),
		Files: []*os.File{devnull, w, w},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	devnull.Close()
	w.Close() // the hook and its descendants hold the only write ends
	go s.spool.copy()
	if err != nil {
		s.st.ExitCode = 126
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			s.st.ExitCode = 127
		}
		s.st.Error = "cannot run hook: " + err.Error()
		s.note("ERROR", "%s", s.st.Error)
		s.st.EndedAt = time.Now()
		ready()
		return s.finish()
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
	s.endOutput()
	return s.finish()
}

// endOutput waits for the output pipe to be closed by its last writer, for at most
// pipeCloseWait, then stops reading it. While the output waits for space on a full disk
// it is given until the hook's deadline (its start plus its timeout, or fullDiskWait
// without one) to be written.
func (s *shim) endOutput() {
	t := time.NewTimer(pipeCloseWait)
	defer t.Stop()
	deadline := s.st.StartedAt.Add(fullDiskWait)
	if s.timeout > 0 {
		deadline = s.st.StartedAt.Add(s.timeout)
	}
	for {
		select {
		case <-s.spool.done:
		case <-t.C:
			if s.spool.waitingForSpace() && time.Now().Before(deadline) {
				t.Reset(min(time.Until(deadline), pipeCloseWait))
				continue
			}
			if s.spool.waitingForSpace() {
				s.logf("the disk is still full at the hook's deadline: giving up the output not written")
			} else {
				s.logf("the hook's output pipe is still open although none of its processes is left; closing it")
			}
		}
		break
	}
	s.spool.closeRead()
}

// fullDiskWait bounds the wait for space to write a hook's output after it ended, for a
// hook without a timeout.
const fullDiskWait = 5 * time.Minute

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

// finish writes the status file and returns the shim's exit status.
func (s *shim) finish() int {
	if s.spool != nil {
		s.spool.closeRead() // usually done already by endOutput
		kept, discarded, truncated, werr := s.spool.counts()
		s.st.Truncated, s.st.Discarded = truncated || werr != nil, discarded
		if discarded > 0 {
			s.logf("kept %d bytes of output, discarded %d", kept, discarded)
		}
	}
	if s.out != nil {
		if err := s.out.Sync(); err != nil {
			s.logf("sync output: %v", err)
		}
	}
	if err := writeStatus(s.dir, s.st); err != nil {
		s.logf("write status: %v", err)
		return 1
	}
	return 0
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
