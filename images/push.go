package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
)

// PushOptions say what image to build and where to push it.
type PushOptions struct {
	// Ref is REGISTRY/REPOSITORY[:TAG] (TAG defaults to "latest").
	Ref string
	// Files are the image's files by role (at least a kernel or a disk).
	Files map[Role]string
	// Config is the image's config (Architecture is required).
	Config Config
	// PlainHTTP names registries reached over plain HTTP (loopback always is).
	PlainHTTP []string
}

// Push builds an image of the layout of docs/images.md from files and pushes it: each
// file as a blob (skipped if the registry has it), the config, and the manifest under
// the tag. It returns the image by its manifest digest.
func Push(ctx context.Context, opts PushOptions) (jobs.Image, error) {
	ref, err := registry.ParseReference(opts.Ref)
	if err != nil {
		return jobs.Image{}, fmt.Errorf("image reference %q: %v (write REGISTRY/REPOSITORY[:TAG])", opts.Ref, err)
	}
	if ref.Reference == "" {
		ref.Reference = "latest"
	}
	if _, err := ref.Digest(); err == nil {
		return jobs.Image{}, fmt.Errorf("image reference %q names a digest: push to a tag (the digest is what push prints)", opts.Ref)
	}
	if opts.Config.Architecture == "" {
		return jobs.Image{}, fmt.Errorf("the image needs an architecture (amd64, arm64, ...)")
	}
	if opts.Config.OS == "" {
		opts.Config.OS = "linux"
	}
	if opts.Files[RoleKernel] == "" && opts.Files[RoleDisk] == "" {
		return jobs.Image{}, fmt.Errorf("the image needs a kernel or a disk: nothing to boot")
	}
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return jobs.Image{}, err
	}
	repo.Client = &auth.Client{Client: HTTPClient(), Cache: auth.NewCache()}
	repo.PlainHTTP = IsPlainHTTP(ref.Registry, opts.PlainHTTP)

	var layers []ocispec.Descriptor
	for _, r := range Roles {
		path := opts.Files[r]
		if path == "" {
			continue
		}
		desc, err := fileDescriptor(path, r.MediaType())
		if err != nil {
			return jobs.Image{}, fmt.Errorf("%s %s: %w", r, path, err)
		}
		if err := pushFile(ctx, repo, desc, path); err != nil {
			return jobs.Image{}, fmt.Errorf("push the %s (%s) to %s/%s: %w", r, path, ref.Registry, ref.Repository, err)
		}
		desc.Annotations = map[string]string{ocispec.AnnotationTitle: filepath.Base(path)}
		layers = append(layers, desc)
	}
	cdata, err := json.Marshal(opts.Config)
	if err != nil {
		return jobs.Image{}, err
	}
	cdesc := ocispec.Descriptor{MediaType: ConfigMediaType, Digest: digest.FromBytes(cdata), Size: int64(len(cdata))}
	if err := pushBytes(ctx, repo, cdesc, cdata); err != nil {
		return jobs.Image{}, fmt.Errorf("push the config to %s/%s: %w", ref.Registry, ref.Repository, err)
	}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		ArtifactType: ArtifactType, Config: cdesc, Layers: layers}
	mdata, err := json.Marshal(m)
	if err != nil {
		return jobs.Image{}, err
	}
	mdesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mdata), Size: int64(len(mdata))}
	if err := repo.PushReference(ctx, mdesc, bytes.NewReader(mdata), ref.Reference); err != nil {
		return jobs.Image{}, fmt.Errorf("push the manifest to %s/%s:%s: %w", ref.Registry, ref.Repository, ref.Reference, err)
	}
	return jobs.Image{Digest: mdesc.Digest.String(), Locations: []jobs.ImageLocation{{Registry: ref.Registry, Repository: ref.Repository}}}, nil
}

// FileDigest returns a file's digest ("sha256:...").
func FileDigest(path string) (string, error) {
	d, err := fileDescriptor(path, "")
	return d.Digest.String(), err
}

