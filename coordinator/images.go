package coordinator

import (
	"context"
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

// loadImages sets the Image of the leases that have one (the live leases, at load).
func loadImages(ctx context.Context, q querier, leases []*leaseRow) error {
	if len(leases) == 0 {
		return nil
	}
	byID := make(map[string]*leaseRow, len(leases))
	for _, l := range leases {
		byID[l.ID] = l
	}
	rows, err := q.QueryContext(ctx, `SELECT i.lease_id, i.spec FROM lease_images i JOIN leases l ON l.id = i.lease_id
		WHERE l.state IN ($1, $2, $3)`, stateQueued, stateAssigned, stateActive)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, spec string
		if err := rows.Scan(&id, &spec); err != nil {
			return err
		}
		l := byID[id]
		if l == nil {
			continue
		}
		img := &pb.ImageSpecification{}
		if err := protojson.Unmarshal([]byte(spec), img); err != nil {
			// An image that cannot be read would boot the wrong thing: the supervisor
			// refuses this one (no digest) and the lease fails with its reason.
			img = &pb.ImageSpecification{}
		}
		l.Image = img
	}
	return rows.Err()
}
