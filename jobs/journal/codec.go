package journal

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"time"
	"unicode/utf8"

	"github.com/boardvisor/boardvisor/jobs"
)

// recordVersion is the version of the record encoding written into every record ("v").
// A change that an older reader could misread bumps it.
const recordVersion = 1

// The record encoding (version 1) is JSON, with every enum spelled as a name of its own so
// that the file does not depend on the numbering of the Go constants:
//
//	lease: {"v":1,
//	        "spec":{"job":"…","board":"…","client":"…","duration_ns":3600000000000,
//	                "before":{"timeout_ns":…,"on_failure":"warn|endLease|exit"},"after":{…}},
//	        "state":{"phase":"READY","end_requested":true,"end_reason":"client",
//	                 "acquired":true,"hook_running":"beforeLease","after_started":true,
//	                 "before_failed":true,"after_failed":true,"quarantined":true,"failure":"…"},
//	        "deadlines":{"lease":<unix ns>,"beforeHook":…,"afterHook":…,"release":…}}
//	hook:  {"v":1,"kind":"beforeLease|afterLease","dir":"…","pid":123,"start_time":456,"offset":789}
//
// Added within version 1 for image jobs (optional, so that older records decode and an
// older reader is never given them for a lease without an image):
//
//	spec:  "image":{"digest":"sha256:…","locations":[{"registry":"host:5000","repository":"…"}]},
//	       "fetch_timeout_ns":…,"provision_timeout_ns":…
//	state: "stage":"FetchingImage|Allocating|Provisioning","image_fetched":true,
//	       "provisioned":true,"image_failed":true
//	deadlines: "imageFetch":…,"provision":…
//	reported[]: "stage":"…"
//
// False booleans, empty strings and empty maps are left out. The decoder is strict: an
// unknown field, an unknown name or trailing data makes the record damaged, so that a
// record this version does not fully understand is reported rather than half restored.

type leaseV1 struct {
	V         int              `json:"v"`
	Spec      specV1           `json:"spec"`
	State     stateV1          `json:"state"`
	Deadlines map[string]int64 `json:"deadlines,omitempty"`
	// Added within version 1 (optional).
	Reported []transitionV1 `json:"reported,omitempty"`
}

type transitionV1 struct {
	Step    int    `json:"step"`
	From    string `json:"from"`
	To      string `json:"to"`
	Status  int    `json:"status"`
	Message string `json:"message,omitempty"`
	Stage   string `json:"stage,omitempty"`
}

type specV1 struct {
	Job        string        `json:"job"`
	Board      string        `json:"board"`
	Client     string        `json:"client,omitempty"`
	DurationNS int64         `json:"duration_ns"`
	Before     *hookPolicyV1 `json:"before,omitempty"`
	After      *hookPolicyV1 `json:"after,omitempty"`
	// Added within version 1 (optional, so older records still decode).
	TokenHash string            `json:"token_hash,omitempty"`
	Params    map[string]string `json:"params,omitempty"`
	// Added within version 1 for image jobs (optional).
	Image              *imageV1 `json:"image,omitempty"`
	FetchTimeoutNS     int64    `json:"fetch_timeout_ns,omitempty"`
	ProvisionTimeoutNS int64    `json:"provision_timeout_ns,omitempty"`
}

type imageV1 struct {
	Digest    string       `json:"digest"`
	Locations []locationV1 `json:"locations"`
}

type locationV1 struct {
	Registry   string `json:"registry"`
	Repository string `json:"repository"`
}

type hookPolicyV1 struct {
	TimeoutNS int64  `json:"timeout_ns"`
	OnFailure string `json:"on_failure"`
}

type stateV1 struct {
	Phase        string `json:"phase"`
	EndRequested bool   `json:"end_requested,omitempty"`
	EndReason    string `json:"end_reason,omitempty"`
	Acquired     bool   `json:"acquired,omitempty"`
	HookRunning  string `json:"hook_running,omitempty"`
	HookDraining bool   `json:"hook_draining,omitempty"`
	AfterStarted bool   `json:"after_started,omitempty"`
	BeforeFailed bool   `json:"before_failed,omitempty"`
	AfterFailed  bool   `json:"after_failed,omitempty"`
	Quarantined  bool   `json:"quarantined,omitempty"`
	Failure      string `json:"failure,omitempty"`
	// Added within version 1 for image jobs (optional).
	Stage        string `json:"stage,omitempty"`
	ImageFetched bool   `json:"image_fetched,omitempty"`
	Provisioned  bool   `json:"provisioned,omitempty"`
	ImageFailed  bool   `json:"image_failed,omitempty"`
}

