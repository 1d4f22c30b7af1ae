// Package registrytest gives tests real parts for image jobs: a real OCI registry on
// loopback (Debian's docker-registry, the distribution registry, run as a process
// with a filesystem storage directory), a Linux kernel from /boot and an initramfs
// whose init is a static busybox that prints a banner.
//
// Each helper skips its test with a message saying what to install when a part is
// missing, except under CI=true, where the test fails (.ci/run installs them).
package registrytest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Need skips (or under CI=true fails) t unless each command is installed; pkg names
// the Debian package that has it.
func Need(t testing.TB, cmd, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(cmd)
	if err != nil {
		missing(t, fmt.Sprintf("%s is not installed (apt-get install %s; CI installs it through .ci/run)", cmd, pkg))
	}
	return p
}

func missing(t testing.TB, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Registry is a docker-registry process serving on loopback.
type Registry struct {
	// Addr is host:port, the registry part of an image location.
	Addr string
	// Storage is the registry's storage directory.
	Storage string
	cmd     *exec.Cmd
	log     *bytes.Buffer
}

// Start starts a registry with its storage in a temporary directory; it is stopped when
// the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	Need(t, "docker-registry", "docker-registry")
	r, stop, err := StartIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return r
}

// ErrNotInstalled says that Debian's docker-registry is not on the PATH.
var ErrNotInstalled = errors.New("docker-registry is not installed (apt-get install docker-registry)")

// StartIn starts a registry with its storage and config in dir (for programs that are
// not tests: the benchmark); stop kills it.
func StartIn(dir string) (r *Registry, stop func(), err error) {
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		return nil, nil, ErrNotInstalled
	}
	r = &Registry{Storage: filepath.Join(dir, "storage")}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	for attempt := 0; ; attempt++ {
		addr, err := freePort()
		if err != nil {
			return nil, nil, err
		}
		cfg := filepath.Join(dir, "config.yml")
		conf := fmt.Sprintf(`version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
`, r.Storage, addr)
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			return nil, nil, err
		}
		cmd := exec.Command(bin, "serve", cfg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		stderr, err := cmd.StderrPipe()
		if err != nil {
			return nil, nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		r.cmd, r.Addr, r.log = cmd, addr, &bytes.Buffer{}
		ready := make(chan bool, 1)
		logDone := make(chan struct{})
		go func() {
			defer close(logDone)
			sc := bufio.NewScanner(stderr)
			sent := false
			for sc.Scan() {
				line := sc.Text()
				r.log.WriteString(line + "\n")
				if !sent && strings.Contains(line, "listening on") {
					ready <- true
					sent = true
				}
			}
			if !sent {
				ready <- false
			}
		}()
		stop = func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
			<-logDone
		}
		select {
		case ok := <-ready:
			if ok {
				return r, stop, nil
			}
		case <-time.After(30 * time.Second):
			stop()
			return nil, nil, fmt.Errorf("docker-registry did not start within 30s")
		}
		stop()
		if attempt >= 3 {
			return nil, nil, fmt.Errorf("docker-registry exited at start-up: %s", r.log.String())
		}
		// The port was taken in between: try another.
	}
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// BlobPath returns where the registry keeps a blob's bytes (to damage it in tests).
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}

// Kernel returns the path of a Linux kernel for x86-64 (Debian's linux-image-amd64).
func Kernel(t testing.TB) string {
	t.Helper()
	ks, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(ks)
	for i := len(ks) - 1; i >= 0; i-- {
		if f, err := os.Open(ks[i]); err == nil {
			f.Close()
			return ks[i]
		}
	}
	missing(t, "no readable Linux kernel under /boot (apt-get install linux-image-amd64; CI installs it through .ci/run)")
	return ""
}

// Busybox returns the path of a static busybox (Debian's busybox-static).
func Busybox(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		out, err := exec.Command("file", "-L", p).Output()
		if err == nil && bytes.Contains(out, []byte("statically linked")) {
			return p
		}
		if err != nil {
			if _, serr := os.Stat(p); serr == nil {
				return p // no file(1) to tell: take it
			}
		}
	}
	missing(t, "no static busybox (apt-get install busybox-static; CI installs it through .ci/run)")
	return ""
}

