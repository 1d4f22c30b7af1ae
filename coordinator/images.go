package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"sort"
	"strings"

	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// Image jobs: a lease may name an image (CreateLeaseRequest.image). It is kept in its
// own table (lease_images), goes to the supervisor with the lease's StartJob, and only
// boards that declare they run it are chosen: their labels hold the image's
// architecture as arch=... and every label the image names. A lease no known board can
// run is refused at once; the supervisor checks the image itself again
// (ImageNotCompatible), since the client copied the architecture and labels (and
// leaves them out when it cannot read the image: then only the selector chooses).

const leaseImagesTable = `CREATE TABLE IF NOT EXISTS lease_images (
		lease_id TEXT PRIMARY KEY,
		spec     TEXT NOT NULL
	)`

// checkImage validates a CreateLease's image.
func checkImage(img *pb.ImageSpecification) error {
	if img == nil {
		return nil
	}
	im := jobs.Image{Digest: img.GetManifestDigest()}
	for _, l := range img.GetLocations() {
		im.Locations = append(im.Locations, jobs.ImageLocation{Registry: l.GetRegistry(), Repository: l.GetRepository()})
	}
	if err := im.Validate(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	for k, v := range img.GetLabels() {
		if err := checkWord(k, "image label key", maxKeyLen, false); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := checkWord(v, "image label value", maxValueLen, true); err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
	}
	return nil
}

// imageFits reports whether a board with these labels declares it runs the image.
func imageFits(img *pb.ImageSpecification, labels map[string]string) bool {
	if img == nil {
		return true
	}
	if a := img.GetArchitecture(); a != "" && labels["arch"] != a {
		return false
	}
	for k, v := range img.GetLabels() {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// imageNeeds renders what boards an image needs: "arch=amd64,device=qemu".
func imageNeeds(img *pb.ImageSpecification) string {
	var parts []string
	if a := img.GetArchitecture(); a != "" {
		parts = append(parts, "arch="+a)
	}
	var keys []string
	for k := range img.GetLabels() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+img.GetLabels()[k])
	}
	return strings.Join(parts, ",")
}

func insertLeaseImage(ctx context.Context, q querier, id string, img *pb.ImageSpecification) error {
	if img == nil {
		return nil
	}
	b, err := protojson.Marshal(img)
	if err != nil {
		return err
	}
	_, err = q.ExecContext(ctx, `INSERT INTO lease_images (lease_id, spec) VALUES ($1, $2)`, id, string(b))
	return err
}

// leaseImage returns a lease's image (nil: none).
func leaseImage(ctx context.Context, q querier, id string) (*pb.ImageSpecification, error) {
	var spec string
	err := q.QueryRowContext(ctx, `SELECT spec FROM lease_images WHERE lease_id = $1`, id).Scan(&spec)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	img := &pb.ImageSpecification{}
	if err := protojson.Unmarshal([]byte(spec), img); err != nil {
		return nil, err
	}
	return img, nil
}

// attachImage puts a lease's image into its StartJob (sent after the transaction that
// queued it committed, so the image is there).
func (c *Coordinator) attachImage(ctx context.Context, m *pb.StartJob) {
	img, err := leaseImage(ctx, c.db, m.GetJobId())
	if err != nil {
		c.log.Error("read a lease's image; StartJob sent without it would boot the wrong thing, so it is held back", "job", m.GetJobId(), "error", err)
		m.Image = &pb.ImageSpecification{} // invalid: the supervisor refuses it
		return
	}
	m.Image = img
}
