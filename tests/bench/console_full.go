package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers/recording"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/creack/pty"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, to read the coordinator's database
)

// fullPath is the real path's run.
type fullPath struct {
	win     window
	idleCPU float64 // the supervisor's, with every console open, before the stream
	lost    int64   // bytes missing or extra at the coordinator
	bad     int     // boards whose bytes at the coordinator differ
	gaps    int     // console_gap events (bytes the outbox gave up)
	events  int     // console events stored for the streaming boards
	recLost int64   // the same for the recordings
	recBad  int
	drain   time.Duration // from the stream's end until the coordinator stored its last event
	keys    keystrokes
	// floor are the keys typed in the same window straight into the floor board's pty,
	// with nothing between: the host's own share of an echo under this load.
	floor    keystrokes
	stalls   int64
	coordCPU float64
	// feederLate is how long after the stream's planned end the feeder wrote its last
	// byte (held back, or short of CPU); drain counts from then.
	feederLate time.Duration
	// supPeakMB is the supervisor's peak resident memory (VmHWM) at the stream's end, in
	// MB: what a host streaming every console needs, the Go heap at SupervisorGOGC's
	// target included (0: not read).
	supPeakMB float64
}

// keyTimeout bounds the wait for one keystroke's echo.
const keyTimeout = 2 * time.Second

