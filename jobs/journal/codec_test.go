package journal

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

func TestEncodeRejects(t *testing.T) {
	ok := fullRecord(jobID(1))
	for _, tc := range []struct {
		name string
		edit func(r *jobs.Record)
		want string
	}{
		{"no job ID", func(r *jobs.Record) { r.Spec.JobID = "" }, "no job ID"},
		{"phase", func(r *jobs.Record) { r.State.Phase = 0 }, "unknown phase 0"},
		{"end reason", func(r *jobs.Record) { r.State.EndReason = 9 }, "unknown end reason"},
		{"hook running", func(r *jobs.Record) { r.State.HookRunning = 3 }, "unknown hook kind"},
		{"policy", func(r *jobs.Record) { r.Spec.After.OnFailure = 7 }, "afterLease hook: unknown onFailure policy"},
		{"timer", func(r *jobs.Record) { r.Deadlines[99] = time.Now() }, "unknown timer"},
		{"deadline", func(r *jobs.Record) { r.Deadlines[jobs.TimerLease] = time.Time{} }, "out of range"},
		{"utf8", func(r *jobs.Record) { r.Spec.Board = "\xff" }, "not valid UTF-8"},
		{"image", func(r *jobs.Record) { r.Spec.Image.Digest = "latest" }, "image digest"},
		{"stage", func(r *jobs.Record) { r.State.Stage = 42 }, "unknown stage"},
	} {
		r := fullRecord(jobID(1))
		tc.edit(&r)
		if _, err := encodeLease(r.Spec, r.State, r.Deadlines, r.Reported); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, h := range []jobs.HookRun{{Kind: jobs.HookNone}, {Kind: 5}, {Kind: jobs.HookBefore, Dir: "\xfe"}} {
		if _, err := encodeHook(&h); err == nil {
			t.Errorf("encodeHook(%+v): no error", h)
		}
	}
	if _, err := encodeLease(ok.Spec, ok.State, ok.Deadlines, ok.Reported); err != nil {
		t.Fatal(err)
	}
}

func TestEncodingIsReadable(t *testing.T) {
	r := fullRecord(jobID(1))
	b, err := encodeLease(r.Spec, r.State, r.Deadlines, r.Reported)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"v":1,`, `"phase":"AFTER_LEASE"`, `"end_reason":"coordinator"`,
		`"on_failure":"exit"`, `"hook_running":"afterLease"`, `"release":`,
		`"image":{"digest":"sha256:5e5e`, `"registry":"127.0.0.1:5000","repository":"boards/rpi4"`,
		`"stage":"Provisioning"`, `"image_fetched":true`, `"provisioned":true`, `"imageFetch":`, `"stage":"Allocating"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("lease record %s lacks %s", b, want)
		}
	}
	h, err := encodeHook(r.Hook)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"v":1,"kind":"afterLease","dir":"/var/lib/boardvisor/spool/` + jobID(1) +
		`","pid":4242,"start_time":9223372036854788153,"offset":1099511627776}`; string(h) != want {
		t.Errorf("hook record %s, want %s", h, want)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := `{"v":1,"spec":{"job":"j","board":"b","duration_ns":1},"state":{"phase":"READY"}}`
	if _, err := decodeRecord([]byte(good), nil); err != nil {
		t.Fatalf("good record: %v", err)
	}
	for _, bad := range []string{
		``, `null`, `{}`, `{"v":1}`, good + `{}`, good + `x`,
		strings.Replace(good, `"v":1`, `"v":2`, 1),
		strings.Replace(good, `"READY"`, `"ready"`, 1),
		strings.Replace(good, `"phase"`, `"colour":"red","phase"`, 1),
		strings.Replace(good, `}}`, `},"deadlines":{"lunch":1}}`, 1),
		strings.Replace(good, `"duration_ns":1`, `"duration_ns":1.5`, 1),
		strings.Replace(good, `"READY"`, `"READY","stage":"Booting"`, 1),
		strings.Replace(good, `"duration_ns":1`, `"duration_ns":1,"image":{"digest":"md5:00","locations":[{"registry":"r","repository":"x"}]}`, 1),
		strings.Replace(good, `"duration_ns":1`, `"duration_ns":1,"image":{"digest":"sha256:`+strings.Repeat("00", 32)+`","locations":[]}`, 1),
	} {
		if _, err := decodeRecord([]byte(bad), nil); err == nil {
			t.Errorf("decodeRecord(%q): no error", bad)
		}
	}
	for _, bad := range []string{``, `{"v":1,"kind":""}`, `{"v":1,"kind":"beforeLease","pid":"1"}`} {
		if _, err := decodeRecord([]byte(good), []byte(bad)); err == nil {
			t.Errorf("decodeRecord with hook %q: no error", bad)
		}
	}
}

// FuzzDecodeRecord feeds arbitrary lease and hook parts to the decoder: it must never
// panic, and a record it accepts must encode and decode to the same value.
func FuzzDecodeRecord(f *testing.F) {
	r := fullRecord(jobID(1))
	lease, err := encodeLease(r.Spec, r.State, r.Deadlines, r.Reported)
	if err != nil {
		f.Fatal(err)
	}
	hook, err := encodeHook(r.Hook)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(lease, hook)
	f.Fuzz(func(t *testing.T, lease, hook []byte) {
		if len(hook) == 0 {
			hook = nil // no hook part
		}
		rec, err := decodeRecord(lease, hook)
		if err != nil {
			return
		}
		lease2, err := encodeLease(rec.Spec, rec.State, rec.Deadlines, rec.Reported)
		if err != nil {
			t.Fatalf("decoded record does not encode: %v\n%+v", err, rec)
		}
		hook2, err := encodeHook(rec.Hook)
		if err != nil {
			t.Fatalf("decoded hook run does not encode: %v\n%+v", err, rec.Hook)
		}
		rec2, err := decodeRecord(lease2, hook2)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v\n%s\n%s", err, lease2, hook2)
		}
		if !reflect.DeepEqual(rec, rec2) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", rec, rec2)
		}
	})
}
