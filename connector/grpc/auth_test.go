package grpc

import "testing"

func TestStaticTokens(t *testing.T) {
	auth := StaticTokens(map[string]string{"s3cret-one": "lab-1", "s3cret-two": "", "": "blank"})
	for token, want := range map[string]string{"s3cret-one": "lab-1", "s3cret-two": "", "": "blank"} {
		if id, err := auth(token); err != nil || id != want {
			t.Errorf("token %q: %q %v, want %q", token, id, err, want)
		}
	}
	for _, bad := range []string{"s3cret", "s3cret-one ", "S3CRET-ONE", "s3cret-onex", "x"} {
		if id, err := auth(bad); err == nil {
			t.Errorf("token %q accepted as %q", bad, id)
		} else if err.Error() != "unknown supervisor token" {
			t.Errorf("token %q: error %q", bad, err)
		}
	}
}