// Initramfs writes an initramfs (an uncompressed newc cpio archive) whose /init is a
// busybox shell script that prints banner on the console at boot and then once a
// second (so that a reader who connects after the boot sees it too), to path.
func Initramfs(t testing.TB, path, banner string) {
	t.Helper()
	bb, err := os.ReadFile(Busybox(t))
	if err != nil {
		t.Fatal(err)
	}
	init := "#!/bin/busybox sh\n" +
		"/bin/busybox echo " + shellQuote(banner) + "\n" +
		"n=0; while :; do /bin/busybox sleep 1; n=$((n+1)); /bin/busybox echo " + shellQuote(banner) + " up $n; done\n"
	var w cpio
	w.dir("bin", 0o755)
	w.dir("dev", 0o755)
	w.node("dev/console", 0o20600, 5, 1)
	w.file("bin/busybox", 0o755, bb)
	w.file("init", 0o755, []byte(init))
	if err := os.WriteFile(path, w.close(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// cpio writes the "newc" archive format the kernel unpacks into its initial root.
type cpio struct {
	buf bytes.Buffer
	ino int
}

func (c *cpio) header(name string, mode uint32, size int, major, minor int) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
}

func (c *cpio) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *cpio) dir(name string, perm uint32) { c.header(name, 0o040000|perm, 0, 0, 0) }

func (c *cpio) node(name string, mode uint32, major, minor int) {
	c.header(name, mode, 0, major, minor)
}

func (c *cpio) file(name string, perm uint32, data []byte) {
	c.header(name, 0o100000|perm, len(data), 0, 0)
	c.buf.Write(data)
	c.pad()
}

func (c *cpio) close() []byte {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	return c.buf.Bytes()
}

// Context returns a context for a test step, bounded by d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Proxy is an HTTP proxy in front of a registry that counts the blob downloads and can
// slow them down (a throttled link), for tests of sharing and interruption. The
// registry behind it is real; the proxy only relays.
type Proxy struct {
	// Addr is host:port, to use as the registry of an image location.
	Addr string

	mu     sync.Mutex
	gets   map[string]int
	rate   int // bytes per second of blob bodies; 0: unthrottled
	served map[string]int64
}

// NewProxy starts a proxy to the registry at target; it stops when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), gets: map[string]int{}, served: map[string]int64{}}
	u := &url.URL{Scheme: "http", Host: target}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	rp.ModifyResponse = func(resp *http.Response) error {
		if dg, ok := blobDigest(resp.Request); ok && resp.Request.Method == http.MethodGet {
			p.mu.Lock()
			p.gets[dg]++
			p.mu.Unlock()
			resp.Body = &paced{r: resp.Body, p: p, digest: dg}
		}
		return nil
	}
	srv := &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return p
}

// SetRate throttles blob bodies to bytesPerSecond (0: unthrottled).
func (p *Proxy) SetRate(bytesPerSecond int) {
	p.mu.Lock()
	p.rate = bytesPerSecond
	p.mu.Unlock()
}

// Gets returns how many times a blob was downloaded through the proxy.
func (p *Proxy) Gets(digest string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gets[digest]
}

// Served returns how many bytes of a blob the proxy relayed.
func (p *Proxy) Served(digest string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.served[digest]
}

func blobDigest(r *http.Request) (string, bool) {
	i := strings.Index(r.URL.Path, "/blobs/sha256:")
	if i < 0 {
		return "", false
	}
	return r.URL.Path[i+len("/blobs/"):], true
}

// paced relays a body at the proxy's rate, in slices of at most a 20th of a second.
type paced struct {
	r      io.ReadCloser
	p      *Proxy
	digest string
}

func (pr *paced) Read(b []byte) (int, error) {
	pr.p.mu.Lock()
	rate := pr.p.rate
	pr.p.mu.Unlock()
	if rate > 0 {
		if chunk := max(rate/20, 1); len(b) > chunk {
			b = b[:chunk]
		}
	}
	n, err := pr.r.Read(b)
	if rate > 0 && n > 0 {
		// Pacing the link to its rate (not waiting for an event).
		time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
	}
	pr.p.mu.Lock()
	pr.p.served[pr.digest] += int64(n)
	pr.p.mu.Unlock()
	return n, err
}

func (pr *paced) Close() error { return pr.r.Close() }
