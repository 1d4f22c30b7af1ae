package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/images/registrytest"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// imageLab is a coordinator, a real registry on loopback and a supervisor with one
// emulated board (QEMU under TCG: KVM hangs on these hosts) that boots leased images.
type imageLab struct {
	dir, coordAddr string
	reg            *registrytest.Registry
	sup            *proc
	cfg            string
	leases         pb.LeaseServiceClient
}

func newImageLab(t *testing.T, before string) *imageLab {
	t.Helper()
	registrytest.Need(t, "qemu-system-x86_64", "qemu-system-x86")
	registrytest.Need(t, "qemu-img", "qemu-utils")
	lab := &imageLab{dir: t.TempDir(), coordAddr: freeAddr(t)}
	lab.reg = registrytest.Start(t)
	startCoordinator(t, lab.coordAddr, filepath.Join(lab.dir, "coord"))
	lab.cfg = supervisorConfig(t, lab.dir, "lab-1", lab.coordAddr, before, "", boardSpec{"qemu-01", "device: qemu"})
	body, err := os.ReadFile(lab.cfg)
	if err != nil {
		t.Fatal(err)
	}
	body = []byte(strings.Replace(string(body), "    labels: {device: qemu}\n",
		"    labels: {device: qemu}\n    drivers: {qemu: {memoryMiB: 256, args: [-accel, tcg]}}\n", 1))
	if err := os.WriteFile(lab.cfg, body, 0o600); err != nil {
		t.Fatal(err)
	}
	lab.sup = startSupervisor(t, "supervisor", lab.cfg)
	lab.leases = leaseClient(t, lab.coordAddr)
	waitBoards(t, lab.leases, 1)
	return lab
}

// pushBootImage builds a kernel + busybox initramfs image printing banner and pushes it
// with `boardvisor image push`; it returns the image reference by digest.
func pushBootImage(t *testing.T, registry, repo, arch, banner string) string {
	t.Helper()
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	registrytest.Initramfs(t, initrd, banner)
	out, err := exec.Command(binary, "image", "push", registry+"/"+repo+":v1", "--arch", arch, "--label", "device=qemu",
		"--kernel", registrytest.Kernel(t), "--initrd", initrd, "--cmdline", "console=ttyS0 quiet panic=-1").CombinedOutput()
	if err != nil {
		t.Fatalf("image push: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if ref, ok := strings.CutPrefix(l, "image="); ok {
			return ref
		}
	}
	t.Fatalf("image push printed no image=:\n%s", out)
	return ""
}

func randomBanner(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "BOARDVISOR-IMAGE-" + hex.EncodeToString(b)
}

func leaseOf(out string) string {
	i := strings.LastIndex(out, "lease=")
	if i < 0 {
		return ""
	}
	l := out[i+len("lease="):]
	if j := strings.IndexByte(l, '\n'); j >= 0 {
		l = l[:j]
	}
	return strings.TrimSpace(l)
}

