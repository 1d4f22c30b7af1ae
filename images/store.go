package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/hashicorp/go-hclog"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultMaxBytes bounds a store whose Options set no bound.
const DefaultMaxBytes = 20 << 30

// cancelWait bounds how long a fetch that is given up waits for its download to stop
// and remove its partial file (it stops as soon as its read returns, in milliseconds).
const cancelWait = 5 * time.Second

// Options configure a Store.
type Options struct {
	// Dir is the store's directory (created with mode 0700); the supervisor puts it in
	// its state directory.
	Dir string
	// MaxBytes bounds the bytes of the blobs held (0: DefaultMaxBytes). Blobs of
	// images no live lease keeps are evicted, least recently used first, to make room.
	MaxBytes int64
	// PlainHTTP names registries (host[:port]) reached over plain HTTP; loopback
	// registries always are. Others are reached over HTTPS.
	PlainHTTP []string
	// Remote fetches from registries (nil: the OCI distribution API through oras-go,
	// see NewRemote). Tests may wrap it.
	Remote Remote
	Logger hclog.Logger
}

// Remote opens blobs and manifests at a registry location.
type Remote interface {
	// OpenBlob opens a blob. The reader's bytes are verified by the store.
	OpenBlob(ctx context.Context, loc jobs.ImageLocation, desc ocispec.Descriptor) (io.ReadCloser, error)
	// OpenManifest opens a manifest by its digest and says its size.
	OpenManifest(ctx context.Context, loc jobs.ImageLocation, digest string) (io.ReadCloser, int64, error)
}

// Store is a supervisor's image store. Its methods are safe for concurrent use.
type Store struct {
	opts    Options
	blobDir string
	tmpDir  string
	remote  Remote
	log     hclog.Logger

	mu       sync.Mutex
	blobs    map[string]*blob     // digest -> a blob held, complete
	used     int64                // bytes of the blobs held
	reserved int64                // bytes of the downloads in flight
	refs     map[string][]string  // manifest digest -> the blobs it names (and itself)
	pins     map[string]string    // job -> the manifest digest it keeps
	inflight map[string]*download // digest -> its download
	closed   bool
	wg       sync.WaitGroup
}

type blob struct {
	size     int64
	lastUse  time.Time
	verified bool // its digest was checked by this process
}

// download is one blob being fetched, shared by every fetch that needs it.
type download struct {
	digest  string
	size    int64
	done    chan struct{} // closed when the download ended and its partial file is gone
	err     error         // set before done is closed
	cancel  context.CancelFunc
	waiters int // fetches waiting for it (guarded by Store.mu)

	pmu       sync.Mutex
	got       int64
	listeners map[int]func(int64)
	next      int
}

