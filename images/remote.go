package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// NewRemote returns the Remote that speaks the OCI distribution API through oras-go,
// anonymously (a registry's token challenge for anonymous pulls is answered), over
// HTTPS except to loopback registries and those named in plainHTTP.
func NewRemote(plainHTTP []string) Remote {
	return &orasRemote{plain: plainHTTP, client: &auth.Client{Client: HTTPClient(), Cache: auth.NewCache()}}
}

// HTTPClient is the HTTP client of registry requests: bounded connection set-up and
// response headers; a body is read for as long as it flows (the lease's fetch timer
// and its stop bound it).
func HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.ResponseHeaderTimeout = 30 * time.Second
	tr.Proxy = nil // a lab's registries are reached directly
	return &http.Client{Transport: retry.NewTransport(tr)}
}

type orasRemote struct {
	plain  []string
	client remote.Client
}

// IsPlainHTTP reports whether a registry is reached over plain HTTP: a loopback
// address or localhost, or one of plain.
func IsPlainHTTP(registry string, plain []string) bool {
	if slices.Contains(plain, registry) {
		return true
	}
	host := registry
	if h, _, err := net.SplitHostPort(registry); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (r *orasRemote) repo(loc jobs.ImageLocation) (*remote.Repository, error) {
	repo, err := remote.NewRepository(loc.Registry + "/" + loc.Repository)
	if err != nil {
		return nil, err
	}
	repo.Client = r.client
	repo.PlainHTTP = IsPlainHTTP(loc.Registry, r.plain)
	return repo, nil
}

func (r *orasRemote) OpenBlob(ctx context.Context, loc jobs.ImageLocation, desc ocispec.Descriptor) (io.ReadCloser, error) {
	repo, err := r.repo(loc)
	if err != nil {
		return nil, err
	}
	rc, err := repo.Blobs().Fetch(ctx, desc)
	return rc, describe(err)
}

func (r *orasRemote) OpenManifest(ctx context.Context, loc jobs.ImageLocation, dg string) (io.ReadCloser, int64, error) {
	repo, err := r.repo(loc)
	if err != nil {
		return nil, 0, err
	}
	desc, rc, err := repo.Manifests().FetchReference(ctx, dg)
	if err != nil {
		return nil, 0, describe(err)
	}
	if desc.Digest.String() != dg {
		rc.Close()
		return nil, 0, invalid("the registry answered with the manifest %s", desc.Digest)
	}
	return rc, desc.Size, nil
}

// describe turns a registry's "not found" into a short phrase.
func describe(err error) error {
	if errors.Is(err, errdef.ErrNotFound) {
		return errors.New("not found")
	}
	return err
}

// verifier reads a blob through oras-go's VerifyReader: at most its size, and Verify
// checks that the size and the digest match.
type verifier struct{ vr *content.VerifyReader }

func newVerifier(r io.Reader, desc ocispec.Descriptor) *verifier {
	return &verifier{vr: content.NewVerifyReader(r, desc)}
}

func (v *verifier) Read(p []byte) (int, error) { return v.vr.Read(p) }

func (v *verifier) Verify() error {
	switch err := v.vr.Verify(); {
	case err == nil:
		return nil
	case errors.Is(err, content.ErrMismatchedDigest):
		return fmt.Errorf("its content does not match its digest")
	case errors.Is(err, content.ErrTrailingData):
		return fmt.Errorf("it is longer than its size")
	default:
		return err
	}
}
