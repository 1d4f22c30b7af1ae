package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/images"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/spf13/cobra"
)

// resolveTimeout bounds reading an image's manifest and config from its registry.
const resolveTimeout = 30 * time.Second

func newImage() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "build and push boot images (docs/images.md)"}
	var kernel, initrd, disk, dtb, arch, cmdline string
	var labels []string
	var plain []string
	push := &cobra.Command{
		Use:   "push REGISTRY/REPOSITORY[:TAG] --arch ARCH (--kernel FILE | --disk FILE) [--initrd FILE] [--dtb FILE] [--cmdline ARGS] [--label K=V]...",
		Short: "build a boot image from files, push it, and print it by digest",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if kernel == "" && disk == "" {
				return usageError{errors.New("give --kernel FILE or --disk FILE: an image needs something to boot")}
			}
			if arch == "" {
				return usageError{errors.New("give --arch (amd64, arm64, ...): the architecture the image runs on")}
			}
			lm := map[string]string{}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" || v == "" {
					return usageError{fmt.Errorf("--label %q is not KEY=VALUE", l)}
				}
				lm[k] = v
			}
			files := map[images.Role]string{}
			for r, p := range map[images.Role]string{images.RoleKernel: kernel, images.RoleInitrd: initrd, images.RoleDisk: disk, images.RoleDeviceTree: dtb} {
				if p != "" {
					files[r] = p
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			im, err := images.Push(ctx, images.PushOptions{Ref: args[0], Files: files, PlainHTTP: plain,
				Config: images.Config{Architecture: arch, Cmdline: cmdline, Labels: lm}})
			if err != nil {
				return err
			}
			fmt.Printf("image=%s\ndigest=%s\n", im.String(), im.Digest)
			return nil
		},
	}
	f := push.Flags()
	f.StringVar(&kernel, "kernel", "", "the kernel to boot")
	f.StringVar(&initrd, "initrd", "", "an initramfs")
	f.StringVar(&disk, "disk", "", "a raw disk image (an emulated board boots it through a copy-on-write overlay)")
	f.StringVar(&dtb, "dtb", "", "a device tree blob")
	f.StringVar(&arch, "arch", "", "the architecture the image runs on: amd64, arm64, riscv64, ...")
	f.StringVar(&cmdline, "cmdline", "", "the kernel command line (default for emulated boards: console=ttyS0)")
	f.StringArrayVar(&labels, "label", nil, "a board label the image needs, KEY=VALUE (repeatable)")
	f.StringArrayVar(&plain, "plain-http", nil, "a registry (host:port) to reach over plain HTTP; loopback ones always are")
	cmd.AddCommand(push)
	return cmd
}

// imageSpec resolves --image REF for a lease: the image by digest (a tag is resolved
// here, so the lease names content), with the architecture and labels its config
// declares, which the coordinator matches against the boards' labels.
func imageSpec(ref string) (*pb.ImageSpecification, error) {
	if ref == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	im, cfg, err := images.Resolve(ctx, ref, nil)
	if err != nil {
		// A lab's registry may be out of the client's reach: an image named by digest
		// goes to the supervisor as it is (it fetches and checks it, and says what is
		// wrong); a tag can only be resolved here.
		byDigest, perr := jobs.ParseImageRef(ref)
		if perr != nil {
			return nil, fmt.Errorf("--image %s: %v", ref, err)
		}
		im, cfg = byDigest, images.Config{}
	}
	spec := &pb.ImageSpecification{ManifestDigest: im.Digest, Architecture: cfg.Architecture, Labels: maps.Clone(cfg.Labels)}
	for _, l := range im.Locations {
		spec.Locations = append(spec.Locations, &pb.ImageLocation{Registry: l.Registry, Repository: l.Repository})
	}
	return spec, nil
}
