// Package images is a supervisor's image store: it fetches boot images over the OCI
// distribution API (with oras-go), verifies every blob's digest and size before it is
// used, and keeps the blobs content-addressed in the state directory under a size bound
// with least-recently-used eviction that never evicts an image a live lease keeps. It
// also reads and writes the image layout of docs/images.md (Parse, Push).
//
// A blob is written to a temporary name, verified, synced and only then renamed into
// place, so that a partly fetched blob is never used; a fetch of a blob that another
// lease is already fetching waits for that download instead of starting another. A
// download stops within a second of its context ending (the lease was stopped).
//
// The package does I/O for package jobs' image effects; it imports nothing of
// boardvisor's but jobs.
package images

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/boardvisor/boardvisor/jobs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The media types of the image layout (docs/images.md).
const (
	// ArtifactType is the manifest's artifactType.
	ArtifactType = "application/vnd.boardvisor.image.v1"
	// ConfigMediaType is the media type of the image's config blob (Config as JSON).
	ConfigMediaType = "application/vnd.boardvisor.image.config.v1+json"
	// The media types of the layers, one per role.
	MediaKernel     = "application/vnd.boardvisor.kernel"
	MediaInitrd     = "application/vnd.boardvisor.initrd"
	MediaDisk       = "application/vnd.boardvisor.disk.raw"
	MediaDeviceTree = "application/vnd.boardvisor.devicetree"
)

// Role is what a file of an image is for.
type Role string

// The roles of an image's files, and the file names they get in an image directory.
const (
	RoleKernel     Role = "kernel"
	RoleInitrd     Role = "initrd"
	RoleDisk       Role = "disk"
	RoleDeviceTree Role = "devicetree"
)

var roleOfMedia = map[string]Role{MediaKernel: RoleKernel, MediaInitrd: RoleInitrd, MediaDisk: RoleDisk, MediaDeviceTree: RoleDeviceTree}

// MediaType returns the media type of a role's layer.
func (r Role) MediaType() string {
	for m, rr := range roleOfMedia {
		if rr == r {
			return m
		}
	}
	return ""
}

// Roles lists the roles in the order of a manifest's layers.
var Roles = []Role{RoleKernel, RoleInitrd, RoleDisk, RoleDeviceTree}

// Config is the image's config blob: what it runs on and how to boot it.
type Config struct {
	// Architecture is the CPU architecture, in GOARCH/OCI spelling: amd64, arm64,
	// riscv64, arm, 386, ...
	Architecture string `json:"architecture"`
	// OS is the operating system, "linux" if empty.
	OS string `json:"os,omitempty"`
	// Labels are board labels the image needs, e.g. {"device": "rpi4"}: a board runs
	// the image only if it has every one of them.
	Labels map[string]string `json:"labels,omitempty"`
	// Cmdline is the kernel command line, for boards that boot the kernel directly.
	Cmdline string `json:"cmdline,omitempty"`
}

// Limits on what is read from a registry before its digest is verified.
const (
	MaxManifestBytes = 1 << 20
	MaxConfigBytes   = 1 << 20
	maxLayers        = 16
	maxCmdline       = 4096
	maxLabels        = 64
)

// File is one file of an image: its role and its blob.
type File struct {
	Role   Role
	Digest string
	Size   int64
}

// Layout is a parsed image manifest: its config descriptor and its files.
type Layout struct {
	Config ocispec.Descriptor
	Files  []File
}

// File returns the file of a role, and whether the image has one.
func (l *Layout) File(r Role) (File, bool) {
	for _, f := range l.Files {
		if f.Role == r {
			return f, true
		}
	}
	return File{}, false
}

// Size returns the bytes of all the image's blobs but the manifest.
func (l *Layout) Size() int64 {
	n := l.Config.Size
	for _, f := range l.Files {
		n += f.Size
	}
	return n
}

// Blobs returns the digests of the config and the files.
func (l *Layout) Blobs() []string {
	out := []string{l.Config.Digest.String()}
	for _, f := range l.Files {
		out = append(out, f.Digest)
	}
	return out
}

func invalid(format string, a ...any) *jobs.JobError {
	return jobs.NewJobError(jobs.KindImageInvalid, fmt.Sprintf(format, a...))
}