// runFullPath runs the coordinator and the supervisor (the real binary) over the farm's
// ptys, types into the shell board through `boardvisor console` while the others stream,
// and compares every board's bytes at the coordinator and in the recordings.
func runFullPath(e *env, f *farm, size consoleSize) (*fullPath, error) {
	r := &fullPath{}
	coordAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	supAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	coordState, supState := filepath.Join(e.dir, "coord"), filepath.Join(e.dir, "state")
	coord, err := startDaemon(e.bin, nil, "coordinator", "--listen", coordAddr, "--state-dir", coordState,
		"--log-format", "text", "--log-level", "warn", "--grace", "60s")
	if err != nil {
		return nil, err
	}
	defer coord.kill()
	// The coordinator stands for another machine: it runs at the default priority,
	// below the host under test (runConsole), so that its bursts of storing a tick are
	// not the echo's cost. Its threads made at start inherited the scenario's priority:
	// renice them now and once it serves (threads it makes later inherit from these).
	renice(coord.cmd.Process.Pid, 0)
	if err := waitPort(coordAddr, 30*time.Second); err != nil {
		return nil, fmt.Errorf("coordinator: %w\n%s", err, tail(coord.output(), 2000))
	}
	renice(coord.cmd.Process.Pid, 0)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "stateDir: %s\nlisten: %s\nlog: {level: info, format: text}\ncoordinator: {address: %q, supervisorId: bench}\ndefaults:\n  leaseDuration: 1h\nboards:\n",
		supState, supAddr, coordAddr)
	for i, p := range f.paths[:size.boards] {
		fmt.Fprintf(&cfg, "  - name: %s\n    labels: {device: sim}\n    drivers: {serial: {device: %s}}\n", boardName(i), p)
	}
	cfgPath := filepath.Join(e.dir, "console.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}
	sup, err := startDaemon(e.bin, []string{"supervising"}, "supervise", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	defer sup.kill()
	if err := sup.waitFor("supervising", 1, 60*time.Second); err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(coordAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	leases := pb.NewLeaseServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := waitAvailable(ctx, leases, size.boards); err != nil {
		return nil, err
	}

	// The shell board is leased and followed through `boardvisor console`.
	shell := boardName(size.boards - 1)
	lr, err := leases.CreateLease(ctx, &pb.CreateLeaseRequest{Board: shell, Duration: durationpb.New(time.Hour), ClientName: "bench"})
	if err != nil {
		return nil, fmt.Errorf("lease the shell board: %w", err)
	}
	token := lr.GetLease().GetToken()
	if err := waitLeaseReady(ctx, supAddr, shell, token, 60*time.Second); err != nil {
		return nil, err
	}
	con, err := startConsole(e.bin, supAddr, shell, token)
	if err != nil {
		return nil, err
	}
	defer con.stop()

	// Idle: every console open, nothing streaming.
	time.Sleep(time.Second)
	idle0, idleAt := cpuTime(sup.cmd.Process.Pid), time.Now()
	time.Sleep(2 * time.Second)
	r.idleCPU = float64(cpuTime(sup.cmd.Process.Pid)-idle0) / float64(time.Since(idleAt))

	// A timeline on stderr, once a second: what the feeder wrote, what the coordinator
	// stored (to tell who falls behind).
	db, err := openCoordinatorDB(coordState)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	tlStop, tlDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(tlDone)
		timeline(ctx, db, f, tlStop)
	}()
	stopTimeline := sync.OnceFunc(func() {
		close(tlStop)
		<-tlDone
	})
	defer stopTimeline()
	pids := map[string]int{"supervisor": sup.cmd.Process.Pid, "coordinator": coord.cmd.Process.Pid, "farm": f.pid}
	loggedIn := r.keys.login(f, con, shellName, "\r")
	floor, err := openTTYTarget(f.floor)
	if err != nil {
		return nil, err
	}
	defer floor.close()
	floorIn := r.floor.login(nil, floor, floorName, "\r")
	sent0, _, err := f.stat()
	if err != nil {
		return nil, err
	}
	w, on, err := measure(f, size, pids, func(stop <-chan struct{}) {
		var wg sync.WaitGroup
		wg.Go(func() { r.keys.typeKeys(con, "\r", loggedIn, stop) })
		// Half a key's period later: the two echoes never wait for each other.
		wg.Go(func() {
			select {
			case <-stop:
			case <-time.After(50 * time.Millisecond):
				r.floor.typeKeys(floor, "\r", floorIn, stop)
			}
		})
		wg.Wait()
	})
	if err != nil {
		return nil, err
	}
	r.win, r.coordCPU, r.stalls = w, w.cpu["coordinator"], w.stalls
	end := on.Add(time.Duration(size.seconds) * time.Second)

	// Wait until the feeder has sent everything (a reader that falls behind holds it
	// back), then until the coordinator has stored everything: its events stop growing.
	if sentAll := waitSent(f, size, sent0, end.Add(60*time.Second)); sentAll.After(end) {
		r.feederLate = sentAll.Sub(end)
		end = sentAll
	}
	last, lastChange, settled := int64(-1), time.Now(), 0
	for deadline := end.Add(90 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		var n int64
		if err := db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events WHERE supervisor_id = 'bench'`).Scan(&n); err != nil {
			continue // busy: the coordinator writes
		}
		if n != last {
			last, lastChange, settled = n, time.Now(), 0
			continue
		}
		if settled++; settled >= 6 && time.Now().After(end.Add(3*time.Second)) {
			break
		}
	}
	r.drain = max(lastChange.Sub(end), 0)
	stopTimeline()
	if err := f.power(false); err != nil {
		return nil, err
	}
	con.stop()
	if st, err := procStatus(sup.cmd.Process.Pid); err == nil {
		r.supPeakMB = float64(st["VmHWM"]) / 1024
	}
	sup.terminate()
	coord.terminate()

	counts, err := r.storedConsole(ctx, db, size)
	if err != nil {
		return nil, err
	}
	keysFile := e.flags.Lookup("keys").Value.String()
	if err := r.keys.appendTo(keysFile, "boardvisor", w.steal); err != nil {
		return nil, fmt.Errorf("console full path: -console-keys: %w", err)
	}
	if err := r.floor.appendTo(keysFile, "floor", w.steal); err != nil {
		return nil, fmt.Errorf("console full path: -console-keys: %w", err)
	}
	if dbg := os.Getenv("BENCH_SUPLOG"); dbg != "" {
		_ = os.WriteFile(dbg, []byte(sup.output()), 0o600)
	}
	r.lost, r.bad = compare(func(i int) consoleCount { return counts[boardName(i)] }, size)
	if r.lost > 0 {
		logf("console full path: bytes missing at the coordinator; the supervisor's log ends:\n%s", tail(sup.output(), 3000))
	}
	r.recLost, r.recBad = compare(func(i int) consoleCount { return recorded(supState, boardName(i)) }, size)
	logf("console full path: supervisor %.1f%% of a core (idle %.1f%%; %s), coordinator %.1f%%, farm %.1f%%; %s; %d console events stored, %d gaps; coordinator: %d bytes lost or extra, %d boards wrong; recordings: %d lost or extra, %d boards wrong; last event stored %s after the stream's end; keystrokes: %d, p50 %s p99 %s, %d without echo; floor: p50 %s p99 %s; host steal %s, host work %s a time",
		w.cpu["supervisor"]*100, r.idleCPU*100, w.sysNote("supervisor", size.boards), r.coordCPU*100, w.cpu["farm"]*100, w.paceNote(size), r.events, r.gaps, r.lost, r.bad, r.recLost, r.recBad,
		r.drain.Round(time.Millisecond), r.keys.lat.n(), ms(r.keys.lat.pct(50)), ms(r.keys.lat.pct(99)), r.keys.lost, ms(r.floor.lat.pct(50)), ms(r.floor.lat.pct(99)), stealPct(w), speedX(w))
	return r, nil
}

// timeline logs, once a second until stop: the bytes the feeder wrote and the last event
// the coordinator stored. (The supervisor is not asked: scraping its metrics would cost
// it CPU in the window.)
func timeline(ctx context.Context, db *sql.DB, f *farm, stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	began := time.Now()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		sent, stalls, _ := f.stat()
		var stored int64
		_ = db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM events WHERE supervisor_id = 'bench'`).Scan(&stored)
		logf("   t+%2.0fs feeder %6.1f MB (%d stalled writes) | coordinator stored event %7d", time.Since(began).Seconds(), float64(sent)/1e6, stalls, stored)
	}
}

