package images

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/jobs"
)

var dg = func(b byte) string { return "sha256:" + strings.Repeat(string("0123456789abcdef"[b%16]), 64) }

func manifestJSON(config string, layers ...[2]string) string {
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int64  `json:"size"`
	}
	m := map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": desc{config, dg(1), 10}}
	var ls []desc
	for i, l := range layers {
		d := l[1]
		if d == "" {
			d = dg(byte(i + 2))
		}
		ls = append(ls, desc{l[0], d, 100})
	}
	m["layers"] = ls
	b, _ := json.Marshal(m)
	return string(b)
}

func TestParseLayout(t *testing.T) {
	good := manifestJSON(ConfigMediaType, [2]string{MediaKernel}, [2]string{MediaInitrd}, [2]string{MediaDisk})
	l, err := Parse(dg(0), []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.File(RoleDisk); !ok || len(l.Files) != 3 || l.Size() != 310 || len(l.Blobs()) != 4 {
		t.Errorf("layout %+v", l)
	}
	for name, tc := range map[string]struct{ m, want string }{
		"json":      {`{`, "not JSON"},
		"index":     {`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`, "image index"},
		"docker":    {`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}`, "not an OCI image manifest"},
		"container": {manifestJSON("application/vnd.oci.image.config.v1+json", [2]string{"application/vnd.oci.image.layer.v1.tar+gzip"}), "not a boardvisor boot image"},
		"unknown":   {manifestJSON(ConfigMediaType, [2]string{MediaKernel}, [2]string{"application/x-tar"}), `unknown media type "application/x-tar"`},
		"twice":     {manifestJSON(ConfigMediaType, [2]string{MediaKernel}, [2]string{MediaKernel}), "two kernel layers"},
		"nothing":   {manifestJSON(ConfigMediaType, [2]string{MediaInitrd}), "neither a kernel nor a disk"},
		"none":      {manifestJSON(ConfigMediaType), "0 layers"},
		"digest":    {manifestJSON(ConfigMediaType, [2]string{MediaKernel, "sha256:zz"}), "kernel layer"},
	} {
		_, err := Parse(dg(0), []byte(tc.m))
		if k, _ := jobs.KindOf(err); k != jobs.KindImageInvalid || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ImageInvalid with %q", name, err, tc.want)
		}
	}
	if _, err := ParseConfig(dg(0), []byte(`{"os":"linux"}`)); err == nil {
		t.Error("config without an architecture accepted")
	}
	if c, err := ParseConfig(dg(0), []byte(`{"architecture":"arm64"}`)); err != nil || c.OS != "linux" {
		t.Errorf("config: %+v %v", c, err)
	}
	if !IsPlainHTTP("127.0.0.1:5000", nil) || !IsPlainHTTP("[::1]:5000", nil) || !IsPlainHTTP("localhost", nil) ||
		IsPlainHTTP("registry.lab:5000", nil) || !IsPlainHTTP("registry.lab:5000", []string{"registry.lab:5000"}) {
		t.Error("IsPlainHTTP")
	}
}

// FuzzParse feeds Parse manifests as a registry might send them: it never panics, and
// what it accepts has a kernel or a disk and only known roles, each once.
func FuzzParse(f *testing.F) {
	f.Add([]byte(manifestJSON(ConfigMediaType, [2]string{MediaKernel}, [2]string{MediaInitrd})))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		l, err := Parse(dg(0), data)
		if err != nil {
			if k, _ := jobs.KindOf(err); k != jobs.KindImageInvalid {
				t.Fatalf("error of kind %v", k)
			}
			return
		}
		seen := map[Role]bool{}
		for _, fl := range l.Files {
			if seen[fl.Role] || fl.Role.MediaType() == "" || fl.Size <= 0 {
				t.Fatalf("accepted %+v", l)
			}
			seen[fl.Role] = true
		}
		if !seen[RoleKernel] && !seen[RoleDisk] {
			t.Fatalf("accepted an image with nothing to boot: %+v", l)
		}
	})
}
