package grpc

import (
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The jobs enums share their numbers with the protobuf enums (see package jobs), except
// Severity, which starts at 0 in jobs and at 1 (after UNSPECIFIED) on the wire.

// Phase converts a lease phase to the wire.
func Phase(p jobs.Phase) pb.LeasePhase { return pb.LeasePhase(p) }

// Status converts a board status to the wire.
func Status(s jobs.ExporterStatus) jpb.ExporterStatus { return jpb.ExporterStatus(s) }

// Health converts a board health to the wire.
func Health(h jobs.Health) pb.BoardHealth { return pb.BoardHealth(h) }

// Severity converts a log severity to the wire.
func Severity(s jobs.Severity) pb.Severity { return pb.Severity(s + 1) }

// ToProto converts an event to the wire.
func ToProto(ev connector.Event) *pb.Event {
	out := &pb.Event{Seq: ev.Seq, Time: timestamppb.New(ev.Time)}
	switch {
	case ev.Transition != nil:
		t := ev.Transition
		rs, stage := t.RunningState()
		out.Body = &pb.Event_StateTransition{StateTransition: &pb.StateTransition{JobId: ev.JobID, Board: ev.Board,
			From: Phase(t.From), To: Phase(t.To), StatusMessage: t.Message, ExporterStatus: Status(t.Status), Step: uint32(t.Step),
			RunningState: &pb.RunningJobState{State: pb.RunningJobStateKind(rs), Stage: initStage(stage)}}}
	case ev.Error != nil:
		out.Body = &pb.Event_Error{Error: &pb.JobErrorEvent{JobId: ev.JobID,
			Error: &pb.JobError{Kind: pb.JobErrorKind(ev.Error.Kind), Description: ev.Error.Description}}}
	case ev.Console != nil:
		out.Body = &pb.Event_ConsoleLog{ConsoleLog: &pb.ConsoleLog{JobId: ev.JobID, Board: ev.Board,
			Source: jpb.LogSource(ev.Console.Source), Data: ev.Console.Data, Offset: ev.Console.Offset}}
	case ev.Hook != nil:
		h := ev.Hook
		out.Body = &pb.Event_HookLog{HookLog: &pb.HookLog{JobId: ev.JobID, Board: ev.Board, Source: jpb.LogSource(h.Source),
			Severity: Severity(h.Severity), Text: h.Text, Offset: uint64(max(h.Offset, 0)), Cut: h.Cut, Progress: h.Progress}}
	case ev.Gap != nil:
		out.Body = &pb.Event_ConsoleGap{ConsoleGap: &pb.ConsoleGap{JobId: ev.JobID, Board: ev.Board, Bytes: ev.Gap.Bytes}}
	case ev.BoardStatus != nil:
		b := ev.BoardStatus
		out.Body = &pb.Event_BoardStatus{BoardStatus: &pb.BoardStatus{Board: ev.Board, Status: Status(b.Status),
			Health: Health(b.Health), CurrentJobId: ev.JobID, Message: b.Message}}
	}
	return out
}

func initStage(s jobs.InitStage) pb.JobInitializingStage {
	switch s {
	case jobs.StageStarting:
		return pb.JobInitializingStage_JOB_INITIALIZING_STAGE_STARTING
	case jobs.StageProvisioning:
		return pb.JobInitializingStage_JOB_INITIALIZING_STAGE_PROVISIONING
	case jobs.StageFetchingImage:
		return pb.JobInitializingStage_JOB_INITIALIZING_STAGE_FETCHING_IMAGE
	case jobs.StageAllocating:
		return pb.JobInitializingStage_JOB_INITIALIZING_STAGE_ALLOCATING
	}
	return pb.JobInitializingStage_JOB_INITIALIZING_STAGE_UNSPECIFIED
}

// InitStageFromProto converts a stage from the wire (StageNone for one jobs does not
// know).
func InitStageFromProto(s pb.JobInitializingStage) jobs.InitStage {
	switch s {
	case pb.JobInitializingStage_JOB_INITIALIZING_STAGE_STARTING:
		return jobs.StageStarting
	case pb.JobInitializingStage_JOB_INITIALIZING_STAGE_PROVISIONING:
		return jobs.StageProvisioning
	case pb.JobInitializingStage_JOB_INITIALIZING_STAGE_FETCHING_IMAGE:
		return jobs.StageFetchingImage
	case pb.JobInitializingStage_JOB_INITIALIZING_STAGE_ALLOCATING:
		return jobs.StageAllocating
	}
	return jobs.StageNone
}

// ImageToProto converts an image to the wire (nil for none).
func ImageToProto(im *jobs.Image) *pb.ImageSpecification {
	if im == nil {
		return nil
	}
	out := &pb.ImageSpecification{ManifestDigest: im.Digest}
	for _, l := range im.Locations {
		out.Locations = append(out.Locations, &pb.ImageLocation{Registry: l.Registry, Repository: l.Repository})
	}
	return out
}

// ImageFromProto converts an image from the wire (nil for none). It is not validated
// here: the board checks it with the job's spec.
func ImageFromProto(p *pb.ImageSpecification) *jobs.Image {
	if p == nil {
		return nil
	}
	im := &jobs.Image{Digest: p.GetManifestDigest()}
	for _, l := range p.GetLocations() {
		im.Locations = append(im.Locations, jobs.ImageLocation{Registry: l.GetRegistry(), Repository: l.GetRepository()})
	}
	return im
}

// StartJobFromProto converts a StartJob from the coordinator.
func StartJobFromProto(s *pb.StartJob) connector.StartJobRequest {
	return connector.StartJobRequest{JobID: s.GetJobId(), Board: s.GetBoard(), Client: s.GetClientName(),
		Token: s.GetToken(), Duration: s.GetDuration().AsDuration(), Parameters: s.GetParameters(),
		Image: ImageFromProto(s.GetImage())}
}
