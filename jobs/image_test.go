package jobs

import (
	"strings"
	"testing"
)

func TestImageValidate(t *testing.T) {
	d := "sha256:" + strings.Repeat("a1", 32)
	good := []Image{
		{Digest: d, Locations: []ImageLocation{{Registry: "127.0.0.1:5000", Repository: "boards/kernel"}}},
		{Digest: d, Locations: []ImageLocation{{Registry: "[::1]:5000", Repository: "a"}, {Registry: "registry.lab", Repository: "x/y-z_w.v"}}},
	}
	for _, im := range good {
		if err := im.Validate(); err != nil {
			t.Errorf("%v: %v", im, err)
		}
	}
	bad := map[string]Image{
		"digest":     {Digest: "sha256:" + strings.Repeat("A1", 32), Locations: good[0].Locations},
		"short":      {Digest: "sha256:abc", Locations: good[0].Locations},
		"algorithm":  {Digest: "sha512:" + strings.Repeat("a1", 32), Locations: good[0].Locations},
		"none":       {Digest: d},
		"registry":   {Digest: d, Locations: []ImageLocation{{Registry: "evil host", Repository: "x"}}},
		"repository": {Digest: d, Locations: []ImageLocation{{Registry: "r", Repository: "../etc"}}},
		"upper":      {Digest: d, Locations: []ImageLocation{{Registry: "r", Repository: "Boards"}}},
		"many":       {Digest: d, Locations: make([]ImageLocation, MaxImageLocations+1)},
	}
	for name, im := range bad {
		if err := im.Validate(); err == nil {
			t.Errorf("%s: %v accepted", name, im)
		}
	}
}

func TestParseImageRef(t *testing.T) {
	d := "sha256:" + strings.Repeat("0f", 32)
	im, err := ParseImageRef("127.0.0.1:5000/boards/kernel@" + d)
	if err != nil || im.Digest != d || im.Locations[0] != (ImageLocation{"127.0.0.1:5000", "boards/kernel"}) {
		t.Fatalf("got %+v, %v", im, err)
	}
	if im.String() != "127.0.0.1:5000/boards/kernel@"+d {
		t.Errorf("String: %s", im)
	}
	for _, ref := range []string{"127.0.0.1:5000/boards/kernel:latest", "kernel@" + d, "/x@" + d, "r/x@sha256:12"} {
		if _, err := ParseImageRef(ref); err == nil {
			t.Errorf("%q accepted", ref)
		}
	}
}

func TestTransitionRunningState(t *testing.T) {
	cases := []struct {
		t     Transition
		rs    RunningState
		stage InitStage
	}{
		{Transition{From: PhaseCreated, To: PhaseStarting}, RunningInitializing, StageStarting},
		{Transition{From: PhaseCreated, To: PhaseStarting, Stage: StageFetchingImage}, RunningInitializing, StageFetchingImage},
		{Transition{From: PhaseStarting, To: PhaseStarting, Stage: StageAllocating}, RunningInitializing, StageAllocating},
		{Transition{From: PhaseStarting, To: PhaseStarting, Stage: StageProvisioning}, RunningInitializing, StageProvisioning},
		{Transition{From: PhaseStarting, To: PhaseBeforeLease}, RunningInitializing, StageProvisioning},
		{Transition{From: PhaseBeforeLease, To: PhaseReady}, RunningReady, StageNone},
	}
	for _, c := range cases {
		if rs, st := c.t.RunningState(); rs != c.rs || st != c.stage {
			t.Errorf("%+v: %s %q, want %s %q", c.t, rs, st, c.rs, c.stage)
		}
	}
	for _, st := range []InitStage{StageFetchingImage, StageAllocating, StageProvisioning, StageStarting, StageNone} {
		if st.String() == "" && st != StageNone || strings.HasPrefix(st.String(), "InitStage(") {
			t.Errorf("stage %d has no name", st)
		}
	}
	if !CanStage(StageNone, StageFetchingImage) || CanStage(StageAllocating, StageFetchingImage) || CanStage(StageProvisioning, StageProvisioning) {
		t.Error("stage order")
	}
}

// A lease rebuilt after a restart does again the image work in flight, and provisions
// again a board it uses (an emulated board died with the daemon); nothing otherwise.
func TestResume(t *testing.T) {
	cases := []struct {
		st   State
		want string
	}{
		{State{Phase: PhaseStarting, Stage: StageFetchingImage}, "fetch"},
		{State{Phase: PhaseStarting, Stage: StageAllocating, ImageFetched: true}, "(remembered)"},
		{State{Phase: PhaseStarting, Stage: StageProvisioning, Acquired: true, Provisioned: true}, "provision"},
		{State{Phase: PhaseBeforeLease, Acquired: true, Provisioned: true, HookRunning: HookBefore}, "provision"},
		{State{Phase: PhaseReady, Acquired: true, Provisioned: true}, "provision"},
		{State{Phase: PhaseAfterLease, Acquired: true, Provisioned: true, HookRunning: HookAfter}, "(remembered)"},
		{State{Phase: PhaseDone, Provisioned: true}, "(remembered)"},
	}
	for _, c := range cases {
		l := Restore(imageSpec(), c.st)
		if got := summary(Decision{Effects: l.Resume()}); got != c.want {
			t.Errorf("%s: %s, want %s", stateName(c.st), got, c.want)
		}
	}
	if e := Restore(tableSpec(), State{Phase: PhaseReady, Provisioned: true}).Resume(); e != nil {
		t.Errorf("lease without an image resumes %v", e)
	}
}

func TestFormatBytesAndProgress(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 40 << 20: "40.0 MiB", 3 << 30: "3.0 GiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("%d: %s, want %s", n, got, want)
		}
	}
	if got := progressMessage(10<<20, 40<<20); got != "fetching image: 10.0 MiB of 40.0 MiB (25%)" {
		t.Error(got)
	}
	if got := ImageFetched(errFake{}); got.ErrKind != KindInternalError || got.OK {
		t.Errorf("plain error: %+v", got)
	}
	if got := Provisioned(NewJobError(KindImageInvalid, "bad")); got.ErrKind != KindImageInvalid || got.Message != "bad" {
		t.Errorf("job error: %+v", got)
	}
	if got := imageErrorKind(KindAlreadyRunning); got != KindInternalError {
		t.Errorf("kind %s", got)
	}
}

type errFake struct{}

func (errFake) Error() string { return "fake" }
