package tests

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/images/registrytest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// virtualImageLab is a coordinator, a real registry behind a counting, throttling proxy,
// and a supervisor with two simulated boards: they take image jobs (their hooks get
// the image's files) without booting them, for the tests of fetching.
func virtualImageLab(t *testing.T) (*imageLab, *registrytest.Proxy) {
	t.Helper()
	lab := &imageLab{dir: t.TempDir(), coordAddr: freeAddr(t)}
	lab.reg = registrytest.Start(t)
	proxy := registrytest.NewProxy(t, lab.reg.Addr)
	startCoordinator(t, lab.coordAddr, filepath.Join(lab.dir, "coord"))
	before := `test -r "$BOARDVISOR_IMAGE_DIR/kernel" && echo "JMP_INFO: image files: $(ls "$BOARDVISOR_IMAGE_DIR")"`
	lab.cfg = supervisorConfig(t, lab.dir, "lab-1", lab.coordAddr, before, "", boardSpec{"virt-01", "device: virt"}, boardSpec{"virt-02", "device: virt"})
	body, _ := os.ReadFile(lab.cfg)
	body = []byte(strings.ReplaceAll(string(body), "    labels: {device: virt}\n", "    labels: {device: virt}\n    drivers: {virtual: {}}\n"))
	if err := os.WriteFile(lab.cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	lab.sup = startSupervisor(t, "supervisor", lab.cfg)
	lab.leases = leaseClient(t, lab.coordAddr)
	waitBoards(t, lab.leases, 2)
	return lab, proxy
}

// pushRandomImage pushes an image whose "kernel" is size random bytes.
func pushRandomImage(t *testing.T, registry, repo string, size int) (digest, kernel string) {
	t.Helper()
	dir := t.TempDir()
	k := filepath.Join(dir, "kernel")
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "image", "push", registry+"/"+repo+":v1", "--arch", "amd64", "--kernel", k).CombinedOutput()
	if err != nil {
		t.Fatalf("image push: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if d, ok := strings.CutPrefix(l, "digest="); ok {
			digest = d
		}
	}
	sum := sha256.Sum256(b)
	return digest, "sha256:" + hex.EncodeToString(sum[:])
}

func partialsIn(t *testing.T, lab *imageLab) []string {
	t.Helper()
	p, _ := filepath.Glob(filepath.Join(lab.dir, "state", "images", "tmp", "*"))
	return p
}

// Two leases of one image at once (two boards) download each blob once; a StopJob
// during a throttled download ends the lease at once — long before the download could
// have finished — and leaves no partial blob in the store.
func TestImageFetchSharedAndStopped(t *testing.T) {
	lab, proxy := virtualImageLab(t)

	digest, kernel := pushRandomImage(t, lab.reg.Addr, "boards/shared", 6<<20)
	proxy.SetRate(3 << 20) // two seconds for the kernel: both leases fetch at once
	var wg sync.WaitGroup
	ended := make([]*pb.Lease, 2)
	for i := range ended {
		l := createImageLeaseOn(t, &imageLab{reg: &registrytest.Registry{Addr: proxy.Addr}, leases: lab.leases}, "device=virt", digest, "boards/shared")
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := ceWatchLease(ctxT(t), lab.leases, l.GetId())
			if err != nil {
				t.Error(err)
				return
			}
			r, err := w.ready()
			if err != nil {
				t.Error(err)
				return
			}
			ended[i] = r
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if ended[0].GetBoard() == ended[1].GetBoard() {
		t.Fatalf("both leases on %s", ended[0].GetBoard())
	}
	if n := proxy.Gets(kernel); n != 1 {
		t.Errorf("two leases of one image downloaded its kernel %d times, want once", n)
	}
	if n := proxy.Gets(digest); n > 1 {
		t.Errorf("manifest downloaded %d times", n)
	}
	for _, l := range ended {
		if _, err := lab.leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "test"}); err != nil {
			t.Fatal(err)
		}
	}

	// A 24 MiB image at 1 MiB/s: a StopJob two seconds in.
	digest, kernel = pushRandomImage(t, lab.reg.Addr, "boards/slow", 24<<20)
	proxy.SetRate(1 << 20)
	l := createImageLeaseOn(t, &imageLab{reg: &registrytest.Registry{Addr: proxy.Addr}, leases: lab.leases}, "device=virt", digest, "boards/slow")
	ceEventually(t, "the download to be under way", func() bool { return proxy.Served(kernel) > 1<<20 })
	if len(partialsIn(t, lab)) != 1 {
		t.Errorf("during the download: partial files %v, want one", partialsIn(t, lab))
	}
	w, err := ceWatchLease(ctxT(t), lab.leases, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if _, err := lab.leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "stopped during its fetch"}); err != nil {
		t.Fatal(err)
	}
	done, err := w.done()
	took := time.Since(at)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lease %s ended %s after the StopJob (%s of %s fetched)", done.GetId(), took, fmt.Sprint(proxy.Served(kernel)), fmt.Sprint(24<<20))
	if took > 5*time.Second || proxy.Served(kernel) >= 24<<20 {
		t.Errorf("the stop waited for the download: %s, %d bytes served", took, proxy.Served(kernel))
	}
	if p := partialsIn(t, lab); len(p) != 0 {
		t.Errorf("partial files left after the stop: %v", p)
	}
	if _, err := os.Stat(filepath.Join(lab.dir, "state", "images", "blobs", "sha256", strings.TrimPrefix(kernel, "sha256:"))); err == nil {
		t.Error("the interrupted blob is in the store")
	}
}

