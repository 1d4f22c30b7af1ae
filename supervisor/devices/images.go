package devices

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/boardvisor/boardvisor/drivers/qemu"
	"github.com/boardvisor/boardvisor/images"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/boardvisor/boardvisor/supervisor/config"
)

// ImagesDir is the directory under the state directory that holds the image store
// (ImagesDir/blobs, ImagesDir/tmp) and the leases' image directories
// (ImagesDir/leases/<job>).
const ImagesDir = "images"

// resetTimeout bounds going back to a board's own configuration after an image lease.
const resetTimeout = time.Minute

func (m *Manager) openImages(cfg *config.Config) error {
	dir := filepath.Join(cfg.StateDir, ImagesDir)
	s, err := images.Open(images.Options{Dir: dir, MaxBytes: cfg.Images.MaxBytes, PlainHTTP: cfg.Images.PlainHTTP,
		Logger: m.log.Named("images")})
	if err != nil {
		return err
	}
	m.images, m.leaseDir = s, filepath.Join(dir, "leases")
	return nil
}

// Images returns the image store (nil when the manager has none).
func (m *Manager) Images() *images.Store { return m.images }

// Arch returns the architecture of the images a board runs ("" if it does not say):
// its arch label, or the emulator's for an emulated board.
func (m *Manager) Arch(board string) string {
	if b := m.boards[board]; b != nil {
		return b.arch
	}
	return ""
}

// Pin keeps a resumed lease's image from eviction (called at start-up, before any
// fetch).
func (m *Manager) Pin(job, digest string) { m.images.Pin(job, digest) }

// Fetch fetches a job's image into the store and keeps it for the job; the image's
// config is checked against the board (architecture, labels) before its files are
// fetched. It is lease.Images.Fetch.
func (m *Manager) Fetch(ctx context.Context, job, board string, im jobs.Image, progress func(done, total int64)) error {
	b := m.boards[board]
	if b == nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("board %s has no devices", board))
	}
	_, err := m.images.Fetch(ctx, job, im, func(c images.Config) error {
		return images.Compatible(im.Digest, c, b.arch, b.labels)
	}, images.Progress(progress))
	return err
}

// Provision puts a fetched image on the board: its files go, read-only, into the
// lease's image directory (BOARDVISOR_IMAGE_DIR of its hooks: kernel, initrd, disk,
// devicetree, as the image has them), and an emulated board boots them (its disk
// through an overlay of the lease). The store checks every blob before it is used: a
// blob damaged or missing (after a restart) is never booted. It is
// lease.Images.Provision.
func (m *Manager) Provision(ctx context.Context, job, board string, im jobs.Image) error {
	b := m.boards[board]
	if b == nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("board %s has no devices", board))
	}
	img, err := m.images.Image(im.Digest)
	if err != nil {
		return err
	}
	if err := images.Compatible(im.Digest, img.Config, b.arch, b.labels); err != nil {
		return err
	}
	dir := m.ImageDir(job)
	if err := m.imageDir(dir, img); err != nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image directory of job %s: %v", job, err))
	}
	if b.qemu == nil {
		return nil // the beforeLease hook writes the files to the board
	}
	bt := qemu.Boot{Owner: job, Cmdline: img.Config.Cmdline}
	bt.Kernel, _ = img.Path(images.RoleKernel)
	bt.Initrd, _ = img.Path(images.RoleInitrd)
	bt.Disk, _ = img.Path(images.RoleDisk)
	bt.DeviceTree, _ = img.Path(images.RoleDeviceTree)
	if err := b.qemu.SwitchBoot(ctx, bt); err != nil {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("boot image %s on board %s: %v", im.Digest, board, err))
	}
	return nil
}

// ImageDir returns the path of a lease's image directory (it exists once the board
// was provisioned).
func (m *Manager) ImageDir(job string) string { return filepath.Join(m.leaseDir, job) }

// HookEnv returns BOARDVISOR_IMAGE_DIR for a lease provisioned with an image (none
// otherwise).
func (m *Manager) HookEnv(job string) []string {
	if m.images == nil {
		return nil
	}
	if _, err := os.Stat(m.ImageDir(job)); err != nil {
		return nil
	}
	return []string{"BOARDVISOR_IMAGE_DIR=" + m.ImageDir(job)}
}

// imageDir makes dir hold the image's files, by role name, as read-only links to the
// store's blobs; the directory itself is read-only.
func (m *Manager) imageDir(dir string, img *images.Image) error {
	if err := os.RemoveAll(dir); err != nil {
		_ = os.Chmod(dir, 0o700)
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, r := range images.Roles {
		if p, ok := img.Path(r); ok {
			if err := os.Symlink(p, filepath.Join(dir, string(r))); err != nil {
				return err
			}
		}
	}
	return os.Chmod(dir, 0o555)
}

// Release undoes a lease's provisioning: its image directory goes, an emulated board
// that boots its image goes back to its own configuration (in the background: the
// lease does not wait for the reboot), and the store no longer keeps the image for it.
// It is lease.Images.Release.
func (m *Manager) Release(job, board string) {
	m.images.Release(job)
	dir := m.ImageDir(job)
	_ = os.Chmod(dir, 0o700)
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		m.log.Warn("remove a lease's image directory", "job", job, "error", err)
	}
	b := m.boards[board]
	if b == nil || b.qemu == nil || b.qemu.Booting() != job {
		return
	}
	m.imgWG.Add(1)
	go func() {
		defer m.imgWG.Done()
		ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
		defer cancel()
		if err := b.qemu.ResetBoot(ctx, job); err != nil {
			m.log.Warn("boot the board's own configuration after an image lease", "board", board, "job", job, "error", err)
		}
	}()
}
