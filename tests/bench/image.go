package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/boardvisor/boardvisor/images"
	"github.com/boardvisor/boardvisor/images/registrytest"
	"github.com/boardvisor/boardvisor/jobs"
)

// imageBlob is the size of the image the image scenario fetches.
const imageBlob = 256 << 20

// runImage measures the image store's fetch + verify throughput from a loopback
// registry (Debian's docker-registry): an image with a 256 MiB kernel is fetched into
// an empty store (manifest, config, then the kernel streamed through the digest check
// into a temporary file, synced and renamed). The baseline is a plain HTTP GET of the
// same blob from the same registry into a file, in the same run. Best of three each.
func runImage(e *env) error {
	reg, stop, err := registrytest.StartIn(filepath.Join(e.dir, "registry"))
	if errors.Is(err, registrytest.ErrNotInstalled) {
		e.add(Row{Figure: "image fetch + verify from a loopback registry", Value: "skipped",
			Note: err.Error() + "; make bench installs it; the row is skipped"})
		return nil
	}
	if err != nil {
		return err
	}
	defer stop()
	kernel := filepath.Join(e.dir, "kernel")
	f, err := os.Create(kernel)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, imageBlob); err != nil {
		return err
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	im, err := images.Push(ctx, images.PushOptions{Ref: reg.Addr + "/bench/kernel:v1", Files: map[images.Role]string{images.RoleKernel: kernel},
		Config: images.Config{Architecture: "amd64"}})
	if err != nil {
		return err
	}
	desc, err := fileDigest(kernel)
	if err != nil {
		return err
	}
	raw := func(i int) (time.Duration, error) {
		start := time.Now()
		resp, err := http.Get("http://" + reg.Addr + "/v2/bench/kernel/blobs/" + desc)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		out, err := os.Create(filepath.Join(e.dir, fmt.Sprintf("raw-%d", i)))
		if err != nil {
			return 0, err
		}
		defer os.Remove(out.Name())
		defer out.Close()
		if n, err := io.Copy(out, resp.Body); err != nil || n != imageBlob {
			return 0, fmt.Errorf("raw download: %d bytes, %v", n, err)
		}
		if err := out.Sync(); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	fetch := func(i int) (time.Duration, error) {
		dir := filepath.Join(e.dir, fmt.Sprintf("store-%d", i))
		defer os.RemoveAll(dir)
		s, err := images.Open(images.Options{Dir: dir})
		if err != nil {
			return 0, err
		}
		defer s.Close()
		start := time.Now()
		if _, err := s.Fetch(ctx, "bench", jobs.Image{Digest: im.Digest, Locations: im.Locations}, nil, nil); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	best := func(f func(int) (time.Duration, error)) (time.Duration, error) {
		var b time.Duration
		for i := 0; i < 3; i++ {
			d, err := f(i)
			if err != nil {
				return 0, err
			}
			if b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	rawD, err := best(raw)
	if err != nil {
		return err
	}
	fetchD, err := best(fetch)
	if err != nil {
		return err
	}
	mb := float64(imageBlob) / (1 << 20)
	rawRate, fetchRate := mb/rawD.Seconds(), mb/fetchD.Seconds()
	ratio := fetchRate / rawRate
	e.add(Row{Figure: "image fetch + verify from a loopback registry", Value: fmt.Sprintf("%.0f MiB/s", fetchRate), Num: fetchRate, Unit: "MiB/s",
		Target: "≥ 0.5× raw HTTP", Baseline: fmt.Sprintf("%.0f MiB/s raw HTTP GET of the same blob", rawRate), Ratio: fmt.Sprintf("%.2f", ratio),
		Met: met(ratio >= 0.5), Note: "256 MiB kernel blob, docker-registry on loopback; store: oras-go fetch, SHA-256 check, temp file, fsync, rename; best of 3"})
	return nil
}

func fileDigest(path string) (string, error) {
	d, err := images.FileDigest(path)
	return d, err
}