// Open opens (creating it if need be) the store in opts.Dir. What a process killed
// during a download left under a temporary name is removed: a partial blob is never
// used. The blobs held are checked (their digest) at their first use after Open.
func Open(opts Options) (*Store, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	s := &Store{opts: opts, log: opts.Logger, blobDir: filepath.Join(opts.Dir, "blobs", "sha256"), tmpDir: filepath.Join(opts.Dir, "tmp"),
		blobs: map[string]*blob{}, refs: map[string][]string{}, pins: map[string]string{}, inflight: map[string]*download{}}
	s.remote = opts.Remote
	if s.remote == nil {
		s.remote = NewRemote(opts.PlainHTTP)
	}
	if err := os.RemoveAll(s.tmpDir); err != nil {
		return nil, fmt.Errorf("image store: remove partial downloads: %w", err)
	}
	for _, d := range []string{s.blobDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	entries, err := os.ReadDir(s.blobDir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		info, err := e.Info()
		if err != nil || !e.Type().IsRegular() || len(name) != 64 || strings.Trim(name, "0123456789abcdef") != "" {
			s.log.Warn("image store: removing a file that is not a blob", "file", name)
			os.RemoveAll(filepath.Join(s.blobDir, name))
			continue
		}
		d := "sha256:" + name
		s.blobs[d] = &blob{size: info.Size(), lastUse: info.ModTime()}
		s.used += info.Size()
		if info.Size() <= MaxManifestBytes {
			if data, err := os.ReadFile(filepath.Join(s.blobDir, name)); err == nil {
				if l, err := Parse(d, data); err == nil {
					s.refs[d] = append(l.Blobs(), d)
				}
			}
		}
	}
	return s, nil
}

// Close stops the downloads in flight and waits for them.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, dl := range s.inflight {
		dl.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// Dir returns the store's directory.
func (s *Store) Dir() string { return s.opts.Dir }

// Path returns where a blob is (or would be) kept.
func (s *Store) Path(dg string) string {
	return filepath.Join(s.blobDir, strings.TrimPrefix(dg, "sha256:"))
}

// Pin records that a job keeps an image: its blobs are never evicted until Release.
// Pinning again moves the job to another image. The supervisor pins the images of the
// leases it resumes at start-up, before anything is fetched.
func (s *Store) Pin(job, manifest string) {
	s.mu.Lock()
	s.pins[job] = manifest
	s.mu.Unlock()
}

// Release forgets that a job keeps its image (idempotent). The image's blobs stay
// until space is needed.
func (s *Store) Release(job string) {
	s.mu.Lock()
	delete(s.pins, job)
	s.mu.Unlock()
}

// Usage returns the bytes held and the bound.
func (s *Store) Usage() (used, max int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used, s.opts.MaxBytes
}

// Has reports whether a blob is held complete.
func (s *Store) Has(dg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blobs[dg] != nil
}

// Image is a fetched image: its config and where its files are.
type Image struct {
	Digest string
	Config Config
	Layout *Layout
	dir    string
}

// Path returns the path of the file of a role in the store (read it, never write it),
// and whether the image has one.
func (im *Image) Path(r Role) (string, bool) {
	f, ok := im.Layout.File(r)
	if !ok {
		return "", false
	}
	return filepath.Join(im.dir, strings.TrimPrefix(f.Digest, "sha256:")), true
}

// Progress is told how many of the image's bytes are in the store: done of total.
type Progress func(done, total int64)

// Fetch makes an image present in the store for a job and returns it: the image is
// pinned for the job first; the manifest is read from the store or fetched from the
// image's locations in order; accept (if not nil) checks the config before any file
// is fetched (the board's compatibility); each file is taken from the store (checked
// once per process) or fetched, verified and renamed into place. Two fetches of one
// blob share its download. When ctx ends the fetch returns ctx's error at once; the
// download stops and removes its partial file when no other fetch waits for it.
//
// Errors are *jobs.JobError: ImageNotFound (no location has a blob), ImageInvalid (a
// digest or size mismatch, a manifest not of the layout), ImageNotCompatible (from
// accept), InternalError (the store is full of images live leases keep, a disk error).
func (s *Store) Fetch(ctx context.Context, job string, im jobs.Image, accept func(Config) error, progress Progress) (*Image, error) {
	if err := im.Validate(); err != nil {
		return nil, invalid("%v", err)
	}
	s.Pin(job, im.Digest)
	mdata, err := s.fetchSmall(ctx, im, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.Digest(im.Digest)}, true)
	if err != nil {
		return nil, err
	}
	lay, err := Parse(im.Digest, mdata)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.refs[im.Digest] = append(lay.Blobs(), im.Digest)
	s.mu.Unlock()
	cdata, err := s.fetchSmall(ctx, im, lay.Config, false)
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(im.Digest, cdata)
	if err != nil {
		return nil, err
	}
	if accept != nil {
		if err := accept(cfg); err != nil {
			return nil, err
		}
	}
	total := lay.Size()
	var done int64 = lay.Config.Size
	for _, f := range lay.Files {
		if s.Has(f.Digest) {
			done += f.Size
		}
	}
	if progress != nil {
		progress(done, total)
	}
	for _, f := range lay.Files {
		desc := ocispec.Descriptor{MediaType: f.Role.MediaType(), Digest: digest.Digest(f.Digest), Size: f.Size}
		if s.Has(f.Digest) {
			if err := s.ensure(ctx, im, desc, nil); err != nil {
				return nil, err
			}
			continue
		}
		base := done
		var onBytes func(int64)
		if progress != nil {
			onBytes = func(n int64) { progress(base+n, total) }
		}
		if err := s.ensure(ctx, im, desc, onBytes); err != nil {
			return nil, err
		}
		done += f.Size
	}
	if progress != nil {
		progress(total, total)
	}
	s.touch(append(lay.Blobs(), im.Digest))
	return &Image{Digest: im.Digest, Config: cfg, Layout: lay, dir: s.blobDir}, nil
}

