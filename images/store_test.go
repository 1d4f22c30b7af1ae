package images_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/images"
	"github.com/boardvisor/boardvisor/images/registrytest"
	"github.com/boardvisor/boardvisor/jobs"
)

// testImage pushes an image of random files (a kernel of kernelSize bytes and a small
// initrd) for arch to the registry and returns it with its files' contents.
func testImage(t *testing.T, reg, repo, arch string, kernelSize int) (jobs.Image, map[images.Role][]byte) {
	t.Helper()
	dir := t.TempDir()
	files := map[images.Role]string{}
	data := map[images.Role][]byte{}
	for r, n := range map[images.Role]int{images.RoleKernel: kernelSize, images.RoleInitrd: 64 << 10} {
		b := make([]byte, n)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, string(r))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[r], data[r] = p, b
	}
	im, err := images.Push(registrytest.Context(t, time.Minute), images.PushOptions{Ref: reg + "/" + repo + ":v1", Files: files,
		Config: images.Config{Architecture: arch, Cmdline: "console=ttyS0", Labels: map[string]string{"device": "qemu"}}})
	if err != nil {
		t.Fatal(err)
	}
	return im, data
}

func openStore(t *testing.T, dir string, max int64) *images.Store {
	t.Helper()
	s, err := images.Open(images.Options{Dir: dir, MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func kindOf(t *testing.T, err error, want jobs.JobErrorKind) string {
	t.Helper()
	k, ok := jobs.KindOf(err)
	if !ok || k != want {
		t.Fatalf("error %v (kind %v), want %s", err, k, want)
	}
	msg := err.(*jobs.JobError).Description
	if strings.Count(strings.TrimSuffix(msg, "."), "\n") > 0 {
		t.Errorf("error is not one line: %q", msg)
	}
	return msg
}

// partials lists what is left under the store's temporary names.
func partials(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// An image pushed to a real registry is fetched, every file verified, and its files
// are in the store with their bytes; progress goes up to the whole image; a second
// fetch uses the store and downloads nothing.
func TestFetchFromRegistry(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Addr)
	im, data := testImage(t, proxy.Addr, "boards/kernel", "amd64", 3<<20)
	dir := t.TempDir()
	s := openStore(t, dir, 0)
	var last, total int64
	var calls int
	got, err := s.Fetch(registrytest.Context(t, time.Minute), "job-1", im, nil, func(done, tot int64) {
		if done < last {
			t.Errorf("progress went back: %d after %d", done, last)
		}
		last, total = done, tot
		calls++
	})
	if err != nil {
		t.Fatal(err)
	}
	if last != total || total < 3<<20 || calls < 3 {
		t.Errorf("progress ended at %d of %d after %d calls", last, total, calls)
	}
	if got.Config.Architecture != "amd64" || got.Config.Cmdline != "console=ttyS0" {
		t.Errorf("config %+v", got.Config)
	}
	for r, want := range data {
		p, ok := got.Path(r)
		if !ok {
			t.Fatalf("no %s", r)
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, want) {
			t.Errorf("%s: %d bytes, %v", r, len(b), err)
		}
	}
	f, _ := got.Layout.File(images.RoleKernel)
	if n := proxy.Gets(f.Digest); n != 1 {
		t.Errorf("kernel downloaded %d times", n)
	}
	if _, err := s.Fetch(registrytest.Context(t, time.Minute), "job-2", im, nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := proxy.Gets(f.Digest); n != 1 {
		t.Errorf("second fetch downloaded the kernel again (%d downloads)", n)
	}
	if p := partials(t, dir); len(p) != 0 {
		t.Errorf("partial files left: %v", p)
	}
}

// Locations are tried in order: a registry that is down, one without the image, then
// one with it. A digest no location has is ImageNotFound, naming every location.
func TestLocationsInOrderAndNotFound(t *testing.T) {
	reg := registrytest.Start(t)
	im, _ := testImage(t, reg.Addr, "boards/kernel", "amd64", 256<<10)
	s := openStore(t, t.TempDir(), 0)
	im.Locations = append([]jobs.ImageLocation{{Registry: "127.0.0.1:1", Repository: "down"}, {Registry: reg.Addr, Repository: "boards/other"}}, im.Locations...)
	if _, err := s.Fetch(registrytest.Context(t, time.Minute), "j", im, nil, nil); err != nil {
		t.Fatalf("fetch with a working third location: %v", err)
	}
	missing := jobs.Image{Digest: "sha256:" + strings.Repeat("0", 64), Locations: im.Locations[1:]}
	msg := kindOf(t, mustFail(s.Fetch(registrytest.Context(t, time.Minute), "j2", missing, nil, nil)), jobs.KindImageNotFound)
	for _, want := range []string{"no location has the manifest of image sha256:000", reg.Addr + "/boards/other: not found", reg.Addr + "/boards/kernel: not found"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
}

func mustFail(_ *images.Image, err error) error { return err }

// A blob damaged in the registry's storage (same size, other bytes) is ImageInvalid,
// and nothing of it is kept: not as a blob, not as a partial file.
func TestDamagedBlobIsInvalid(t *testing.T) {
	reg := registrytest.Start(t)
	im, _ := testImage(t, reg.Addr, "boards/kernel", "amd64", 1<<20)
	dir := t.TempDir()
	s := openStore(t, dir, 0)
	// Read the manifest's layout through the store's own parser.
	lay := layoutOf(t, reg, im)
	k, _ := lay.File(images.RoleKernel)
	damage(t, reg.BlobPath(k.Digest))
	msg := kindOf(t, mustFail(s.Fetch(registrytest.Context(t, time.Minute), "j", im, nil, nil)), jobs.KindImageInvalid)
	if !strings.Contains(msg, "does not match its digest") || !strings.Contains(msg, k.Digest) {
		t.Errorf("message %q", msg)
	}
	if s.Has(k.Digest) {
		t.Error("the damaged blob is in the store")
	}
	if p := partials(t, dir); len(p) != 0 {
		t.Errorf("partial files left: %v", p)
	}
	if _, err := os.Stat(s.Path(k.Digest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob file: %v", err)
	}
}

func damage(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("DAMAGED!"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func layoutOf(t *testing.T, reg *registrytest.Registry, im jobs.Image) *images.Layout {
	t.Helper()
	data, err := os.ReadFile(reg.BlobPath(im.Digest))
	if err != nil {
		t.Fatal(err)
	}
	l, err := images.Parse(im.Digest, data)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// An image for another architecture is refused by the board's check before any of
// its files is fetched: ImageNotCompatible.
func TestNotCompatibleBeforeFiles(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Addr)
	im, _ := testImage(t, proxy.Addr, "boards/arm", "arm64", 1<<20)
	s := openStore(t, t.TempDir(), 0)
	accept := func(c images.Config) error {
		return images.Compatible(im.Digest, c, "amd64", map[string]string{"device": "qemu"})
	}
	msg := kindOf(t, mustFail(s.Fetch(registrytest.Context(t, time.Minute), "j", im, accept, nil)), jobs.KindImageNotCompatible)
	if !strings.Contains(msg, "built for linux/arm64, but this board is amd64") {
		t.Errorf("message %q", msg)
	}
	k, _ := layoutOf(t, reg, im).File(images.RoleKernel)
	if n := proxy.Gets(k.Digest); n != 0 {
		t.Errorf("the kernel of an incompatible image was downloaded %d times", n)
	}
	err := images.Compatible(im.Digest, images.Config{Architecture: "arm64", Labels: map[string]string{"device": "rpi4"}}, "arm64", map[string]string{"device": "rpi5"})
	if k, _ := jobs.KindOf(err); k != jobs.KindImageNotCompatible || !strings.Contains(err.Error(), "needs a board labelled device=rpi4, and this board has device=rpi5") {
		t.Errorf("labels: %v", err)
	}
}

// A fetch stopped during a throttled download returns within a second, and the store
// keeps nothing of the blob: no partial file, no blob.
func TestStopDuringThrottledDownload(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Addr)
	im, _ := testImage(t, proxy.Addr, "boards/kernel", "amd64", 8<<20)
	k, _ := layoutOf(t, reg, im).File(images.RoleKernel)
	proxy.SetRate(512 << 10)
	dir := t.TempDir()
	s := openStore(t, dir, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		_, err := s.Fetch(ctx, "j", im, nil, func(d, total int64) {
			if d > 64<<10 {
				once.Do(func() { close(started) })
			}
		})
		done <- err
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the download did not start")
	}
	if len(partials(t, dir)) != 1 {
		t.Errorf("during the download: partial files %v, want one", partials(t, dir))
	}
	at := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("stopped fetch: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fetch did not return after its context ended")
	}
	t.Logf("fetch returned %s after the stop", time.Since(at))
	if p := partials(t, dir); len(p) != 0 {
		t.Errorf("partial files left after the stop: %v", p)
	}
	if s.Has(k.Digest) || proxy.Served(k.Digest) >= k.Size {
		t.Errorf("blob kept: %v, served %d of %d", s.Has(k.Digest), proxy.Served(k.Digest), k.Size)
	}
}

// Two fetches of one image at once download each blob once; a fetch that gives up
// does not stop the download the other still waits for.
func TestConcurrentFetchesShareDownloads(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Addr)
	im, data := testImage(t, proxy.Addr, "boards/kernel", "amd64", 4<<20)
	lay := layoutOf(t, reg, im)
	proxy.SetRate(4 << 20)
	s := openStore(t, t.TempDir(), 0)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	quitter, quit := context.WithCancel(context.Background())
	defer quit()
	for i, ctx := range []context.Context{context.Background(), context.Background(), quitter} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.Fetch(ctx, "job-"+string(rune('a'+i)), im, nil, func(d, total int64) {
				if i == 2 && d > 1<<20 {
					quit()
				}
			})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], context.Canceled) {
		t.Fatalf("fetches: %v", errs)
	}
	for _, f := range append(lay.Files, images.File{Digest: lay.Config.Digest.String()}) {
		if n := proxy.Gets(f.Digest); n != 1 {
			t.Errorf("blob %s downloaded %d times, want once", f.Digest, n)
		}
	}
	got, err := s.Image(im.Digest)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := got.Path(images.RoleKernel)
	if b, _ := os.ReadFile(p); !bytes.Equal(b, data[images.RoleKernel]) {
		t.Error("kernel bytes differ")
	}
}

// The store stays under its bound by evicting blobs of images no live lease keeps,
// least recently used first; an image a live lease keeps is never evicted: a fetch
// that would need its room fails with a clear error instead.
func TestEvictionNeverTakesALiveLeasesImage(t *testing.T) {
	reg := registrytest.Start(t)
	a, _ := testImage(t, reg.Addr, "boards/a", "amd64", 2<<20)
	b, _ := testImage(t, reg.Addr, "boards/b", "amd64", 2<<20)
	c, _ := testImage(t, reg.Addr, "boards/c", "amd64", 2<<20)
	la, lb := layoutOf(t, reg, a), layoutOf(t, reg, b)
	ka, _ := la.File(images.RoleKernel)
	kb, _ := lb.File(images.RoleKernel)
	s := openStore(t, t.TempDir(), 5<<20) // room for two images, not three
	ctx := registrytest.Context(t, time.Minute)
	if _, err := s.Fetch(ctx, "ja", a, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, "jb", b, nil, nil); err != nil {
		t.Fatal(err)
	}
	// Both are kept by live leases: c does not fit.
	msg := kindOf(t, mustFail(s.Fetch(ctx, "jc", c, nil, nil)), jobs.KindInternalError)
	if !strings.Contains(msg, "the image store is full") || !s.Has(ka.Digest) || !s.Has(kb.Digest) {
		t.Fatalf("full store: %q; a kept %v, b kept %v", msg, s.Has(ka.Digest), s.Has(kb.Digest))
	}
	s.Release("jc")
	// a's lease ends: its blobs make room for c; b's stay.
	s.Release("ja")
	if _, err := s.Fetch(ctx, "jc", c, nil, nil); err != nil {
		t.Fatal(err)
	}
	if s.Has(ka.Digest) || !s.Has(kb.Digest) {
		t.Errorf("after eviction: a kept %v (want false), b kept %v (want true)", s.Has(ka.Digest), s.Has(kb.Digest))
	}
	if used, max := s.Usage(); used > max {
		t.Errorf("store holds %d bytes over its bound %d", used, max)
	}
}

// After a restart (kill -9) the store removes partial downloads and checks what it
// holds before handing it out: a damaged blob is never used, the image is
// CannotResume; a sound image is used without the network.
func TestReopenDropsPartialsAndChecksBlobs(t *testing.T) {
	reg := registrytest.Start(t)
	proxy := registrytest.NewProxy(t, reg.Addr)
	im, _ := testImage(t, proxy.Addr, "boards/kernel", "amd64", 1<<20)
	dir := t.TempDir()
	s1, err := images.Open(images.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Fetch(registrytest.Context(t, time.Minute), "j", im, nil, nil); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	if err := os.WriteFile(filepath.Join(dir, "tmp", "abc.123.partial"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir, 0)
	if p := partials(t, dir); len(p) != 0 {
		t.Errorf("partial files after reopen: %v", p)
	}
	got, err := s2.Image(im.Digest)
	if err != nil {
		t.Fatalf("sound image after reopen: %v", err)
	}
	k, _ := got.Layout.File(images.RoleKernel)
	if n := proxy.Gets(k.Digest); n != 1 {
		t.Errorf("kernel downloaded %d times", n)
	}
	s2.Close()
	damage(t, s2.Path(k.Digest))
	s3 := openStore(t, dir, 0)
	msg := kindOf(t, mustFail(s3.Image(im.Digest)), jobs.KindCannotResume)
	if !strings.Contains(msg, "does not match its digest") || s3.Has(k.Digest) {
		t.Errorf("damaged blob after reopen: %q, kept %v", msg, s3.Has(k.Digest))
	}
	// A fetch gets it again.
	if _, err := s3.Fetch(registrytest.Context(t, time.Minute), "j", im, nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := proxy.Gets(k.Digest); n != 2 {
		t.Errorf("kernel downloaded %d times, want 2", n)
	}
}
