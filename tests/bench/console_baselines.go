package main

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers/virtual"
	"golang.org/x/sys/unix"
)

// baseline is one forwarder's run over the same ptys and feeder.
type baseline struct {
	name  string
	cpu   float64
	win   window
	lost  int64 // bytes missing or extra at its readers
	bad   int   // boards whose bytes differ
	drain time.Duration
	keys  keystrokes // typed into the shell board over its TCP connection
}

func baselineTitle(name string) string {
	switch name {
	case "forwarder":
		return "trivial Go forwarder, pty -> TCP"
	case "ser2net":
		return "ser2net (Debian) to TCP readers, default buffers"
	case "ser2net-4k":
		return "ser2net (Debian) to TCP readers, 4 KiB buffers"
	}
	return name
}

// receivers are the TCP readers of a baseline run: one per board, each counting its
// board's bytes and their CRC-32C.
type receivers struct {
	mu     sync.Mutex
	counts []consoleCount
	total  atomic.Int64 // bytes of the streaming boards
	wg     sync.WaitGroup
	conns  []net.Conn
	// The shell board's connection and what it printed (typed into, its echo timed).
	shell    net.Conn
	shellOut *typedOutput // ended by close
}

func newReceivers(n int) *receivers {
	return &receivers{counts: make([]consoleCount, n), shellOut: newTypedOutput()}
}

func (r *receivers) write(s string) error {
	r.mu.Lock()
	c := r.shell
	r.mu.Unlock()
	if c == nil {
		return errors.New("no connection to the shell board")
	}
	_, err := io.WriteString(c, s)
	return err
}

func (r *receivers) mark() int { return r.shellOut.mark() }

func (r *receivers) waitFor(from int, want string, timeout time.Duration, stop <-chan struct{}) (time.Time, bool) {
	return r.shellOut.waitFor(from, want, timeout, stop)
}

// read reads board i's bytes from c until it closes.
func (r *receivers) read(i int, c net.Conn, streaming int) {
	r.mu.Lock()
	r.conns = append(r.conns, c)
	if i == streaming {
		r.shell = c
	}
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				r.mu.Lock()
				cc := &r.counts[i]
				cc.n += int64(n)
				cc.crc = crc32.Update(cc.crc, castagnoli, buf[:n])
				r.mu.Unlock()
				if i < streaming {
					r.total.Add(int64(n))
				} else {
					r.shellOut.add(buf[:n])
				}
			}
			if err != nil {
				return
			}
		}
	}()
}