// Image returns an image the store holds, every blob checked (once per process): what
// provisioning uses. A blob missing or damaged is CannotResume: the image must be
// fetched again, and a partial image is never handed out.
func (s *Store) Image(manifest string) (*Image, error) {
	cannot := func(format string, a ...any) error {
		return jobs.NewJobError(jobs.KindCannotResume, fmt.Sprintf(format, a...))
	}
	read := func(dg string) ([]byte, error) {
		if err := s.verifyHeld(dg); err != nil {
			return nil, cannot("image %s: %v", manifest, err)
		}
		return os.ReadFile(s.Path(dg))
	}
	mdata, err := read(manifest)
	if err != nil {
		return nil, err
	}
	lay, err := Parse(manifest, mdata)
	if err != nil {
		return nil, err
	}
	cdata, err := read(lay.Config.Digest.String())
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(manifest, cdata)
	if err != nil {
		return nil, err
	}
	for _, f := range lay.Files {
		if err := s.verifyHeld(f.Digest); err != nil {
			return nil, cannot("image %s: %v", manifest, err)
		}
	}
	s.touch(append(lay.Blobs(), manifest))
	return &Image{Digest: manifest, Config: cfg, Layout: lay, dir: s.blobDir}, nil
}

// verifyHeld checks a held blob's digest if this process has not yet, and drops it
// if it does not match.
func (s *Store) verifyHeld(dg string) error {
	s.mu.Lock()
	b := s.blobs[dg]
	s.mu.Unlock()
	if b == nil {
		return fmt.Errorf("blob %s is not in the store", dg)
	}
	if s.isVerified(dg) {
		return nil
	}
	ok, err := hashFile(s.Path(dg), dg)
	if err != nil {
		return fmt.Errorf("blob %s: %w", dg, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.blobs[dg]; b != nil {
		if ok {
			b.verified = true
			return nil
		}
		s.dropLocked(dg)
	}
	if !ok {
		s.log.Warn("image store: a blob does not match its digest; dropped", "digest", dg)
		return fmt.Errorf("blob %s in the store does not match its digest (dropped)", dg)
	}
	return fmt.Errorf("blob %s was evicted", dg)
}

func (s *Store) isVerified(dg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.blobs[dg]
	return b != nil && b.verified
}

func hashFile(path, dg string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	return "sha256:"+hex.EncodeToString(h.Sum(nil)) == dg, nil
}

// fetchSmall returns a manifest or config blob, from the store or fetched.
func (s *Store) fetchSmall(ctx context.Context, im jobs.Image, desc ocispec.Descriptor, manifest bool) ([]byte, error) {
	if err := s.ensureKind(ctx, im, desc, nil, manifest); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.Path(desc.Digest.String()))
	if err != nil {
		return nil, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: read %s: %v", desc.Digest, err))
	}
	return data, nil
}

func (s *Store) ensure(ctx context.Context, im jobs.Image, desc ocispec.Descriptor, onBytes func(int64)) error {
	return s.ensureKind(ctx, im, desc, onBytes, false)
}

// ensureKind makes a blob present and verified: held (and checked), or downloaded by
// this fetch or by another one it waits for.
func (s *Store) ensureKind(ctx context.Context, im jobs.Image, desc ocispec.Descriptor, onBytes func(int64), manifest bool) error {
	dg := desc.Digest.String()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return jobs.NewJobError(jobs.KindInternalError, "the image store is closed (the supervisor is stopping)")
		}
		if b := s.blobs[dg]; b != nil {
			verified := b.verified
			s.mu.Unlock()
			if verified {
				return nil
			}
			if err := s.verifyHeld(dg); err == nil {
				return nil
			}
			continue // dropped: fetch it again
		}
		dl := s.inflight[dg]
		if dl == nil {
			var err error
			if dl, err = s.startLocked(im, desc, manifest); err != nil {
				s.mu.Unlock()
				return err
			}
		}
		dl.waiters++
		id := dl.listen(onBytes)
		s.mu.Unlock()
		err := s.wait(ctx, dl)
		dl.unlisten(id)
		if err != nil {
			return err
		}
	}
}