type hookV1 struct {
	V         int    `json:"v"`
	Kind      string `json:"kind"`
	Dir       string `json:"dir"`
	Pid       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	Offset    int64  `json:"offset"`
}

// names is a two-way table between enum values and their names on disk.
type names[T ~int] struct {
	what   string
	toName map[T]string
	toVal  map[string]T
}

func newNames[T ~int](what string, m map[T]string) names[T] {
	n := names[T]{what: what, toName: m, toVal: make(map[string]T, len(m))}
	for v, s := range m {
		n.toVal[s] = v
	}
	return n
}

func (n names[T]) name(v T) (string, error) {
	if s, ok := n.toName[v]; ok {
		return s, nil
	}
	return "", fmt.Errorf("unknown %s %d", n.what, v)
}

func (n names[T]) value(s string) (T, error) {
	if v, ok := n.toVal[s]; ok {
		return v, nil
	}
	var zero T
	return zero, fmt.Errorf("unknown %s %q", n.what, s)
}

var (
	phaseNames = newNames("phase", map[jobs.Phase]string{
		jobs.PhaseCreated: "CREATED", jobs.PhaseStarting: "STARTING",
		jobs.PhaseBeforeLease: "BEFORE_LEASE", jobs.PhaseReady: "READY",
		jobs.PhaseEnding: "ENDING", jobs.PhaseAfterLease: "AFTER_LEASE",
		jobs.PhaseReleasing: "RELEASING", jobs.PhaseDone: "DONE", jobs.PhaseFailed: "FAILED",
	})
	// End reason 0 (none) is the empty string.
	endReasonNames = newNames("end reason", map[jobs.EndReason]string{
		0: "", jobs.EndClient: "client", jobs.EndCoordinator: "coordinator",
		jobs.EndExpired: "expired", jobs.EndOperator: "operator",
	})
	// HookNone is the empty string; a hook run's kind must not be HookNone.
	hookKindNames = newNames("hook kind", map[jobs.HookKind]string{
		jobs.HookNone: "", jobs.HookBefore: "beforeLease", jobs.HookAfter: "afterLease",
	})
	policyNames = newNames("onFailure policy", map[jobs.Policy]string{
		jobs.PolicyWarn: "warn", jobs.PolicyEndLease: "endLease", jobs.PolicyExit: "exit",
	})
	timerNames = newNames("timer", map[jobs.Timer]string{
		jobs.TimerLease: "lease", jobs.TimerBeforeHook: "beforeHook",
		jobs.TimerAfterHook: "afterHook", jobs.TimerRelease: "release",
		jobs.TimerFetch: "imageFetch", jobs.TimerProvision: "provision",
	})
	// StageNone is the empty string (and so left out).
	stageNames = newNames("stage", map[jobs.InitStage]string{
		jobs.StageNone: "", jobs.StageStarting: "Starting", jobs.StageFetchingImage: "FetchingImage",
		jobs.StageAllocating: "Allocating", jobs.StageProvisioning: "Provisioning",
	})
)

// Deadlines are kept as Unix nanoseconds, which cover the years 1678 to 2262.
var (
	minDeadline = time.Unix(0, math.MinInt64)
	maxDeadline = time.Unix(0, math.MaxInt64)
)

func checkUTF8(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	return nil
}

func encodePolicy(kind string, p *jobs.HookPolicy) (*hookPolicyV1, error) {
	if p == nil {
		return nil, nil
	}
	name, err := policyNames.name(p.OnFailure)
	if err != nil {
		return nil, fmt.Errorf("%s hook: %w", kind, err)
	}
	return &hookPolicyV1{TimeoutNS: int64(p.Timeout), OnFailure: name}, nil
}