func (r *receivers) close() {
	r.shellOut.end()
	r.mu.Lock()
	for _, c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// compare checks every streaming board's bytes: count and CRC against what it sent.
func compare(counts func(i int) consoleCount, size consoleSize) (lost int64, bad int) {
	for i := 0; i < size.streaming; i++ {
		cc := counts(i)
		if cc.n != size.perBoard {
			lost += abs64(size.perBoard - cc.n)
			bad++
			continue
		}
		if cc.crc != crc32.Checksum(virtual.RandomData(uint64(i+1), int(size.perBoard)), castagnoli) {
			bad++
		}
	}
	return lost, bad
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// waitTotal waits until want bytes arrived or the deadline passed; it returns when the
// last of them did.
func waitTotal(got func() int64, want int64, deadline time.Time) time.Time {
	for got() < want && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	return time.Now()
}

func runBaseline(e *env, f *farm, size consoleSize, name string) (*baseline, error) {
	b := &baseline{name: name}
	r := newReceivers(size.boards)
	defer r.close()
	var pid int
	switch name {
	case "forwarder":
		p, stop, err := startForwarder(e, f, size, r)
		if err != nil {
			return b, err
		}
		defer stop()
		pid = p
	case "ser2net", "ser2net-4k":
		p, stop, err := startSer2net(e, f, size, r, name == "ser2net-4k")
		if err != nil {
			return b, err
		}
		defer stop()
		pid = p
	default:
		return b, fmt.Errorf("unknown baseline %q (have %s)", name, ConsoleBaselines)
	}
	// Over TCP a serial console's Enter is a carriage return.
	loggedIn := b.keys.login(f, r, shellName, "\r")
	w, on, err := measure(f, size, map[string]int{name: pid}, func(stop <-chan struct{}) {
		b.keys.typeKeys(r, "\r", loggedIn, stop)
	})
	if err != nil {
		return b, err
	}
	end := on.Add(time.Duration(size.seconds) * time.Second)
	last := waitTotal(r.total.Load, size.perBoard*int64(size.streaming), end.Add(20*time.Second))
	time.Sleep(300 * time.Millisecond) // anything extra would show as a surplus
	if err := f.power(false); err != nil {
		return b, err
	}
	b.win, b.cpu, b.drain = w, w.cpu[name], max(last.Sub(end), 0)
	b.lost, b.bad = compare(func(i int) consoleCount {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.counts[i]
	}, size)
	logf("console %s: %.1f%% of a core; %s; %s; %d bytes lost or extra, %d boards with wrong bytes; last byte %s after the stream's end; %s",
		name, b.cpu*100, w.paceNote(size), w.sysNote(name, size.boards), b.lost, b.bad, b.drain.Round(time.Millisecond), b.keys.summary())
	return b, nil
}

// startForwarder runs the trivial Go forwarder (this binary's `child forwarder`), which
// connects one TCP stream per pty to a listener here.
func startForwarder(e *env, f *farm, size consoleSize, r *receivers) (int, func(), error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	list := filepath.Join(e.dir, "ptys.txt")
	if err := os.WriteFile(list, []byte(strings.Join(f.paths, "\n")+"\n"), 0o600); err != nil {
		lis.Close()
		return 0, nil, err
	}
	cmd := exec.Command(e.self, "child", "forwarder", "-ptys", list, "-addr", lis.Addr().String())
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	in, err := cmd.StdinPipe()
	if err != nil {
		lis.Close()
		return 0, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		lis.Close()
		return 0, nil, err
	}
	if err := cmd.Start(); err != nil {
		lis.Close()
		return 0, nil, err
	}
	stop := func() {
		in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		lis.Close()
	}
	accepted := make(chan error, 1)
	go func() {
		for i := 0; i < size.boards; i++ {
			c, err := lis.Accept()
			if err != nil {
				accepted <- err
				return
			}
			line, err := bufio.NewReader(io.LimitReader(c, 16)).ReadString('\n')
			idx, aerr := strconv.Atoi(strings.TrimSpace(line))
			if err != nil || aerr != nil || idx < 0 || idx >= size.boards {
				c.Close()
				accepted <- fmt.Errorf("forwarder connection with a bad header %q", line)
				return
			}
			r.read(idx, c, size.streaming)
		}
		accepted <- nil
	}()
	ready := make(chan error, 1)
	go func() {
		l, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(l) != "READY" {
			err = fmt.Errorf("forwarder said %q", l)
		}
		ready <- err
	}()
	for _, ch := range []chan error{ready, accepted} {
		select {
		case err := <-ch:
			if err != nil {
				stop()
				return 0, nil, err
			}
		case <-time.After(30 * time.Second):
			stop()
			return 0, nil, errors.New("forwarder not ready within 30s")
		}
	}
	return cmd.Process.Pid, stop, nil
}

// runForwarder is the trivial forwarder: each pty of -ptys (a file, one path a line)
// opened raw under Go's poller and copied to its own TCP connection to -addr (after a
// line with its index), read by read, as fast as the bytes come; what comes back on the
// connection is written to the pty. It prints READY and
// runs until its input ends.
func runForwarder(e *env) error {
	raiseNoFile()
	b, err := os.ReadFile(e.flags.Lookup("ptys").Value.String())
	if err != nil {
		return err
	}
	addr := e.flags.Lookup("addr").Value.String()
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i, p := range strings.Fields(string(b)) {
		f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		files = append(files, f)
		if err := makeRawTTY(f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(c, "%d\n", i); err != nil {
			return err
		}
		go func() { _, _ = io.Copy(f, c) }() // what is typed, to the board
		go func() {
			defer c.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// makeRawTTY puts a terminal in raw mode at 115200 baud.
func makeRawTTY(f *os.File) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var terr error
	err = sc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			terr = err
			return
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD
		t.Cflag |= unix.CS8 | unix.B115200
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		terr = unix.IoctlSetTermios(int(fd), unix.TCSETS, t)
	})
	if err != nil {
		return err
	}
	return terr
}

// startSer2net runs ser2net with one TCP port per pty and connects a reader to each.
func startSer2net(e *env, f *farm, size consoleSize, r *receivers, bigBuffers bool) (int, func(), error) {
	bin, err := exec.LookPath("ser2net")
	if err != nil {
		for _, p := range []string{"/usr/sbin/ser2net", "/usr/local/sbin/ser2net"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return 0, nil, errors.New("ser2net is not installed (make bench installs it with apt-get install ser2net; the row is skipped)")
	}
	// Free ports: hold them all, then let go and hand them to ser2net.
	var ports []int
	var hold []net.Listener
	for range size.boards {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, h := range hold {
				h.Close()
			}
			return 0, nil, err
		}
		hold = append(hold, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, h := range hold {
		h.Close()
	}
	var cfg strings.Builder
	cfg.WriteString("%YAML 1.1\n---\n")
	for i, p := range f.paths[:size.boards] {
		fmt.Fprintf(&cfg, "connection: &c%d\n  accepter: tcp,127.0.0.1,%d\n  connector: serialdev,%s,115200n81,local\n  options:\n    kickolduser: true\n", i, ports[i], p)
		if bigBuffers {
			cfg.WriteString("    dev-to-net-bufsize: 4096\n")
		}
	}
	path := filepath.Join(e.dir, "ser2net.yaml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		return 0, nil, err
	}
	cmd := exec.Command(bin, "-n", "-u", "-c", path)
	var errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &errOut, &errOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start ser2net: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for i, p := range ports {
		for {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err == nil {
				r.read(i, c, size.streaming)
				break
			}
			select {
			case <-done:
				return 0, nil, fmt.Errorf("ser2net exited: %s", oneLine(tail(errOut.String(), 500)))
			default:
			}
			if time.Now().After(deadline) {
				stop()
				return 0, nil, fmt.Errorf("ser2net does not listen on port %d after 30s: %v", p, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// ser2net opens a device when its port is connected to: wait until it has them all.
	for openPTYs(cmd.Process.Pid) < size.boards {
		if time.Now().After(deadline) {
			stop()
			return 0, nil, fmt.Errorf("ser2net opened %d of %d ptys within 30s: %s", openPTYs(cmd.Process.Pid), size.boards, oneLine(tail(errOut.String(), 300)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd.Process.Pid, stop, nil
}

// openPTYs counts the pty slaves a process has open.
func openPTYs(pid int) int {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(t, "/dev/pts/") {
			n++
		}
	}
	return n
}