// wait waits for a download, or for ctx; the last fetch to give up on a download stops
// it and waits until its partial file is removed.
func (s *Store) wait(ctx context.Context, dl *download) error {
	select {
	case <-dl.done:
		s.mu.Lock()
		dl.waiters--
		s.mu.Unlock()
		return dl.err
	case <-ctx.Done():
	}
	s.mu.Lock()
	dl.waiters--
	last := dl.waiters == 0
	if last {
		dl.cancel()
	}
	s.mu.Unlock()
	if last {
		t := time.NewTimer(cancelWait)
		defer t.Stop()
		select {
		case <-dl.done:
		case <-t.C:
			s.log.Warn("image store: a stopped download did not end in time", "digest", dl.digest, "wait", cancelWait.String())
		}
	}
	return ctx.Err()
}

// startLocked reserves room for a blob and starts its download. s.mu is held.
func (s *Store) startLocked(im jobs.Image, desc ocispec.Descriptor, manifest bool) (*download, error) {
	size := desc.Size
	if manifest {
		size = MaxManifestBytes
	}
	if err := s.makeRoomLocked(size); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	dl := &download{digest: desc.Digest.String(), size: size, done: make(chan struct{}), cancel: cancel, listeners: map[int]func(int64){}}
	s.inflight[dl.digest] = dl
	s.reserved += size
	s.wg.Add(1)
	go s.run(ctx, im, desc, manifest, dl)
	return dl, nil
}

// makeRoomLocked evicts blobs no live lease keeps, least recently used first, until
// size more bytes fit under the bound. s.mu is held.
func (s *Store) makeRoomLocked(size int64) error {
	max := s.opts.MaxBytes
	if s.used+s.reserved+size <= max {
		return nil
	}
	kept := map[string]bool{}
	for _, m := range s.pins {
		kept[m] = true
		for _, d := range s.refs[m] {
			kept[d] = true
		}
	}
	var victims []string
	for d := range s.blobs {
		if !kept[d] {
			victims = append(victims, d)
		}
	}
	sort.Slice(victims, func(i, j int) bool { return s.blobs[victims[i]].lastUse.Before(s.blobs[victims[j]].lastUse) })
	for _, d := range victims {
		if s.used+s.reserved+size <= max {
			break
		}
		s.log.Info("image store: evicting a blob no live lease uses", "digest", d, "bytes", s.blobs[d].size)
		s.dropLocked(d)
	}
	if s.used+s.reserved+size > max {
		return jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf(
			"the image store is full: %s more do not fit in its bound of %s, and the %s it holds belong to live leases or downloads; raise images.maxBytes or end leases",
			jobs.FormatBytes(size), jobs.FormatBytes(max), jobs.FormatBytes(s.used+s.reserved)))
	}
	return nil
}

func (s *Store) dropLocked(dg string) {
	b := s.blobs[dg]
	if b == nil {
		return
	}
	if err := os.Remove(s.Path(dg)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("image store: remove blob", "digest", dg, "error", err)
	}
	s.used -= b.size
	delete(s.blobs, dg)
	delete(s.refs, dg)
}

func (s *Store) touch(dgs []string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range dgs {
		if b := s.blobs[d]; b != nil {
			b.lastUse = now
			_ = os.Chtimes(s.Path(d), now, now) // the order survives a restart; a failure only loses that
		}
	}
}

// run downloads one blob from the image's locations in order, and keeps it once
// verified.
func (s *Store) run(ctx context.Context, im jobs.Image, desc ocispec.Descriptor, manifest bool, dl *download) {
	defer s.wg.Done()
	size, err := s.fetchAny(ctx, im, desc, manifest, dl)
	s.mu.Lock()
	s.reserved -= dl.size
	delete(s.inflight, dl.digest)
	if err == nil {
		s.blobs[dl.digest] = &blob{size: size, lastUse: time.Now(), verified: true}
		s.used += size
	}
	dl.err = err
	s.mu.Unlock()
	dl.cancel()
	close(dl.done)
}

