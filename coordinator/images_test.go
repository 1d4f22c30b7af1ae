package coordinator

import (
	"strings"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

func testImageSpec(arch string, labels map[string]string) *pb.ImageSpecification {
	return &pb.ImageSpecification{ManifestDigest: "sha256:" + strings.Repeat("ab", 32), Architecture: arch, Labels: labels,
		Locations: []*pb.ImageLocation{{Registry: "127.0.0.1:5000", Repository: "boards/kernel"}}}
}

// A lease with an image goes only to a board that declares it runs the image (its
// arch label and the image's labels), with the image in its StartJob; an image no
// known board runs is refused at once; a malformed image is refused as such.
func TestLeaseImageMatchesBoards(t *testing.T) {
	e := newEnv(t, "", Options{MaxDuration: 2 * time.Hour})
	sup := e.dial("sup", []*pb.BoardInfo{board("r1", "device", "rpi4", "arch", "arm64"), board("q1", "device", "qemu", "arch", "amd64")}, supOpts{})
	create := func(sel string, img *pb.ImageSpecification) (*pb.Lease, error) {
		r, err := e.api.CreateLease(e.ctx(), &pb.CreateLeaseRequest{Selector: sel, Duration: durationpb.New(time.Hour), ClientName: "x", Image: img})
		return r.GetLease(), err
	}
	_, err := create("device=qemu", testImageSpec("arm64", nil))
	wantCode(t, err, codes.FailedPrecondition, "no board that matches can run image sha256:abab")
	wantCode(t, err, codes.FailedPrecondition, "it needs a board labelled arch=arm64")
	_, err = create("arch=amd64", testImageSpec("amd64", map[string]string{"device": "rpi4"}))
	wantCode(t, err, codes.FailedPrecondition, "arch=amd64,device=rpi4")
	bad := testImageSpec("amd64", nil)
	bad.ManifestDigest = "latest"
	_, err = create("device=qemu", bad)
	wantCode(t, err, codes.InvalidArgument, "image digest \"latest\"")

	// Any board would do by selector; the image picks the amd64 one.
	l, err := create("", testImageSpec("amd64", map[string]string{"device": "qemu"}))
	if err == nil {
		t.Fatalf("empty selector accepted: %v", l)
	}
	l, err = create("device!=nothing", testImageSpec("amd64", map[string]string{"device": "qemu"}))
	if err != nil {
		t.Fatal(err)
	}
	sj := sup.expectStart()
	if sj.GetJobId() != l.GetId() || sj.GetBoard() != "q1" || sj.GetImage().GetManifestDigest() != testImageSpec("", nil).GetManifestDigest() ||
		sj.GetImage().GetLocations()[0].GetRepository() != "boards/kernel" {
		t.Fatalf("StartJob %v", sj)
	}
}