// encodeLease encodes the lease part of a record.
func encodeLease(spec jobs.Spec, st jobs.State, deadlines map[jobs.Timer]time.Time, reported []jobs.Transition) ([]byte, error) {
	if spec.JobID == "" {
		return nil, errors.New("no job ID")
	}
	for _, s := range []struct{ what, v string }{
		{"job ID", spec.JobID}, {"board", spec.Board}, {"client", spec.Client}, {"failure", st.Failure},
	} {
		if err := checkUTF8(s.what, s.v); err != nil {
			return nil, err
		}
	}
	for k, v := range spec.Params {
		if err := checkUTF8("parameter name", k); err != nil {
			return nil, err
		}
		if err := checkUTF8("parameter "+k, v); err != nil {
			return nil, err
		}
	}
	rec := leaseV1{V: recordVersion, Spec: specV1{
		Job: spec.JobID, Board: spec.Board, Client: spec.Client, DurationNS: int64(spec.Duration),
		TokenHash: spec.TokenHash, Params: spec.Params,
		FetchTimeoutNS: int64(spec.FetchTimeout), ProvisionTimeoutNS: int64(spec.ProvisionTimeout),
	}}
	if im := spec.Image; im != nil {
		if err := im.Validate(); err != nil {
			return nil, err
		}
		rec.Spec.Image = &imageV1{Digest: im.Digest}
		for _, l := range im.Locations {
			rec.Spec.Image.Locations = append(rec.Spec.Image.Locations, locationV1{Registry: l.Registry, Repository: l.Repository})
		}
	}
	var err error
	if rec.Spec.Before, err = encodePolicy("beforeLease", spec.Before); err != nil {
		return nil, err
	}
	if rec.Spec.After, err = encodePolicy("afterLease", spec.After); err != nil {
		return nil, err
	}
	s := stateV1{
		EndRequested: st.EndRequested, Acquired: st.Acquired, AfterStarted: st.AfterStarted,
		HookDraining: st.HookDraining, BeforeFailed: st.BeforeFailed, AfterFailed: st.AfterFailed, Quarantined: st.Quarantined,
		Failure: st.Failure, ImageFetched: st.ImageFetched, Provisioned: st.Provisioned, ImageFailed: st.ImageFailed,
	}
	if s.Stage, err = stageNames.name(st.Stage); err != nil {
		return nil, err
	}
	if s.Phase, err = phaseNames.name(st.Phase); err != nil {
		return nil, err
	}
	if s.EndReason, err = endReasonNames.name(st.EndReason); err != nil {
		return nil, err
	}
	if s.HookRunning, err = hookKindNames.name(st.HookRunning); err != nil {
		return nil, err
	}
	rec.State = s
	if len(deadlines) > 0 {
		rec.Deadlines = make(map[string]int64, len(deadlines))
		for t, d := range deadlines {
			name, err := timerNames.name(t)
			if err != nil {
				return nil, err
			}
			if d.Before(minDeadline) || d.After(maxDeadline) {
				return nil, fmt.Errorf("%s timer deadline %s is out of range", name, d)
			}
			rec.Deadlines[name] = d.UnixNano()
		}
	}
	for _, t := range reported {
		from, err := phaseNames.name(t.From)
		if err != nil {
			return nil, err
		}
		to, err := phaseNames.name(t.To)
		if err != nil {
			return nil, err
		}
		if err := checkUTF8("transition message", t.Message); err != nil {
			return nil, err
		}
		stage, err := stageNames.name(t.Stage)
		if err != nil {
			return nil, err
		}
		rec.Reported = append(rec.Reported, transitionV1{Step: t.Step, From: from, To: to, Status: int(t.Status), Message: t.Message, Stage: stage})
	}
	return json.Marshal(rec)
}

// encodeHook encodes a hook run; nil encodes to nil (no hook).
func encodeHook(run *jobs.HookRun) ([]byte, error) {
	if run == nil {
		return nil, nil
	}
	if run.Kind == jobs.HookNone {
		return nil, errors.New("hook run has no hook kind")
	}
	kind, err := hookKindNames.name(run.Kind)
	if err != nil {
		return nil, err
	}
	if err := checkUTF8("spool directory", run.Dir); err != nil {
		return nil, err
	}
	return json.Marshal(hookV1{V: recordVersion, Kind: kind, Dir: run.Dir, Pid: run.Pid,
		StartTime: run.StartTime, Offset: run.Offset})
}

// strictUnmarshal decodes one JSON value into v, rejecting unknown fields and trailing data.
func strictUnmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the record")
	}
	return nil
}

// decodeVersioned decodes a record of version recordVersion into v (a struct with a "v"
// field). A record of another version is reported as such, whatever else it holds.
func decodeVersioned(data []byte, v any, version func() int) error {
	var head struct {
		V *int `json:"v"`
	}
	if json.Unmarshal(data, &head) == nil && head.V != nil && *head.V != recordVersion {
		return fmt.Errorf("record version %d is unknown (this boardvisor reads version %d)", *head.V, recordVersion)
	}
	if err := strictUnmarshal(data, v); err != nil {
		return err
	}
	if n := version(); n != recordVersion {
		return fmt.Errorf("record version %d is unknown (this boardvisor reads version %d)", n, recordVersion)
	}
	return nil
}

func decodePolicy(kind string, p *hookPolicyV1) (*jobs.HookPolicy, error) {
	if p == nil {
		return nil, nil
	}
	pol, err := policyNames.value(p.OnFailure)
	if err != nil {
		return nil, fmt.Errorf("%s hook: %w", kind, err)
	}
	return &jobs.HookPolicy{Timeout: time.Duration(p.TimeoutNS), OnFailure: pol}, nil
}