// Parse checks a manifest against the layout of docs/images.md and returns its files.
// An image that is not of this layout (a container image, an index, unknown media
// types, a role twice, neither a kernel nor a disk) is ImageInvalid.
func Parse(digest string, data []byte) (*Layout, error) {
	var m struct {
		ocispec.Manifest
		// Present in an index, absent from a manifest.
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, invalid("image %s: the manifest is not JSON: %v", digest, err)
	}
	switch {
	case m.MediaType == ocispec.MediaTypeImageIndex || m.Manifests != nil:
		return nil, invalid("image %s is an image index, not a boot image: name one of its manifests by digest", digest)
	case m.MediaType != "" && m.MediaType != ocispec.MediaTypeImageManifest:
		return nil, invalid("image %s has the manifest type %q, not an OCI image manifest (%s)", digest, m.MediaType, ocispec.MediaTypeImageManifest)
	case m.SchemaVersion != 2:
		return nil, invalid("image %s has schemaVersion %d, not 2", digest, m.SchemaVersion)
	case m.Config.MediaType != ConfigMediaType:
		return nil, invalid("image %s is not a boardvisor boot image: its config is %q, not %q (see docs/images.md; build one with boardvisor image push)", digest, m.Config.MediaType, ConfigMediaType)
	case m.Config.Size < 0 || m.Config.Size > MaxConfigBytes:
		return nil, invalid("image %s: its config of %d bytes is larger than %d", digest, m.Config.Size, MaxConfigBytes)
	case len(m.Layers) == 0 || len(m.Layers) > maxLayers:
		return nil, invalid("image %s has %d layers (between 1 and %d are allowed)", digest, len(m.Layers), maxLayers)
	}
	if err := jobs.ValidDigest(m.Config.Digest.String()); err != nil {
		return nil, invalid("image %s: config: %v", digest, err)
	}
	l := &Layout{Config: m.Config}
	seen := map[Role]bool{}
	for i, d := range m.Layers {
		r, ok := roleOfMedia[d.MediaType]
		if !ok {
			return nil, invalid("image %s: layer %d has the unknown media type %q (known: %s)", digest, i+1, d.MediaType, strings.Join(knownMedia(), ", "))
		}
		if seen[r] {
			return nil, invalid("image %s has two %s layers", digest, r)
		}
		seen[r] = true
		if err := jobs.ValidDigest(d.Digest.String()); err != nil {
			return nil, invalid("image %s: %s layer: %v", digest, r, err)
		}
		if d.Size <= 0 {
			return nil, invalid("image %s: %s layer has size %d", digest, r, d.Size)
		}
		l.Files = append(l.Files, File{Role: r, Digest: d.Digest.String(), Size: d.Size})
	}
	if !seen[RoleKernel] && !seen[RoleDisk] {
		return nil, invalid("image %s has neither a kernel nor a disk layer: nothing to boot", digest)
	}
	return l, nil
}

func knownMedia() []string {
	var out []string
	for m := range roleOfMedia {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// ParseConfig decodes and checks an image's config blob.
func ParseConfig(digest string, data []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		return Config{}, invalid("image %s: its config is not JSON: %v", digest, err)
	}
	if c.Architecture == "" {
		return Config{}, invalid("image %s: its config names no architecture", digest)
	}
	if c.OS == "" {
		c.OS = "linux"
	}
	if len(c.Cmdline) > maxCmdline {
		return Config{}, invalid("image %s: its kernel command line is longer than %d bytes", digest, maxCmdline)
	}
	if len(c.Labels) > maxLabels {
		return Config{}, invalid("image %s: its config has more than %d labels", digest, maxLabels)
	}
	return c, nil
}

// Compatible says whether a board with these labels can run an image of this config:
// the board's arch label (arch, when the board declares one) must be the image's
// architecture, and the board must have every label the image names. The error is
// ImageNotCompatible, one sentence naming the mismatch.
func Compatible(digest string, c Config, boardArch string, labels map[string]string) error {
	if boardArch != "" && boardArch != c.Architecture {
		return jobs.NewJobError(jobs.KindImageNotCompatible, fmt.Sprintf(
			"image %s is built for %s/%s, but this board is %s: use an image for %s", digest, c.OS, c.Architecture, boardArch, boardArch))
	}
	keys := make([]string, 0, len(c.Labels))
	for k := range c.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v, ok := labels[k]; !ok || v != c.Labels[k] {
			have := "does not have it"
			if ok {
				have = "has " + k + "=" + v
			}
			return jobs.NewJobError(jobs.KindImageNotCompatible, fmt.Sprintf(
				"image %s needs a board labelled %s=%s, and this board %s", digest, k, c.Labels[k], have))
		}
	}
	return nil
}
