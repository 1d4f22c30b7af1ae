package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Boot is what an emulated board boots for one lease instead of its own configuration:
// the files of a leased image. The files are read-only (they are the image store's);
// a disk gets a copy-on-write overlay per lease in the board's run directory, so the
// image is never written.
type Boot struct {
	// Owner names the lease the boot is for (the overlay's name; ResetBoot checks it).
	Owner string
	// Kernel, Initrd and DeviceTree are passed as -kernel, -initrd and -dtb.
	Kernel, Initrd, DeviceTree string
	// Cmdline is the kernel command line (-append); default "console=ttyS0".
	Cmdline string
	// Disk is a raw disk image, attached through a qcow2 overlay.
	Disk string

	overlay string
}

// DefaultCmdline is the kernel command line of a Boot that sets none: the console on
// the first serial port, which is the board's console.
const DefaultCmdline = "console=ttyS0"

// overlayTimeout bounds qemu-img.
const overlayTimeout = 30 * time.Second

func (bt *Boot) args() []string {
	if bt == nil {
		return nil
	}
	var a []string
	if bt.Kernel != "" {
		a = append(a, "-kernel", bt.Kernel)
		cmd := bt.Cmdline
		if cmd == "" {
			cmd = DefaultCmdline
		}
		a = append(a, "-append", cmd)
	}
	if bt.Initrd != "" {
		a = append(a, "-initrd", bt.Initrd)
	}
	if bt.DeviceTree != "" {
		a = append(a, "-dtb", bt.DeviceTree)
	}
	if bt.overlay != "" {
		a = append(a, "-drive", "file="+bt.overlay+",format=qcow2,if=virtio")
	}
	return a
}

// SwitchBoot makes the board boot bt (a leased image) and starts it again with it: the
// guest of whatever ran before is stopped. A disk gets its overlay first
// (qemu-img create -f qcow2 -b DISK -F raw). It returns once QEMU has connected its
// serial port, as On does.
func (b *Board) SwitchBoot(ctx context.Context, bt Boot) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.errorf("%w", ErrClosed)
	}
	for _, f := range []string{bt.Kernel, bt.Initrd, bt.DeviceTree, bt.Disk} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return b.errorf("image file: %w", err)
		}
	}
	b.stopLocked()
	b.dropBootLocked()
	if bt.Disk != "" {
		ov, err := b.overlay(ctx, bt.Owner, bt.Disk)
		if err != nil {
			return err
		}
		bt.overlay = ov
	}
	b.boot = &bt
	return b.startLocked(ctx)
}

// ResetBoot goes back to the board's own configuration if it boots owner's image: the
// guest is stopped, the overlay removed, and QEMU started again as configured. It is a
// no-op (nil) when the board boots another lease's image or none.
func (b *Board) ResetBoot(ctx context.Context, owner string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || b.boot == nil || b.boot.Owner != owner {
		return nil
	}
	b.stopLocked()
	b.dropBootLocked()
	return b.startLocked(ctx)
}

// Booting returns the owner of the image the board boots ("" for its own config).
func (b *Board) Booting() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.boot == nil {
		return ""
	}
	return b.boot.Owner
}

func (b *Board) dropBootLocked() {
	if b.boot != nil && b.boot.overlay != "" {
		os.Remove(b.boot.overlay)
	}
	b.boot = nil
}

// overlay creates a lease's copy-on-write overlay of a raw disk in the run directory.
func (b *Board) overlay(ctx context.Context, owner, disk string) (string, error) {
	img := "qemu-img"
	if p := filepath.Join(filepath.Dir(b.cfg.Binary), "qemu-img"); fileExists(p) {
		img = p
	}
	abs, err := filepath.Abs(disk)
	if err != nil {
		return "", b.errorf("disk: %w", err)
	}
	name := "overlay.qcow2"
	if owner != "" {
		name = strings.Map(func(r rune) rune {
			if r == '/' || r == 0 {
				return '_'
			}
			return r
		}, owner) + ".qcow2"
	}
	ov := filepath.Join(b.runDir, name)
	os.Remove(ov)
	ctx, cancel := context.WithTimeout(ctx, overlayTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, img, "create", "-q", "-f", "qcow2", "-b", abs, "-F", "raw", ov)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", b.errorf("create the disk overlay with %s: %v: %s", img, err, strings.TrimSpace(string(out)))
	}
	return ov, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Arch returns the architecture (GOARCH spelling) of the guests of a qemu-system-*
// binary, or "" if its name does not tell.
func Arch(binary string) string {
	name := filepath.Base(binary)
	suffix, ok := strings.CutPrefix(name, "qemu-system-")
	if !ok {
		return ""
	}
	switch suffix {
	case "x86_64":
		return "amd64"
	case "i386":
		return "386"
	case "aarch64":
		return "arm64"
	case "arm":
		return "arm"
	case "riscv64", "ppc64", "s390x", "mips64", "loong64":
		return suffix
	case "ppc64le":
		return "ppc64le"
	}
	return ""
}
