package jobs

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Image names the image a job boots, in the spirit of Treadmill's ImageSpecification:
// by content, as the digest of its OCI manifest, and where it can be fetched, as an
// ordered list of locations that all serve the same digest (the first that has it wins).
type Image struct {
	// Digest is the manifest's digest, "sha256:" and 64 lower-case hex digits.
	Digest string
	// Locations are tried in order.
	Locations []ImageLocation
}

// ImageLocation is one registry repository that serves an image.
type ImageLocation struct {
	// Registry is the registry's host and optional port, e.g. "registry.lab:5000".
	Registry string
	// Repository is the repository's path in the registry, e.g. "boards/rpi4-kernel".
	Repository string
}

// String returns "REGISTRY/REPOSITORY".
func (l ImageLocation) String() string { return l.Registry + "/" + l.Repository }

// String returns "REGISTRY/REPOSITORY@DIGEST" of the first location (the digest alone
// when there is none).
func (im Image) String() string {
	if len(im.Locations) == 0 {
		return im.Digest
	}
	return im.Locations[0].String() + "@" + im.Digest
}

// Limits on an image reference from a StartJob (it crosses a trust boundary).
const (
	MaxImageLocations = 8
	maxRegistryLen    = 255
	maxRepositoryLen  = 255
)

// The patterns are compiled on first use: jobs is linked into the hook shim, which
// starts once per hook and never checks an image.
var (
	digestRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^sha256:[0-9a-f]{64}$`) })
	// The registry is a host name, an IPv4 address or a bracketed IPv6 address, with an
	// optional port.
	registryRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^(\[[0-9a-fA-F:.]+\]|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*)(:[0-9]{1,5})?$`)
	})
	// The OCI distribution spec's repository name grammar.
	repositoryRE = sync.OnceValue(func() *regexp.Regexp {
		return regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	})
)

// ValidDigest checks that d is a SHA-256 digest in its canonical form.
func ValidDigest(d string) error {
	if !digestRE().MatchString(d) {
		return fmt.Errorf("image digest %q is not sha256: followed by 64 lower-case hex digits", clip(d))
	}
	return nil
}