// waitSent waits until the streaming boards have written all their bytes of this run
// (sent0: the feeder's count when it was powered on) or the deadline, and returns when
// they had.
func waitSent(f *farm, size consoleSize, sent0 int64, deadline time.Time) time.Time {
	want := size.perBoard * int64(size.streaming)
	for {
		sent, _, err := f.stat()
		if err != nil || sent-sent0 >= want || time.Now().After(deadline) {
			return time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitLeaseReady polls the supervisor's client service until the board reports
// LEASE_READY.
func waitLeaseReady(ctx context.Context, addr, board, token string, timeout time.Duration) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	cli := jpb.NewExporterServiceClient(cc)
	deadline := time.Now().Add(timeout)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.GetStatus(callCtx(cctx, board, token), &jpb.GetStatusRequest{})
		ccancel()
		if err == nil && st.GetStatus() == jpb.ExporterStatus_EXPORTER_STATUS_LEASE_READY {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the lease of board %s is not READY after %s (%v, %v)", board, timeout, st.GetStatus(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consoleClient is a `boardvisor console` process typed into as a user does, on a
// terminal (a pseudo-terminal: the command sends keys as typed when it can, lines
// otherwise), its output kept.
type consoleClient struct {
	cmd *exec.Cmd
	in  *os.File // the terminal's master side
	tty *os.File
	*typedOutput
	once sync.Once
}

func startConsole(bin, addr, board, token string) (*consoleClient, error) {
	cmd := exec.Command(bin, "console", "--exporter", addr, "--board", board, "--token", token)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	master, tty, err := pty.Open()
	if err != nil {
		return nil, err
	}
	cmd.Stdin = tty
	out, err := cmd.StdoutPipe()
	if err != nil {
		master.Close()
		tty.Close()
		return nil, err
	}
	cmd.Stderr = io.Discard // its banner
	if err := cmd.Start(); err != nil {
		master.Close()
		tty.Close()
		return nil, err
	}
	c := &consoleClient{cmd: cmd, in: master, tty: tty, typedOutput: newTypedOutput()}
	go func() {
		defer c.end()
		buf := make([]byte, 64<<10)
		for {
			n, err := out.Read(buf)
			c.add(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	return c, nil
}

// typedOutput is what a keyTarget's reader got, kept for mark and waitFor: the bytes,
// a wake-up when they grow, and the end of the reading.
type typedOutput struct {
	mu   sync.Mutex
	out  []byte
	more chan struct{} // has a value when out grew
	done chan struct{} // closed by end
}

func newTypedOutput() *typedOutput {
	return &typedOutput{more: make(chan struct{}, 1), done: make(chan struct{})}
}

// add keeps p (a reader's read; empty is no-op) and wakes waitFor.
func (o *typedOutput) add(p []byte) {
	if len(p) == 0 {
		return
	}
	o.mu.Lock()
	o.out = append(o.out, p...)
	o.mu.Unlock()
	select {
	case o.more <- struct{}{}:
	default:
	}
}

// end says the reading stopped: waitFor no longer waits.
func (o *typedOutput) end() { close(o.done) }

// mark returns how much output there is so far.
func (o *typedOutput) mark() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.out)
}

func (o *typedOutput) waitFor(from int, want string, timeout time.Duration, stop <-chan struct{}) (time.Time, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		found := bytes.Contains(o.out[min(from, len(o.out)):], []byte(want))
		o.mu.Unlock()
		if found {
			return time.Now(), true
		}
		select {
		case <-o.more:
		case <-deadline.C:
			return time.Time{}, false
		case <-o.done:
			return time.Time{}, false
		case <-stop:
			return time.Time{}, false
		}
	}
}

func (c *consoleClient) stop() {
	c.once.Do(func() {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		c.in.Close()
		c.tty.Close()
	})
}

// keyTarget is where keystrokes are typed and their echo read: `boardvisor console`, or
// a baseline's TCP connection to the shell board.
type keyTarget interface {
	write(s string) error
	mark() int
	// waitFor waits until the output after from holds want, at most timeout or until
	// stop is closed, and returns when it saw it.
	waitFor(from int, want string, timeout time.Duration, stop <-chan struct{}) (time.Time, bool)
}

func (c *consoleClient) write(s string) error {
	_, err := c.in.WriteString(s)
	return err
}

// ttyTarget types straight into a board's pty (the floor board's): the bench in the
// place of the supervisor and the client.
type ttyTarget struct {
	tty *os.File
	*typedOutput
}

func openTTYTarget(path string) (*ttyTarget, error) {
	tty, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("floor board: %w", err)
	}
	if err := makeRawTTY(tty); err != nil {
		tty.Close()
		return nil, fmt.Errorf("floor board: %w", err)
	}
	t := &ttyTarget{tty: tty, typedOutput: newTypedOutput()}
	go func() {
		defer t.end()
		buf := make([]byte, 4096)
		for {
			n, err := tty.Read(buf)
			t.add(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	return t, nil
}

func (t *ttyTarget) write(s string) error {
	_, err := t.tty.WriteString(s)
	return err
}

func (t *ttyTarget) close() {
	t.tty.Close()
	<-t.done
}

// keystrokes are the timed keystrokes of one run.
type keystrokes struct {
	lat   latencies
	typed []time.Time // when each key of lat was typed, in lat's order (under lat.mu; record adds to both)
	lost  int         // keystrokes whose echo did not come within keyTimeout
	note  string      // why none could be typed
}

// record adds a key typed at t0 whose echo took d.
func (k *keystrokes) record(t0 time.Time, d time.Duration) {
	k.lat.mu.Lock()
	k.lat.d = append(k.lat.d, d)
	k.typed = append(k.typed, t0)
	k.lat.mu.Unlock()
}

// login powers the shell board on and logs in once it prompts, before the streaming
// starts: on a loaded machine the login's own round trips would otherwise eat into
// the measured window. It says what went wrong in k.note.
func (k *keystrokes) login(f *farm, c keyTarget, board, newline string) bool {
	if f != nil && f.shell != nil {
		if err := f.shell.power(true); err != nil {
			k.note = "could not power the shell board on: " + err.Error()
			return false
		}
	}
	step := func(in, want string, timeout time.Duration) bool {
		from := c.mark()
		if err := c.write(in); err != nil {
			return false
		}
		_, ok := c.waitFor(from, want, timeout, nil)
		return ok
	}
	if _, ok := c.waitFor(0, board+" login: ", 60*time.Second, nil); !ok {
		k.note = "the shell board printed no login prompt within 60s"
		return false
	}
	if !step("root"+newline, "Password: ", 30*time.Second) {
		k.note = "no password prompt after the login name within 30s"
		return false
	}
	if !step("pw"+newline, "root@"+board+":~# ", 30*time.Second) {
		k.note = "no shell prompt after the password within 30s"
		return false
	}
	return true
}

// typeKeys types a key and Enter, waits for the key's echo, and so on until stop,
// timing each round trip (for boardvisor: client -> supervisor -> pty -> the board's
// echo -> supervisor -> client). The shell must be logged in (login); if it is not,
// typeKeys does nothing.
func (k *keystrokes) typeKeys(c keyTarget, newline string, loggedIn bool, stop <-chan struct{}) {
	if !loggedIn {
		return
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	// A fast typist's pace: ten keys a second.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		// A key and Enter (an unknown command), timed to the key's echo: the same with a
		// client that sends keys as typed and with one that sends lines.
		key := string(rune('a' + i%26))
		from := c.mark()
		t0 := time.Now()
		if err := c.write(key + newline); err != nil {
			k.lost++
			continue
		}
		at, ok := c.waitFor(from, key, keyTimeout, stop)
		if !ok {
			if !stopped() {
				k.lost++
			}
			continue
		}
		k.record(t0, at.Sub(t0))
	}
}

// hostNote says, for a keystroke row's note, what hostCPUNote says, how much of the
// CPUs the hypervisor took while the keys over 10 ms were typed, and how the keys typed
// while it took little went.
func hostNote(w window, k *keystrokes) string {
	out := hostCPUNote(w)
	if n := k.slowNote(w.steal, 10*time.Millisecond, w.from, w.end()); n != "" {
		out += "; " + n
	}
	if n := k.quietNote(w.steal, 10*time.Millisecond); n != "" {
		out += "; " + n
	}
	return out
}

// hostCPUNote says how much of the CPUs the hypervisor took and how fast the host ran in
// the window ("; ..." each, or nothing where it is not known): a process's CPU time for
// the same work grows on a slow host, and an echo waits longer.
func hostCPUNote(w window) string {
	out := ""
	if n := w.steal.note(w.from, w.end()); n != "" {
		out += "; " + n
	}
	if n := w.speed.note(w.from, w.end()); n != "" {
		out += "; " + n
	}
	return out
}

// summary says how the keystrokes went, for a note.
func (k *keystrokes) summary() string {
	if k.note != "" {
		return k.note
	}
	return fmt.Sprintf("keystroke echo p50 %s, p99 %s (%d keys, %d without echo)", ms(k.lat.pct(50)), ms(k.lat.pct(99)), k.lat.n(), k.lost)
}

func openCoordinatorDB(stateDir string) (*sql.DB, error) {
	path := filepath.Join(stateDir, "coordinator.db")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		} else if time.Now().After(deadline) {
			return nil, fmt.Errorf("coordinator database: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
}

// storedConsole reads the console events the coordinator stored, per board in sequence
// order: count and CRC-32C of their bytes. Offsets must follow each other.
func (r *fullPath) storedConsole(ctx context.Context, db *sql.DB, size consoleSize) (map[string]consoleCount, error) {
	rows, err := db.QueryContext(ctx, `SELECT kind, payload FROM events WHERE supervisor_id = 'bench' AND kind IN ('console_log', 'console_gap') ORDER BY seq`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	shell := boardName(size.boards - 1)
	out := map[string]consoleCount{}
	offsetGaps := 0
	for rows.Next() {
		var kind, payload string
		if err := rows.Scan(&kind, &payload); err != nil {
			return nil, err
		}
		if kind == "console_gap" {
			r.gaps++
			continue
		}
		var cl pb.ConsoleLog
		if err := protojson.Unmarshal([]byte(payload), &cl); err != nil {
			return nil, fmt.Errorf("console event: %w", err)
		}
		if cl.GetBoard() == shell {
			continue
		}
		cc := out[cl.GetBoard()]
		if cl.GetOffset() != uint64(cc.n) {
			offsetGaps++
		}
		cc.n += int64(len(cl.GetData()))
		cc.crc = crc32.Update(cc.crc, castagnoli, cl.GetData())
		out[cl.GetBoard()] = cc
		r.events++
	}
	if offsetGaps > 0 {
		logf("console full path: %d console events whose offset is not where the board's previous one ended", offsetGaps)
	}
	return out, rows.Err()
}

// recorded reads a board's recording files (no lease: the board's own), in order.
func recorded(stateDir, board string) consoleCount {
	var cc consoleCount
	files, err := recording.Files(stateDir, board)
	if err != nil {
		return cc
	}
	for _, f := range files {
		if f.Lease != "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(recording.Dir(stateDir, board), f.Name))
		if err != nil {
			continue
		}
		cc.n += int64(len(b))
		cc.crc = crc32.Update(cc.crc, castagnoli, b)
	}
	return cc
}

// terminate stops the daemon with SIGTERM, then SIGKILL after 15 s.
func (d *daemon) terminate() {
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.kill()
	}
}

// rows adds the console rows to the table.
func (r *fullPath) rows(e *env, size consoleSize, scaled string, base []*baseline) {
	w := r.win
	supCPU := w.cpu["supervisor"]
	mbps := float64(w.sent) / w.wall.Seconds() / 1e6
	pace := w.paceNote(size)
	e.add(Row{Figure: fmt.Sprintf("console, full path: bytes lost end to end, %d boards at %d baud", size.streaming, ConsoleBaud),
		Value: fmt.Sprint(r.lost + r.recLost), Num: float64(r.lost + r.recLost), Target: "0", Met: met(r.lost == 0 && r.bad == 0 && r.recLost == 0 && r.recBad == 0 && r.gaps == 0),
		Note: fmt.Sprintf("%s%d bytes a board (%.0f MB), compared per board by count and CRC-32C at the coordinator (its SQLite events, %d console events) and in the supervisor's recordings: coordinator %d bytes off on %d boards, recordings %d bytes off on %d boards, %d console gaps; pty -> boardvisor supervise (serial driver, durable outbox with fsync) -> gRPC -> boardvisor coordinator; %s",
			scaled, size.perBoard, float64(size.perBoard*int64(size.streaming))/1e6, r.events, r.lost, r.bad, r.recLost, r.recBad, r.gaps, pace)})

	floor := ""
	ratioTo := ""
	for _, b := range base {
		if b.name == "forwarder" {
			floor, ratioTo = fmt.Sprintf("Go forwarder %.1f%%", b.cpu*100), ratio(b.cpu, supCPU)
		}
	}
	cpuNote := ""
	if r.supPeakMB > 0 {
		gc := "the supervisor's own GOGC, 400"
		if v := os.Getenv("GOGC"); v != "" {
			gc = "GOGC=" + v + " from the environment"
		}
		cpuNote = fmt.Sprintf("; supervisor peak RSS %.0f MB (VmHWM; the Go heap at %s, docs/operations.md)", r.supPeakMB, gc)
	}
	if supCPU >= 0.12 {
		// Issue 13 asks for 12 %: the reason it is not met, as measured (perf profiles
		// of the supervisor on this path, in docs/console.md).
		cpuNote += "; issue 13's < 12% not met: of the supervisor's CPU, the tty read system calls alone were 21%, the durable outbox's writer 16%, the gRPC link 11%, the recordings 9%, and first touches of new heap pages 14% across them (perf, docs/console.md)"
	}
	e.add(Row{Figure: fmt.Sprintf("console, full path: supervisor CPU, %d boards at %d baud", size.streaming, ConsoleBaud),
		Value: fmt.Sprintf("%.1f%% of a core", supCPU*100), Num: supCPU * 100, Unit: "%", Target: "< 25% of one core",
		Baseline: floor, Ratio: ratioTo, Met: met(supCPU < 0.25 && w.pace(size) >= paceOK),
		Note: fmt.Sprintf("%sat %.2f MB/s (%s); %s; idle with every console open %.1f%%; farm %.1f%%; %.1fs window; ratio = the forwarder's CPU / the supervisor's",
			scaled, mbps, pace, w.sysNote("supervisor", size.boards), r.idleCPU*100, w.cpu["farm"]*100, w.wall.Seconds()) + cpuNote + hostCPUNote(w)})

	keptUp := r.drain < 5*time.Second
	coordNote := fmt.Sprintf("stored the last event %s after the stream's end", r.drain.Round(100*time.Millisecond))
	if r.feederLate > 0 {
		coordNote += fmt.Sprintf(" (its last byte, which the feeder wrote %s late)", r.feederLate.Round(100*time.Millisecond))
	}
	if !keptUp {
		coordNote = "FALLS BEHIND: " + coordNote
	}
	e.add(Row{Figure: "console, full path: coordinator CPU, storing the console events", Value: fmt.Sprintf("%.1f%% of a core", r.coordCPU*100), Num: r.coordCPU * 100, Unit: "%",
		Target: "-", Met: met(keptUp),
		Note: fmt.Sprintf("%s; %d console events (%.0f/s) into SQLite, protojson", coordNote, r.events, float64(r.events)/float64(size.seconds))})

	perMB := (supCPU - r.idleCPU) / max(mbps, 0.001) * 100
	idlePer1000 := r.idleCPU * 1000 / float64(size.boards) * 100
	e.add(Row{Figure: "console, full path: supervisor cost per 1,000 boards per MB/s", Value: fmt.Sprintf("%.1f%% of a core", supCPU*100*1000/float64(size.streaming)/max(mbps, 0.001)),
		Num: supCPU * 100 * 1000 / float64(size.streaming) / max(mbps, 0.001), Unit: "%", Target: "-",
		Note: fmt.Sprintf("sizing: CPU ≈ %.2f%% per 1,000 open consoles (idle) + %.1f%% per MB/s of console output; measured at %d boards, %.2f MB/s", idlePer1000, perMB, size.streaming, mbps)})

	keyNote := r.keys.note
	if keyNote == "" {
		// The keys over the target, as a count: p99 < 10 ms means fewer than 1 % of them,
		// and at about 290 keys a run that is two or three keys, so runs are pooled by it.
		slow := r.keys.lat.over(10 * time.Millisecond)
		keyNote = fmt.Sprintf("%d keystrokes, p50 %s, p90 %s, max %s, %d over 10 ms (%.1f%%); %d without an echo within %s; while %d consoles stream", r.keys.lat.n(), ms(r.keys.lat.pct(50)), ms(r.keys.lat.pct(90)), ms(r.keys.lat.pct(100)),
			slow, 100*float64(slow)/float64(max(r.keys.lat.n(), 1)), r.keys.lost, keyTimeout, size.streaming)
		keyNote += hostNote(r.win, &r.keys)
	}
	keyBase, keyRatio := "", ""
	for _, b := range base {
		if b.name == "ser2net-4k" || (keyBase == "" && b.keys.lat.n() > 0) {
			keyBase, keyRatio = fmt.Sprintf("%s p99 %s", b.name, ms(b.keys.lat.pct(99))), ratio(float64(b.keys.lat.pct(99)), float64(r.keys.lat.pct(99)))
		}
	}
	p99 := r.keys.lat.pct(99)
	e.add(Row{Figure: "console: keystroke echo round trip through boardvisor console, p99", Value: ms(p99), Num: float64(p99) / float64(time.Millisecond), Unit: "ms",
		Target: "< 10 ms", Baseline: keyBase, Ratio: keyRatio, Met: met(r.keys.lat.n() > 0 && r.keys.lost == 0 && p99 < 10*time.Millisecond),
		Note: keyNote + "; client -> supervisor -> pty -> the board's echo -> supervisor -> client; the baseline types over its TCP connection in its own run"})
	floorNote := r.floor.note
	if floorNote == "" {
		floorNote = fmt.Sprintf("%d keystrokes, p50 %s, p90 %s, max %s, %d over 10 ms; %d without an echo within %s", r.floor.lat.n(), ms(r.floor.lat.pct(50)), ms(r.floor.lat.pct(90)), ms(r.floor.lat.pct(100)),
			r.floor.lat.over(10*time.Millisecond), r.floor.lost, keyTimeout)
		floorNote += hostNote(r.win, &r.floor)
	}
	e.add(Row{Figure: "console: keystroke echo straight into a board's pty (the host's floor), p99", Value: ms(r.floor.lat.pct(99)), Num: float64(r.floor.lat.pct(99)) / float64(time.Millisecond), Unit: "ms",
		Target: "-", Note: floorNote + "; in the same window as the row above, half a key's period apart: the bench -> pty -> the board's echo -> the bench, with nothing between, so what the host's load alone costs an echo (two of the path's four pty hops)"})

	for _, b := range base {
		note := fmt.Sprintf("%s; %s; %d bytes lost or extra, %d boards with wrong bytes; last byte %s after the stream's end; %s",
			b.win.paceNote(size), b.win.sysNote(b.name, size.boards), b.lost, b.bad, b.drain.Round(100*time.Millisecond), b.keys.summary()) + hostCPUNote(b.win)
		e.add(Row{Figure: "console baseline: " + baselineTitle(b.name), Value: fmt.Sprintf("%.1f%% of a core", b.cpu*100), Num: b.cpu * 100, Unit: "%",
			Target: "-", Baseline: fmt.Sprintf("boardvisor %.1f%%", supCPU*100), Ratio: ratio(b.cpu, supCPU), Note: note + "; ratio = its CPU / the boardvisor supervisor's"})
	}
	if len(base) == 0 && len(size.baselines) > 0 {
		logf("console: no baseline ran")
	}
}