// kill -9 of the supervisor during an image fetch, then during the board's
// provisioning: after each start the lease goes on (the fetch resumes from what the
// store verified; the provisioning starts over) to READY, and its console shows the
// whole image booting, never a partial one.
func TestImageLeaseSurvivesKill9(t *testing.T) {
	registrytest.Need(t, "qemu-system-x86_64", "qemu-system-x86")
	registrytest.Need(t, "qemu-img", "qemu-utils")
	dir := t.TempDir()
	// A QEMU that takes 4 s to start widens the provisioning window for the kill.
	wrapDir := filepath.Join(dir, "bin")
	os.MkdirAll(wrapDir, 0o755)
	real, _ := exec.LookPath("qemu-system-x86_64")
	wrapper := filepath.Join(wrapDir, "qemu-system-x86_64")
	os.WriteFile(wrapper, []byte("#!/bin/sh\n[ -e "+filepath.Join(dir, "slow")+" ] && sleep 4\nexec "+real+" \"$@\"\n"), 0o755)

	lab := &imageLab{dir: dir, coordAddr: freeAddr(t)}
	lab.reg = registrytest.Start(t)
	proxy := registrytest.NewProxy(t, lab.reg.Addr)
	startCoordinator(t, lab.coordAddr, filepath.Join(dir, "coord"))
	lab.cfg = supervisorConfig(t, dir, "lab-1", lab.coordAddr, "", "", boardSpec{"qemu-01", "device: qemu"})
	body, _ := os.ReadFile(lab.cfg)
	body = []byte(strings.Replace(string(body), "    labels: {device: qemu}\n",
		"    labels: {device: qemu}\n    drivers: {qemu: {binary: "+wrapper+", memoryMiB: 256, args: [-accel, tcg]}}\n", 1))
	os.WriteFile(lab.cfg, body, 0o600)
	sup := startSupervisor(t, "supervisor-1", lab.cfg)
	lab.leases = leaseClient(t, lab.coordAddr)
	waitBoards(t, lab.leases, 1)
	db := ceOpenCoordinatorDB(t, filepath.Join(dir, "coord"))

	for round, when := range []string{"fetch", "provisioning"} {
		banner := randomBanner(t)
		ref := pushBootImage(t, lab.reg.Addr, fmt.Sprintf("boards/linux-%d", round), "amd64", banner)
		digest := ref[strings.Index(ref, "@")+1:]
		stage := "JOB_INITIALIZING_STAGE_FETCHING_IMAGE"
		if when == "fetch" {
			proxy.SetRate(1 << 20) // the kernel takes 8 s
		} else {
			proxy.SetRate(0)
			os.WriteFile(filepath.Join(dir, "slow"), nil, 0o644)
			stage = "JOB_INITIALIZING_STAGE_PROVISIONING"
		}
		l := createImageLease(t, &imageLab{reg: &registrytest.Registry{Addr: proxy.Addr}, leases: lab.leases}, digest, fmt.Sprintf("boards/linux-%d", round))
		ceEventually(t, "the lease in its "+when, func() bool {
			for _, e := range ceStoredEvents(t, db)["lab-1"] {
				if e.job == l.GetId() && e.kind == "state_transition" && strings.Contains(e.payload, stage+`"`) {
					return when != "fetch" || len(partialsIn(t, lab)) == 1
				}
			}
			return false
		})
		if when == "provisioning" {
			time.Sleep(time.Second) // into the slow start (nothing to await: the wrapper sleeps)
		}
		kernel := kernelDigest(t, lab.reg, digest)
		gets := proxy.Gets(kernel)
		sup.kill()
		proxy.SetRate(0)
		os.Remove(filepath.Join(dir, "slow"))
		sup = startSupervisor(t, fmt.Sprintf("supervisor-%d", round+2), lab.cfg)
		w, err := ceWatchLease(ctxT(t), lab.leases, l.GetId())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.ready(); err != nil {
			t.Fatalf("after kill -9 during the %s: %v\n%s", when, err, sup.output())
		}
		eventuallyWithin(t, bootWait, "the banner on the lease's console", func() bool {
			return strings.Contains(string(ceConsoleBytes(t, ceStoredEvents(t, db)["lab-1"], l.GetId())), banner)
		})
		console := string(ceConsoleBytes(t, ceStoredEvents(t, db)["lab-1"], l.GetId()))
		for _, bad := range []string{"Kernel panic", "unpacking failed", "junk in compressed archive", "No working init"} {
			if strings.Contains(console, bad) {
				t.Errorf("after kill -9 during the %s the console shows %q:\n%s", when, bad, console)
			}
		}
		if p := partialsIn(t, lab); len(p) != 0 {
			t.Errorf("partial files after the restart: %v", p)
		}
		// An image fetched before the kill is not fetched again.
		if n := proxy.Gets(kernel); when == "provisioning" && n != gets {
			t.Errorf("after kill -9 during the provisioning the kernel was downloaded again (%d downloads, %d before the kill)", n, gets)
		}
		if _, err := lab.leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: l.GetId(), Reason: "test"}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.done(); err != nil {
			t.Fatal(err)
		}
	}
}

// bootWait bounds a kernel's boot under TCG on a loaded machine (about 10 s idle).
const bootWait = 3 * time.Minute

func eventuallyWithin(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