// decodeLease decodes the lease part of a record: spec, state and deadlines. The deadline
// map is never nil.
func decodeLease(data []byte) (jobs.Record, error) {
	var rec leaseV1
	if err := decodeVersioned(data, &rec, func() int { return rec.V }); err != nil {
		return jobs.Record{}, fmt.Errorf("lease record: %w", err)
	}
	out, err := fromLeaseV1(rec)
	if err != nil {
		return jobs.Record{}, fmt.Errorf("lease record: %w", err)
	}
	return out, nil
}

func fromLeaseV1(rec leaseV1) (jobs.Record, error) {
	var out jobs.Record
	if rec.Spec.Job == "" {
		return out, errors.New("no job ID")
	}
	out.Spec = jobs.Spec{JobID: rec.Spec.Job, Board: rec.Spec.Board, Client: rec.Spec.Client,
		Duration: time.Duration(rec.Spec.DurationNS), TokenHash: rec.Spec.TokenHash, Params: rec.Spec.Params,
		FetchTimeout: time.Duration(rec.Spec.FetchTimeoutNS), ProvisionTimeout: time.Duration(rec.Spec.ProvisionTimeoutNS)}
	if im := rec.Spec.Image; im != nil {
		out.Spec.Image = &jobs.Image{Digest: im.Digest}
		for _, l := range im.Locations {
			out.Spec.Image.Locations = append(out.Spec.Image.Locations, jobs.ImageLocation{Registry: l.Registry, Repository: l.Repository})
		}
		if err := out.Spec.Image.Validate(); err != nil {
			return out, err
		}
	}
	var err error
	if out.Spec.Before, err = decodePolicy("beforeLease", rec.Spec.Before); err != nil {
		return out, err
	}
	if out.Spec.After, err = decodePolicy("afterLease", rec.Spec.After); err != nil {
		return out, err
	}
	s := rec.State
	out.State = jobs.State{EndRequested: s.EndRequested, Acquired: s.Acquired,
		AfterStarted: s.AfterStarted, HookDraining: s.HookDraining, BeforeFailed: s.BeforeFailed, AfterFailed: s.AfterFailed,
		Quarantined: s.Quarantined, Failure: s.Failure, ImageFetched: s.ImageFetched, Provisioned: s.Provisioned,
		ImageFailed: s.ImageFailed}
	if out.State.Stage, err = stageNames.value(s.Stage); err != nil {
		return out, err
	}
	if out.State.Phase, err = phaseNames.value(s.Phase); err != nil {
		return out, err
	}
	if out.State.EndReason, err = endReasonNames.value(s.EndReason); err != nil {
		return out, err
	}
	if out.State.HookRunning, err = hookKindNames.value(s.HookRunning); err != nil {
		return out, err
	}
	out.Deadlines = make(map[jobs.Timer]time.Time, len(rec.Deadlines))
	for name, ns := range rec.Deadlines {
		t, err := timerNames.value(name)
		if err != nil {
			return out, err
		}
		out.Deadlines[t] = time.Unix(0, ns)
	}
	for _, t := range rec.Reported {
		from, err := phaseNames.value(t.From)
		if err != nil {
			return out, err
		}
		to, err := phaseNames.value(t.To)
		if err != nil {
			return out, err
		}
		stage, err := stageNames.value(t.Stage)
		if err != nil {
			return out, err
		}
		out.Reported = append(out.Reported, jobs.Transition{Step: t.Step, From: from, To: to,
			Status: jobs.ExporterStatus(t.Status), Message: t.Message, Stage: stage})
	}
	return out, nil
}

// decodeHook decodes a hook run.
func decodeHook(data []byte) (*jobs.HookRun, error) {
	var h hookV1
	if err := decodeVersioned(data, &h, func() int { return h.V }); err != nil {
		return nil, fmt.Errorf("hook record: %w", err)
	}
	kind, err := hookKindNames.value(h.Kind)
	if err == nil && kind == jobs.HookNone {
		err = errors.New("no hook kind")
	}
	if err != nil {
		return nil, fmt.Errorf("hook record: %w", err)
	}
	return &jobs.HookRun{Kind: kind, Dir: h.Dir, Pid: h.Pid, StartTime: h.StartTime, Offset: h.Offset}, nil
}

// decodeRecord decodes a whole record from its lease part and its hook part (nil when the
// lease has no hook run; an empty non-nil hook part is damage).
func decodeRecord(lease, hook []byte) (jobs.Record, error) {
	rec, err := decodeLease(lease)
	if err != nil {
		return jobs.Record{}, err
	}
	if hook != nil {
		if rec.Hook, err = decodeHook(hook); err != nil {
			return jobs.Record{}, err
		}
	}
	return rec, nil
}