func (s *Store) fetchAny(ctx context.Context, im jobs.Image, desc ocispec.Descriptor, manifest bool, dl *download) (int64, error) {
	what := "blob " + desc.Digest.String() + " of image " + im.Digest
	if manifest {
		what = "the manifest of image " + im.Digest
	}
	var notFound, damaged []string
	for _, loc := range im.Locations {
		size, err := s.fetchFrom(ctx, loc, desc, manifest, dl)
		if err == nil {
			return size, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		var je *jobs.JobError
		if errors.As(err, &je) && je.Kind == jobs.KindImageInvalid {
			damaged = append(damaged, loc.String()+" ("+je.Description+")")
		} else {
			notFound = append(notFound, loc.String()+": "+oneLine(err))
		}
		s.log.Warn("image store: location failed; trying the next", "location", loc.String(), "digest", desc.Digest.String(), "error", err)
	}
	if len(damaged) > 0 {
		return 0, jobs.NewJobError(jobs.KindImageInvalid, fmt.Sprintf("%s does not match its digest at %s: the registry's copy is damaged; push the image again",
			what, strings.Join(damaged, "; ")))
	}
	return 0, jobs.NewJobError(jobs.KindImageNotFound, fmt.Sprintf("no location has %s (%s): check the digest, or push the image",
		what, strings.Join(notFound, "; ")))
}

// fetchFrom downloads a blob from one location into a temporary file, verifies its
// size and digest, syncs it and renames it into place.
func (s *Store) fetchFrom(ctx context.Context, loc jobs.ImageLocation, desc ocispec.Descriptor, manifest bool, dl *download) (int64, error) {
	var rc io.ReadCloser
	var err error
	if manifest {
		var size int64
		rc, size, err = s.remote.OpenManifest(ctx, loc, desc.Digest.String())
		if err == nil && (size <= 0 || size > MaxManifestBytes) {
			rc.Close()
			return 0, invalid("its size %d is not between 1 and %d bytes", size, MaxManifestBytes)
		}
		desc.Size = size
	} else {
		rc, err = s.remote.OpenBlob(ctx, loc, desc)
	}
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	hexd := strings.TrimPrefix(desc.Digest.String(), "sha256:")
	tmp, err := os.CreateTemp(s.tmpDir, hexd+".*.partial")
	if err != nil {
		return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: %v", err))
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	dl.reset()
	vr := newVerifier(rc, desc)
	buf := make([]byte, 256<<10)
	for {
		n, rerr := vr.Read(buf)
		if n > 0 {
			if _, werr := tmp.Write(buf[:n]); werr != nil {
				return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: write %s: %v", desc.Digest, werr))
			}
			dl.add(int64(n))
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, rerr
		}
	}
	if err := vr.Verify(); err != nil {
		return 0, invalid("%v", err)
	}
	if err := tmp.Chmod(0o444); err != nil { // the store's blobs are read, never written
		return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: %v", err))
	}
	if err := tmp.Sync(); err != nil {
		return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: sync %s: %v", desc.Digest, err))
	}
	if err := tmp.Close(); err != nil {
		return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: close %s: %v", desc.Digest, err))
	}
	if err := os.Rename(tmp.Name(), s.Path(desc.Digest.String())); err != nil {
		return 0, jobs.NewJobError(jobs.KindInternalError, fmt.Sprintf("image store: %v", err))
	}
	keep = true
	syncDir(s.blobDir)
	return desc.Size, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename is durable with it; without, a crash loses only a cached blob
		d.Close()
	}
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func (dl *download) listen(f func(int64)) int {
	if f == nil {
		return -1
	}
	dl.pmu.Lock()
	defer dl.pmu.Unlock()
	dl.next++
	dl.listeners[dl.next] = f
	f(dl.got)
	return dl.next
}

func (dl *download) unlisten(id int) {
	dl.pmu.Lock()
	delete(dl.listeners, id)
	dl.pmu.Unlock()
}

func (dl *download) add(n int64) {
	dl.pmu.Lock()
	dl.got += n
	for _, f := range dl.listeners {
		f(dl.got)
	}
	dl.pmu.Unlock()
}

func (dl *download) reset() {
	dl.pmu.Lock()
	dl.got = 0
	dl.pmu.Unlock()
}
