package recording_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/drivers/recording"
	"github.com/boardvisor/boardvisor/internal/diskspace"
	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory, or skips the test where
// that is not permitted (it fails under CI=true).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		msg := fmt.Sprintf("cannot mount a tmpfs to fill (%v): run as root, or in a container with CAP_SYS_ADMIN", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("ballast-%d", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for n := len(buf); n > 0; n /= 2 {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return path
}

// waitState waits until the monitor's state satisfies ok.
func waitState(t *testing.T, disk *diskspace.Monitor, what string, ok func() bool) {
	t.Helper()
	for {
		ch := disk.Changed()
		if ok() {
			return
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("the monitor never says %s", what)
		}
	}
}

func chunk(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 1000) }

// The recording is the first thing given up on a full disk: with the state directory's
// monitor saying so, writes drop their bytes without an error, the gap is recorded
// exactly (file, offset, bytes) once space returns, and recording goes on.
func TestFullDiskStopsTheRecordingAndRecordsTheGap(t *testing.T) {
	dir := mountTmpfs(t, 2<<20)
	disk, err := diskspace.Open(diskspace.Options{Dir: dir, ReserveBytes: -1, LowBytes: 256 << 10, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	r := open(t, recording.Options{StateDir: dir, Board: "b1", Disk: disk})
	if err := r.StartLease("lease-1"); err != nil {
		t.Fatal(err)
	}
	var want []byte
	for i := 0; i < 100; i++ {
		write(t, r, string(chunk(i)))
		want = append(want, chunk(i)...)
	}
	ballast := fill(t, dir)
	waitState(t, disk, "low", func() bool { return disk.Low() })
	var dropped int64
	for i := 100; i < 300; i++ {
		write(t, r, string(chunk(i))) // no error: dropping is the policy
		dropped += 1000
	}
	if r.Dropped() != dropped {
		t.Fatalf("Dropped() = %d, want %d", r.Dropped(), dropped)
	}
	os.Remove(ballast)
	waitState(t, disk, "back to normal", func() bool { return !disk.Low() })
	for i := 300; i < 310; i++ {
		write(t, r, string(chunk(i)))
		want = append(want, chunk(i)...)
	}
	if got := readLease(t, dir, "b1", "lease-1"); got != string(want) {
		t.Fatalf("lease recording: %d bytes, want %d (the bytes before and after the gap)", len(got), len(want))
	}
	gaps, err := recording.Gaps(dir, "b1")
	if err != nil || len(gaps) != 1 {
		t.Fatalf("gaps: %v %v", gaps, err)
	}
	g := gaps[0]
	if g.Bytes != dropped || g.Offset != 100*1000 || g.Lease != "lease-1" || g.File == "" {
		t.Fatalf("gap %+v, want %d bytes at offset %d of lease-1's file", g, dropped, 100*1000)
	}
}

// Without a monitor, the write that finds the disk full reports it once; later ones
// drop their bytes silently until a probe finds space again.
func TestFullDiskWithoutMonitorReportsOnce(t *testing.T) {
	dir := mountTmpfs(t, 1<<20)
	r := open(t, recording.Options{StateDir: dir, Board: "b1", Probe: 50 * time.Millisecond})
	write(t, r, "before\n")
	ballast := fill(t, dir)
	errs := 0
	big := bytes.Repeat([]byte("x"), 64<<10)
	for i := 0; i < 40; i++ {
		n, err := r.Write(big)
		if n != len(big) {
			t.Fatalf("Write returned %d of %d", n, len(big))
		}
		if err != nil {
			errs++
		}
	}
	if errs != 1 {
		t.Fatalf("%d errors from 40 writes on a full disk, want 1", errs)
	}
	os.Remove(ballast)
	time.Sleep(100 * time.Millisecond) // past the probe interval: nothing to await
	write(t, r, "after\n")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	gaps, err := recording.Gaps(dir, "b1")
	var sum int64
	for _, g := range gaps {
		sum += g.Bytes
	}
	if err != nil || sum != r.Dropped() || sum == 0 {
		t.Fatalf("gaps %v (%d bytes), dropped %d, %v", gaps, sum, r.Dropped(), err)
	}
	files, err := recording.Files(dir, "b1")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, f := range files {
		total += f.Size
	}
	if total+sum != int64(len("before\n")+40*len(big)+len("after\n")) {
		t.Fatalf("recorded %d + dropped %d bytes, want every byte accounted for", total, sum)
	}
}