func fileDescriptor(path, mediaType string) (ocispec.Descriptor, error) {
	f, err := os.Open(path)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if n == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("the file is empty")
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.Digest("sha256:" + hex.EncodeToString(h.Sum(nil))), Size: n}, nil
}

func pushFile(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, path string) error {
	if ok, err := repo.Blobs().Exists(ctx, desc); err == nil && ok {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return repo.Blobs().Push(ctx, desc, f)
}

func pushBytes(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor, data []byte) error {
	if ok, err := repo.Blobs().Exists(ctx, desc); err == nil && ok {
		return nil
	}
	return repo.Blobs().Push(ctx, desc, bytes.NewReader(data))
}

// Resolve turns a reference (REGISTRY/REPOSITORY@sha256:..., or :TAG, or neither for
// latest) into the image it names, by digest, and reads the image's config (the
// client needs its architecture and labels to ask for a board that runs it). The
// manifest and config are verified against their digests.
func Resolve(ctx context.Context, refStr string, plainHTTP []string) (jobs.Image, Config, error) {
	ref, err := registry.ParseReference(refStr)
	if err != nil {
		return jobs.Image{}, Config{}, fmt.Errorf("image reference %q: %v (write REGISTRY/REPOSITORY@sha256:... or REGISTRY/REPOSITORY:TAG)", refStr, err)
	}
	if ref.Reference == "" {
		ref.Reference = "latest"
	}
	loc := jobs.ImageLocation{Registry: ref.Registry, Repository: ref.Repository}
	r := NewRemote(plainHTTP).(*orasRemote)
	repo, err := r.repo(loc)
	if err != nil {
		return jobs.Image{}, Config{}, err
	}
	dg := ref.Reference
	if _, err := ref.Digest(); err != nil {
		desc, err := repo.Resolve(ctx, ref.Reference)
		if err != nil {
			return jobs.Image{}, Config{}, fmt.Errorf("image %s: %v", refStr, oneLine(describe(err)))
		}
		dg = desc.Digest.String()
	}
	im := jobs.Image{Digest: dg, Locations: []jobs.ImageLocation{loc}}
	if err := im.Validate(); err != nil {
		return jobs.Image{}, Config{}, err
	}
	rc, size, err := r.OpenManifest(ctx, loc, dg)
	if err != nil {
		return jobs.Image{}, Config{}, fmt.Errorf("image %s: %v", im, oneLine(err))
	}
	if size <= 0 || size > MaxManifestBytes {
		rc.Close()
		return jobs.Image{}, Config{}, invalid("image %s: its manifest of %d bytes is not between 1 and %d", im, size, MaxManifestBytes)
	}
	mdata, err := readVerified(rc, ocispec.Descriptor{Digest: digest.Digest(dg), Size: size})
	if err != nil {
		return jobs.Image{}, Config{}, invalid("image %s: its manifest: %v", im, err)
	}
	lay, err := Parse(dg, mdata)
	if err != nil {
		return jobs.Image{}, Config{}, err
	}
	crc, err := r.OpenBlob(ctx, loc, lay.Config)
	if err != nil {
		return jobs.Image{}, Config{}, fmt.Errorf("image %s: its config: %v", im, oneLine(err))
	}
	cdata, err := readVerified(crc, lay.Config)
	if err != nil {
		return jobs.Image{}, Config{}, invalid("image %s: its config: %v", im, err)
	}
	cfg, err := ParseConfig(dg, cdata)
	return im, cfg, err
}

func readVerified(rc io.ReadCloser, desc ocispec.Descriptor) ([]byte, error) {
	defer rc.Close()
	v := newVerifier(rc, desc)
	data, err := io.ReadAll(v)
	if err != nil {
		return nil, err
	}
	if err := v.Verify(); err != nil {
		return nil, err
	}
	return data, nil
}
