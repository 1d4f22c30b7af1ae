package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func phaseAt(at time.Time, to pb.LeasePhase, st jpb.ExporterStatus, msg string) *pb.LeaseLogEntry {
	return &pb.LeaseLogEntry{Time: timestamppb.New(at), Body: &pb.LeaseLogEntry_Phase{Phase: &pb.LeaseLogPhase{To: to, ExporterStatus: st, StatusMessage: msg}}}
}

func lineAt(at time.Time, src jpb.LogSource, sev pb.Severity, text string) *pb.LeaseLogEntry {
	return &pb.LeaseLogEntry{Time: timestamppb.New(at), Body: &pb.LeaseLogEntry_HookLine{HookLine: &pb.LeaseLogHookLine{Source: src, Severity: sev, Text: text}}}
}

// The timeline of a lease whose beforeLease hook failed: phase durations from one
// change to the next, the hook's outcome, duration and lines, the error, the end; text
// from supervisors and clients shown with its control characters visible.
func TestLeaseStoryOfAFailedHook(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	lease := &pb.Lease{Id: "L1", Board: "rpi4-01", ClientName: "alice", Phase: pb.LeasePhase_LEASE_PHASE_FAILED, CreatedAt: timestamppb.New(t0)}
	entries := []*pb.LeaseLogEntry{
		phaseAt(at(100), pb.LeasePhase_LEASE_PHASE_STARTING, jpb.ExporterStatus_EXPORTER_STATUS_AVAILABLE, "waiting for the board"),
		phaseAt(at(150), pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK, "running"),
		lineAt(at(200), jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, pb.Severity_SEVERITY_INFO, "flashing"),
		lineAt(at(300), jpb.LogSource_LOG_SOURCE_BEFORE_LEASE_HOOK, pb.Severity_SEVERITY_ERROR, "flash failed"),
		phaseAt(at(2150), pb.LeasePhase_LEASE_PHASE_ENDING, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, "lease ending: \x1b[2Jhook failed"),
		phaseAt(at(2160), pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, "no afterLease hook to run"),
		phaseAt(at(2170), pb.LeasePhase_LEASE_PHASE_FAILED, jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED, "failed"),
		{Time: timestamppb.New(at(2170)), Body: &pb.LeaseLogEntry_End{End: &pb.LeaseLogEnd{Phase: pb.LeasePhase_LEASE_PHASE_FAILED,
			EndedAt: timestamppb.New(at(2170)), EndedBy: "supervisor", Reason: "hook failed"}}},
	}
	s := buildStory(lease, entries, at(99999))
	var phases []string
	for _, p := range s.Phases {
		phases = append(phases, p.Phase+" "+p.Duration)
	}
	if got, want := strings.Join(phases, ", "), "CREATED 100ms, STARTING 50ms, BEFORE_LEASE 2s, ENDING 10ms, AFTER_LEASE 10ms, FAILED "; got != want {
		t.Errorf("phases: %s, want %s", got, want)
	}
	if len(s.Hooks) != 1 || s.Hooks[0].Hook != "beforeLease" || s.Hooks[0].Outcome != "failed" || s.Hooks[0].Duration != "2s" ||
		s.Hooks[0].Lines != 2 || s.Hooks[0].Errors != 1 {
		t.Errorf("hooks: %+v", s.Hooks)
	}
	if s.Ended == nil || s.Ended.By != "supervisor" || s.Ended.Phase != "FAILED" {
		t.Errorf("end: %+v", s.Ended)
	}
	var out bytes.Buffer
	if err := printStory(&out, s, "table"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "\x1b") || !strings.Contains(out.String(), "^[[2Jhook failed") {
		t.Errorf("untrusted text not made visible:\n%q", out.String())
	}
	for _, o := range []string{"json", "yaml"} {
		out.Reset()
		if err := printStory(&out, s, o); err != nil || !strings.Contains(out.String(), "failed") {
			t.Errorf("-o %s: %v\n%s", o, err, out.String())
		}
	}
}

// A lease still running: its current phase lasts "so far", its running hook too.
func TestLeaseStoryOngoing(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	lease := &pb.Lease{Id: "L2", ClientName: "bob", Phase: pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, CreatedAt: timestamppb.New(t0)}
	s := buildStory(lease, []*pb.LeaseLogEntry{
		phaseAt(t0.Add(time.Second), pb.LeasePhase_LEASE_PHASE_AFTER_LEASE, jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK, "running the afterLease hook"),
	}, t0.Add(4*time.Second))
	last := s.Phases[len(s.Phases)-1]
	if !last.Ongoing || last.Duration != "3s" || len(s.Hooks) != 1 || s.Hooks[0].Outcome != "running" || s.Hooks[0].Duration != "3s" {
		t.Errorf("ongoing lease: %+v %+v", s.Phases, s.Hooks)
	}
	var out bytes.Buffer
	printStory(&out, s, "table")
	if !strings.Contains(out.String(), "3s (so far)") || !strings.Contains(out.String(), "Not ended yet.") {
		t.Errorf("table:\n%s", out.String())
	}
}