// Validate checks an image reference and returns an error naming the first problem.
func (im Image) Validate() error {
	if err := ValidDigest(im.Digest); err != nil {
		return err
	}
	if len(im.Locations) == 0 {
		return fmt.Errorf("image %s has no location to fetch it from", im.Digest)
	}
	if len(im.Locations) > MaxImageLocations {
		return fmt.Errorf("image %s has %d locations, at most %d are allowed", im.Digest, len(im.Locations), MaxImageLocations)
	}
	for i, l := range im.Locations {
		if len(l.Registry) > maxRegistryLen || !registryRE().MatchString(l.Registry) {
			return fmt.Errorf("image location %d: registry %q is not a host name with an optional port", i+1, clip(l.Registry))
		}
		if len(l.Repository) > maxRepositoryLen || !repositoryRE().MatchString(l.Repository) {
			return fmt.Errorf("image location %d: repository %q is not a valid repository name (lower-case letters, digits, separators . _ - and /)", i+1, clip(l.Repository))
		}
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// ParseImageRef parses "REGISTRY/REPOSITORY@sha256:HEX" (one location). A reference
// by tag is not an image identity: resolve it to its digest first.
func ParseImageRef(ref string) (Image, error) {
	name, digest, ok := strings.Cut(ref, "@")
	if !ok {
		return Image{}, fmt.Errorf("image %q names no digest: write REGISTRY/REPOSITORY@sha256:<digest>", clip(ref))
	}
	registry, repo, ok := strings.Cut(name, "/")
	if !ok || registry == "" || repo == "" {
		return Image{}, fmt.Errorf("image %q names no registry: write REGISTRY/REPOSITORY@sha256:<digest>", clip(ref))
	}
	im := Image{Digest: digest, Locations: []ImageLocation{{Registry: registry, Repository: repo}}}
	if err := im.Validate(); err != nil {
		return Image{}, err
	}
	return im, nil
}

// Defaults bounding the image stages of a lease when the board's config sets none.
const (
	DefaultFetchTimeout     = 30 * time.Minute
	DefaultProvisionTimeout = 5 * time.Minute
)

func (s Spec) fetchTimeout() time.Duration {
	if s.FetchTimeout > 0 {
		return s.FetchTimeout
	}
	return DefaultFetchTimeout
}

func (s Spec) provisionTimeout() time.Duration {
	if s.ProvisionTimeout > 0 {
		return s.ProvisionTimeout
	}
	return DefaultProvisionTimeout
}

// imageErrorKind keeps an image failure's kind to the ones an image stage can produce.
func imageErrorKind(k JobErrorKind) JobErrorKind {
	switch k {
	case KindImageNotFound, KindImageInvalid, KindImageNotCompatible, KindCannotResume:
		return k
	}
	return KindInternalError
}

// FormatBytes renders a byte count for people: "512 B", "3.2 MiB", "1.5 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// imageInput handles the answers of the image effects: ImageFetched, ImageProgress and
// Provisioned.
func (l *Lease) imageInput(in Input) (string, error) {
	s := &l.State
	if l.Spec.Image == nil {
		return "the lease has no image", nil
	}
	switch in.Kind {
	case InImageProgress:
		if s.Phase != PhaseStarting || s.Stage != StageFetchingImage {
			return "image progress after the fetch", nil
		}
		l.emit(Effect{Kind: EffLog, Severity: SeverityInfo, Message: progressMessage(in.Done, in.Total)})
		return "", nil

	case InImageFetched:
		if s.Phase != PhaseStarting || s.Stage != StageFetchingImage {
			return fmt.Sprintf("image fetch ended in phase %s, stage %q", s.Phase, s.Stage), nil
		}
		l.emit(Effect{Kind: EffCancelTimer, Timer: TimerFetch})
		if !in.OK {
			return "", l.imageFailed(imageErrorKind(in.ErrKind), in.Message)
		}
		s.ImageFetched = true
		if err := l.toStage(StageAllocating, "image fetched and verified; waiting for the board"); err != nil {
			return "", err
		}
		l.emit(Effect{Kind: EffAcquire})
		return "", nil

	case InProvisioned:
		if s.Phase != PhaseStarting || s.Stage != StageProvisioning {
			if !in.OK && s.Provisioned && !s.Phase.Terminal() {
				// The answer to a provisioning done again after a restart (Resume).
				l.emit(Effect{Kind: EffLog, Severity: SeverityWarn,
					Message: "provisioning the board again after a restart failed: " + in.Message})
				return "", nil
			}
			return fmt.Sprintf("provisioning ended in phase %s, stage %q", s.Phase, s.Stage), nil
		}
		l.emit(Effect{Kind: EffCancelTimer, Timer: TimerProvision})
		if !in.OK {
			return "", l.imageFailed(imageErrorKind(in.ErrKind), in.Message)
		}
		if s.EndRequested {
			// The end waited for the provisioning; the beforeLease hook does not run,
			// the afterLease hook does (the board was used).
			return "", l.beginEnding()
		}
		return "", l.enterBefore()
	}
	return fmt.Sprintf("unknown image input %s", in.Kind), nil
}

// startProvision provisions the acquired board with the fetched image.
func (l *Lease) startProvision() error {
	l.State.Provisioned = true
	if err := l.toStage(StageProvisioning, "provisioning the board with image "+l.Spec.Image.Digest); err != nil {
		return err
	}
	l.emit(Effect{Kind: EffProvision})
	l.emit(Effect{Kind: EffArmTimer, Timer: TimerProvision, After: l.Spec.provisionTimeout()})
	return nil
}

// imageFailed ends the lease after its image could not be fetched or put on the board:
// the error is reported with its kind, and the lease ends FAILED without running its
// hooks (the board was not in use; an afterLease pairs with a beforeLease that ran).
func (l *Lease) imageFailed(kind JobErrorKind, message string) error {
	s := &l.State
	s.ImageFailed = true
	s.Failure = kind.String() + ": " + message
	l.emit(Effect{Kind: EffLog, Severity: SeverityError, Message: message})
	l.emit(Effect{Kind: EffError, Err: NewJobError(kind, message)})
	return l.beginEnding()
}

func progressMessage(done, total int64) string {
	if total <= 0 {
		return "fetching image: " + FormatBytes(done)
	}
	return fmt.Sprintf("fetching image: %s of %s (%d%%)", FormatBytes(done), FormatBytes(total), done*100/total)
}

// Resume returns the effects to perform again when a lease is rebuilt from its record
// after the daemon restarted: the image work that was in flight (a fetch goes on from
// what the store holds, verified; a provisioning starts over), and the provisioning of
// a board whose image went with the process (an emulated board died with it) while the
// lease still uses the board. Hook runs, the board request and its release are resumed
// by the caller as before.
func (l *Lease) Resume() []Effect {
	s := l.State
	if l.Spec.Image == nil || s.Phase.Terminal() {
		return nil
	}
	switch {
	case s.Phase == PhaseStarting && s.Stage == StageFetchingImage:
		return []Effect{{Kind: EffFetchImage}}
	case s.Phase == PhaseStarting && s.Stage == StageProvisioning:
		return []Effect{{Kind: EffProvision}}
	case s.Provisioned && (s.Phase == PhaseBeforeLease || s.Phase == PhaseReady):
		return []Effect{{Kind: EffProvision}}
	}
	return nil
}