// The main image job: `boardvisor image push` builds an image from a Linux kernel and
// a busybox initramfs and pushes it to a real registry; `boardvisor shell -l
// device=qemu --image REG/REPO@sha256:...` leases the emulated board with it: the
// supervisor fetches and verifies it, boots it, and the banner its init prints is on
// the lease's console (read in the shell, and in the coordinator's console events) and
// in the lease's recording. The stages are reported as transitions with Treadmill's
// names, and the fetch's progress as SYSTEM lines.
func TestImageBootsOnQEMUBoard(t *testing.T) {
	lab := newImageLab(t, "")
	banner := randomBanner(t)
	ref := pushBootImage(t, lab.reg.Addr, "boards/linux", "amd64", banner)

	script := `echo "lease=$BOARDVISOR_LEASE"; timeout 150 ` + binary + ` console | grep -a -m1 '` + banner + `'`
	out, err := runShell(t, lab.coordAddr, "shell", "-l", "device=qemu", "--image", ref, "--duration", "10m", "--", "sh", "-c", script)
	if err != nil {
		t.Fatalf("shell: %v\n%s", err, out)
	}
	lease := leaseOf(out)
	for _, want := range []string{"Connected to device.", banner} {
		if !strings.Contains(out, want) {
			t.Fatalf("shell output lacks %q:\n%s", want, out)
		}
	}
	db := ceOpenCoordinatorDB(t, filepath.Join(lab.dir, "coord"))
	var evs []ceStoredEvent
	eventuallyWithin(t, bootWait, "the lease's console events and last transition", func() bool {
		evs = ceStoredEvents(t, db)["lab-1"]
		return strings.Contains(string(ceConsoleBytes(t, evs, lease)), banner) && strings.Contains(lastTransition(evs, lease), "LEASE_PHASE_DONE")
	})
	// The stages, in order, as Treadmill's JobInitializingStage; the fetch's progress
	// as SYSTEM lines (clients read them in LogStream and from the coordinator).
	var stages []string
	progress := 0
	for _, e := range evs {
		if e.kind == "hook_log" && e.job == lease && strings.Contains(e.payload, "LOG_SOURCE_SYSTEM") &&
			containsAll(e.payload, []string{"fetching image: ", " of ", "MiB"}) {
			progress++
		}
		if e.kind == "state_transition" && e.job == lease {
			for _, s := range []string{"FETCHING_IMAGE", "ALLOCATING", "PROVISIONING", "STARTING"} {
				if strings.Contains(e.payload, "JOB_INITIALIZING_STAGE_"+s+`"`) {
					stages = append(stages, s)
				}
			}
		}
	}
	if got := strings.Join(stages, ","); !strings.HasPrefix(got, "FETCHING_IMAGE,ALLOCATING,PROVISIONING") {
		t.Errorf("stages reported %s, want FETCHING_IMAGE,ALLOCATING,PROVISIONING first", got)
	}
	if progress == 0 {
		t.Error("no SYSTEM line said how much of the image was fetched")
	}
	rec, err := exec.Command(binary, "logs", "--console", "--lease", lease, "--state-dir", filepath.Join(lab.dir, "state")).CombinedOutput()
	if err != nil {
		t.Fatalf("logs: %v\n%s", err, rec)
	}
	if !strings.Contains(string(rec), banner) || !strings.Contains(string(rec), "Booting from ROM") {
		t.Fatalf("recording of lease %s lacks the boot (SeaBIOS loading the kernel) or the banner:\n%q", lease, tailBytes(rec, 2000))
	}
	// The store holds the image (a second lease would not fetch it) and no partial file.
	if p, _ := filepath.Glob(filepath.Join(lab.dir, "state", "images", "tmp", "*")); len(p) != 0 {
		t.Errorf("partial files in the store: %v", p)
	}
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func lastTransition(evs []ceStoredEvent, job string) string {
	last := ""
	for _, e := range evs {
		if e.kind == "state_transition" && e.job == job {
			last = e.payload
		}
	}
	return last
}

// Each image failure reaches the client as one sentence of its kind: a digest no
// location holds (ImageNotFound), a blob damaged in the registry's storage
// (ImageInvalid), an image for another architecture (refused at once by the
// coordinator when the client read the image; ImageNotCompatible from the supervisor
// when it could not).
func TestImageErrorsReachTheClient(t *testing.T) {
	lab := newImageLab(t, "")
	ref := pushBootImage(t, lab.reg.Addr, "boards/linux", "amd64", randomBanner(t))
	armRef := pushBootImage(t, lab.reg.Addr, "boards/linux-arm", "arm64", randomBanner(t))

	shell := func(image string) string {
		t.Helper()
		out, err := runShell(t, lab.coordAddr, "shell", "-l", "device=qemu", "--image", image, "--duration", "5m", "--", "true")
		if err == nil {
			t.Fatalf("shell with %s succeeded:\n%s", image, out)
		}
		if strings.Contains(out, "goroutine ") || strings.Contains(out, "rpc error") {
			t.Errorf("raw error in the shell's output:\n%s", out)
		}
		return out
	}
	wantLine := func(out string, subs ...string) {
		t.Helper()
		for _, l := range strings.Split(out, "\n") {
			if containsAll(l, subs) {
				return
			}
		}
		t.Errorf("no line of the output has all of %q:\n%s", subs, out)
	}

	// A digest nobody has: the client cannot read it either, so the supervisor tries.
	missing := ref[:strings.Index(ref, "@")] + "@sha256:" + strings.Repeat("0", 64)
	out := shell(missing)
	wantLine(out, "ImageNotFound", "no location has the manifest of image sha256:0000")

	// Another architecture: the coordinator knows no board that runs it.
	out = shell(armRef)
	wantLine(out, "no board that matches can run image", "arch=arm64")
	// ... and a client that could not read it gets the supervisor's check.
	armDigest := armRef[strings.Index(armRef, "@")+1:]
	l := createImageLease(t, lab, armDigest, "boards/linux-arm")
	done := watchEnd(t, lab, l)
	if !containsAll(done.GetStatusMessage(), []string{"ImageNotCompatible", "built for linux/arm64, but this board is amd64"}) || done.GetPhase() != pb.LeasePhase_LEASE_PHASE_FAILED {
		t.Errorf("lease for arm64: %s %q", done.GetPhase(), done.GetStatusMessage())
	}

	// A blob damaged in the registry's storage.
	digest := ref[strings.Index(ref, "@")+1:]
	damageKernel(t, lab.reg, digest)
	out = shell(ref)
	wantLine(out, "ImageInvalid", "does not match its digest", "push the image again")
}

func createImageLease(t *testing.T, lab *imageLab, digest, repo string) *pb.Lease {
	t.Helper()
	return createImageLeaseOn(t, lab, "device=qemu", digest, repo)
}

func createImageLeaseOn(t *testing.T, lab *imageLab, selector, digest, repo string) *pb.Lease {
	t.Helper()
	r, err := lab.leases.CreateLease(ctxT(t), &pb.CreateLeaseRequest{Selector: selector, Duration: durationpb.New(5 * time.Minute), ClientName: "ci",
		Image: &pb.ImageSpecification{ManifestDigest: digest, Locations: []*pb.ImageLocation{{Registry: lab.reg.Addr, Repository: repo}}}})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetLease()
}

func watchEnd(t *testing.T, lab *imageLab, l *pb.Lease) *pb.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w, err := ceWatchLease(ctx, lab.leases, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	done, err := w.until("ended", ceEnded)
	if err != nil {
		t.Fatal(err)
	}
	return done
}

// kernelDigest reads the digest of an image's kernel from the registry's storage.
func kernelDigest(t *testing.T, reg *registrytest.Registry, digest string) string {
	t.Helper()
	m, err := os.ReadFile(reg.BlobPath(digest))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(m), `"application/vnd.boardvisor.kernel","digest":"`)
	if i < 0 {
		t.Fatalf("no kernel layer in %s", m)
	}
	k := string(m[i+len(`"application/vnd.boardvisor.kernel","digest":"`):])
	return k[:strings.IndexByte(k, '"')]
}

// damageKernel overwrites bytes of an image's kernel blob in the registry's storage.
func damageKernel(t *testing.T, reg *registrytest.Registry, digest string) {
	t.Helper()
	f, err := os.OpenFile(reg.BlobPath(kernelDigest(t, reg, digest)), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("DAMAGED!"), 1<<20); err != nil {
		t.Fatal(err)
	}
}
