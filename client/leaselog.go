package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FollowLog reads a lease's log from the coordinator (LeaseService.LeaseLog) and hands
// each entry to fn, in order, from after req.After on. When the coordinator goes away
// (a restart) it asks again from the last entry fn got, so fn sees every entry once;
// it gives up after ReconnectTimeout without an answer. It returns nil at the end of the
// log (with req.Follow: once the lease has ended), ctx's error when ctx ends, and fn's
// error if fn fails.
func FollowLog(ctx context.Context, leases pb.LeaseServiceClient, req *pb.LeaseLogRequest, fn func(*pb.LeaseLogEntry) error) error {
	req = &pb.LeaseLogRequest{LeaseId: req.GetLeaseId(), After: req.GetAfter(), Console: req.GetConsole(), Follow: req.GetFollow()}
	var down time.Time // when the coordinator stopped answering; zero while it answers
	backoff := 100 * time.Millisecond
	for {
		stream, err := leases.LeaseLog(ctx, req, grpc.WaitForReady(!down.IsZero()))
		for err == nil {
			var e *pb.LeaseLogEntry
			if e, err = stream.Recv(); err != nil {
				break
			}
			down, backoff = time.Time{}, 100*time.Millisecond
			if err := fn(e); err != nil {
				return err
			}
			if e.GetPosition() != "" {
				req.After = e.GetPosition()
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case status.Code(err) != codes.Unavailable:
			return rpcError{status.Convert(err)}
		}
		if down.IsZero() {
			down = time.Now()
		}
		if time.Since(down) > ReconnectTimeout {
			return fmt.Errorf("lease %s: log: the coordinator did not answer for %s: %s", req.GetLeaseId(), ReconnectTimeout, statusText(err))
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// rpcError is a refusal from the coordinator: its message (one sentence naming what to
// do) is the error's text; status.Code still tells its code.
type rpcError struct{ st *status.Status }

func (e rpcError) Error() string              { return e.st.Message() }
func (e rpcError) GRPCStatus() *status.Status { return e.st }

// ReleaseAndFollow releases a lease at the coordinator and prints the afterLease part of
// the dialogue from the lease's log there, as the shell does from the supervisor:
//
//	Releasing lease...
//	afterLease hooks running (press Ctrl+C to disconnect):
//	[Hook Output] Saving logs to archive...
//	afterLease hooks completed.
//
// It returns once the lease has ended. If ctx is cancelled (Ctrl+C) it disconnects at
// once: the hook goes on without us.
func (c *Client) ReleaseAndFollow(ctx context.Context, id, reason string) error {
	c.say("Releasing lease...")
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	r, err := c.Leases.ReleaseLease(rctx, &pb.ReleaseLeaseRequest{Id: id, Reason: reason})
	cancel()
	if errors.Is(ctx.Err(), context.Canceled) {
		c.say("Disconnected before the coordinator answered: see whether the lease ends with boardvisor lease show %s.", id)
		return nil
	}
	if err != nil {
		return fmt.Errorf("release lease: %s", statusText(err))
	}
	if p := r.GetLease().GetPhase(); p == pb.LeasePhase_LEASE_PHASE_DONE || p == pb.LeasePhase_LEASE_PHASE_FAILED {
		c.say("Lease %s has ended (%s): %s", id, PhaseName(p), Visible(r.GetLease().GetStatusMessage()))
		return nil
	}
	al := &afterLease{c: c}
	ending := false // the lines before the lease began to end are not part of this dialogue
	var end *pb.LeaseLogEnd
	err = FollowLog(ctx, c.Leases, &pb.LeaseLogRequest{LeaseId: id, Follow: true}, func(e *pb.LeaseLogEntry) error {
		switch b := e.GetBody().(type) {
		case *pb.LeaseLogEntry_Phase:
			if b.Phase.GetTo() >= pb.LeasePhase_LEASE_PHASE_ENDING {
				ending = true
				al.phase(jobs.Phase(b.Phase.GetTo()), jobs.ExporterStatus(b.Phase.GetExporterStatus()), b.Phase.GetStatusMessage())
			}
		case *pb.LeaseLogEntry_HookLine:
			if ending {
				h := b.HookLine
				c.hookLine(h.GetSource(), SeverityName(h.GetSeverity()), h.GetText(), h.GetProgress())
			}
		case *pb.LeaseLogEntry_End:
			end = b.End
		}
		return nil
	})
	if errors.Is(err, context.Canceled) {
		al.disconnected()
		return nil
	}
	if err != nil {
		return err
	}
	al.ended()
	if end.GetPhase() == pb.LeasePhase_LEASE_PHASE_FAILED {
		c.say("Lease %s failed: %s", id, Visible(end.GetStatusMessage()))
	}
	return nil
}

// SeverityName is how boardvisor shows a lease log line's severity: INFO, WARN, ERROR.
func SeverityName(s pb.Severity) string {
	switch s {
	case pb.Severity_SEVERITY_WARN:
		return "WARN"
	case pb.Severity_SEVERITY_ERROR:
		return "ERROR"
	}
	return "INFO"
}

// FormatLogEntry renders an entry of a lease's log (not console bytes) as one line for
// `boardvisor logs`: its time, source, severity and text, untrusted text made visible.
func FormatLogEntry(e *pb.LeaseLogEntry) string {
	src, sev, msg := "SYSTEM", "INFO", ""
	switch b := e.GetBody().(type) {
	case *pb.LeaseLogEntry_Phase:
		msg = "lease " + PhaseName(b.Phase.GetTo())
		if m := b.Phase.GetStatusMessage(); m != "" {
			msg += ": " + m
		}
	case *pb.LeaseLogEntry_HookLine:
		h := b.HookLine
		src, sev, msg = strings.TrimPrefix(h.GetSource().String(), "LOG_SOURCE_"), SeverityName(h.GetSeverity()), h.GetText()
		if h.GetProgress() {
			msg += " (progress)"
		}
	case *pb.LeaseLogEntry_Error:
		sev = "ERROR"
		msg = "job error " + jobs.JobErrorKind(b.Error.GetKind()).String() + ": " + b.Error.GetDescription()
	case *pb.LeaseLogEntry_ConsoleGap:
		src, sev, msg = strings.TrimPrefix(jpb.LogSource_LOG_SOURCE_DRIVER.String(), "LOG_SOURCE_"), "WARN", fmt.Sprintf("%d console bytes dropped here", b.ConsoleGap)
	case *pb.LeaseLogEntry_Console:
		src, msg = "DRIVER", fmt.Sprintf("%d console bytes", len(b.Console))
	case *pb.LeaseLogEntry_End:
		end := b.End
		msg = "lease ended " + PhaseName(end.GetPhase())
		if end.GetEndedBy() != "" {
			msg += " by " + end.GetEndedBy()
		}
		if end.GetReason() != "" {
			msg += ": " + end.GetReason()
		}
	}
	at := "--:--:--.---"
	if e.GetTime() != nil {
		at = e.GetTime().AsTime().Local().Format("15:04:05.000")
	}
	return fmt.Sprintf("%s %-17s %-5s %s", at, src, sev, Visible(msg))
}

// PhaseName is a lease phase's short name: READY for LEASE_PHASE_READY.
func PhaseName(p pb.LeasePhase) string { return strings.TrimPrefix(p.String(), "LEASE_PHASE_") }
