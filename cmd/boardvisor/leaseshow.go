package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"text/tabwriter"
	"time"

	"github.com/boardvisor/boardvisor/client"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"
)

// releaseFollow releases a lease and prints its afterLease dialogue from the
// coordinator's log of it; Ctrl+C disconnects while the hook goes on.
func releaseFollow(cf *coordFlags, id string) error {
	leases, closeConn, err := cf.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c := &client.Client{Leases: leases, Out: os.Stdout}
	return c.ReleaseAndFollow(ctx, id, "released by "+userName())
}

// leaseStory is what `boardvisor lease show` prints: a lease's timeline from its log at
// the coordinator.
type leaseStory struct {
	ID         string       `json:"id" yaml:"id"`
	Board      string       `json:"board,omitempty" yaml:"board,omitempty"`
	Holder     string       `json:"holder" yaml:"holder"`
	Phase      string       `json:"phase" yaml:"phase"`
	Created    time.Time    `json:"created" yaml:"created"`
	Phases     []storyPhase `json:"phases" yaml:"phases"`
	Hooks      []storyHook  `json:"hooks,omitempty" yaml:"hooks,omitempty"`
	Errors     []storyError `json:"errors,omitempty" yaml:"errors,omitempty"`
	Ended      *storyEnd    `json:"ended,omitempty" yaml:"ended,omitempty"`
	LogRemoved string       `json:"log_removed,omitempty" yaml:"log_removed,omitempty"` // why the log is not there
}

type storyPhase struct {
	Phase    string    `json:"phase" yaml:"phase"`
	Start    time.Time `json:"start" yaml:"start"`
	Duration string    `json:"duration,omitempty" yaml:"duration,omitempty"` // empty for DONE and FAILED
	Seconds  float64   `json:"duration_seconds,omitempty" yaml:"duration_seconds,omitempty"`
	Ongoing  bool      `json:"ongoing,omitempty" yaml:"ongoing,omitempty"` // the lease is in it now
	Message  string    `json:"message,omitempty" yaml:"message,omitempty"`
}

type storyHook struct {
	Hook     string    `json:"hook" yaml:"hook"`       // beforeLease or afterLease
	Outcome  string    `json:"outcome" yaml:"outcome"` // ok, failed or running
	Start    time.Time `json:"start" yaml:"start"`
	Duration string    `json:"duration" yaml:"duration"`
	Seconds  float64   `json:"duration_seconds" yaml:"duration_seconds"`
	Lines    int       `json:"lines" yaml:"lines"`
	Warnings int       `json:"warnings,omitempty" yaml:"warnings,omitempty"`
	Errors   int       `json:"errors,omitempty" yaml:"errors,omitempty"`
}

type storyError struct {
	Time        time.Time `json:"time" yaml:"time"`
	Kind        string    `json:"kind" yaml:"kind"`
	Description string    `json:"description" yaml:"description"`
}

type storyEnd struct {
	Time   time.Time `json:"time" yaml:"time"`
	Phase  string    `json:"phase" yaml:"phase"`
	By     string    `json:"by,omitempty" yaml:"by,omitempty"`
	Reason string    `json:"reason,omitempty" yaml:"reason,omitempty"`
}

func newLeaseShow(cf *coordFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "show ID [-o table|json|yaml]",
		Short: "a lease's timeline: each phase with its start and duration, each hook's outcome, errors, how it ended",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" && output != "yaml" {
				return usageError{fmt.Errorf("unknown output %q (want table, json or yaml)", output)}
			}
			return withLeases(cf, func(ctx context.Context, c pb.LeaseServiceClient) error {
				r, err := c.GetLease(ctx, &pb.GetLeaseRequest{Id: args[0]})
				if err != nil {
					return fmt.Errorf("lease %s: %s", args[0], status.Convert(err).Message())
				}
				var entries []*pb.LeaseLogEntry
				removed := ""
				err = client.FollowLog(ctx, c, &pb.LeaseLogRequest{LeaseId: args[0]}, func(e *pb.LeaseLogEntry) error {
					entries = append(entries, e)
					return nil
				})
				if status.Code(err) == codes.FailedPrecondition {
					removed, err = status.Convert(err).Message(), nil
				}
				if err != nil {
					return err
				}
				story := buildStory(r.GetLease(), entries, time.Now())
				if removed != "" {
					story.Phases, story.LogRemoved = nil, removed
				}
				return printStory(os.Stdout, story, output)
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

// hookOf names the hook a phase runs when the board's status says one runs, and the
// status its failure shows.
func hookOf(p pb.LeasePhase, st jpb.ExporterStatus) (name string, failed jpb.ExporterStatus) {
	switch {
	case p == pb.LeasePhase_LEASE_PHASE_BEFORE_LEASE && st == jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK:
		return "beforeLease", jpb.ExporterStatus_EXPORTER_STATUS_BEFORE_LEASE_HOOK_FAILED
	case p == pb.LeasePhase_LEASE_PHASE_AFTER_LEASE && st == jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK:
		return "afterLease", jpb.ExporterStatus_EXPORTER_STATUS_AFTER_LEASE_HOOK_FAILED
	}
	return "", 0
}

// buildStory makes a lease's timeline from its log; now bounds what is still going on.
func buildStory(l *pb.Lease, entries []*pb.LeaseLogEntry, now time.Time) leaseStory {
	s := leaseStory{ID: l.GetId(), Board: l.GetBoard(), Holder: l.GetClientName(), Phase: client.PhaseName(l.GetPhase()),
		Created: l.GetCreatedAt().AsTime()}
	s.Phases = append(s.Phases, storyPhase{Phase: client.PhaseName(pb.LeasePhase_LEASE_PHASE_CREATED), Start: s.Created})
	var hook *storyHook
	var hookFailed jpb.ExporterStatus
	closeHook := func(at time.Time, st jpb.ExporterStatus) {
		if hook == nil {
			return
		}
		hook.Outcome = "ok"
		if st == hookFailed {
			hook.Outcome = "failed"
		}
		d := at.Sub(hook.Start)
		hook.Duration, hook.Seconds = roundDuration(d), d.Seconds()
		s.Hooks = append(s.Hooks, *hook)
		hook = nil
	}
	for _, e := range entries {
		at := e.GetTime().AsTime()
		switch b := e.GetBody().(type) {
		case *pb.LeaseLogEntry_Phase:
			ph := b.Phase
			closeHook(at, ph.GetExporterStatus())
			s.Phases = append(s.Phases, storyPhase{Phase: client.PhaseName(ph.GetTo()), Start: at, Message: ph.GetStatusMessage()})
			if name, failed := hookOf(ph.GetTo(), ph.GetExporterStatus()); name != "" {
				hook, hookFailed = &storyHook{Hook: name, Start: at}, failed
			}
		case *pb.LeaseLogEntry_HookLine:
			h := b.HookLine
			if hook == nil || h.GetProgress() || h.GetSource() == jpb.LogSource_LOG_SOURCE_MESSAGE {
				continue
			}
			hook.Lines++
			switch h.GetSeverity() {
			case pb.Severity_SEVERITY_WARN:
				hook.Warnings++
			case pb.Severity_SEVERITY_ERROR:
				hook.Errors++
			}
		case *pb.LeaseLogEntry_Error:
			s.Errors = append(s.Errors, storyError{Time: at, Kind: jobs.JobErrorKind(b.Error.GetKind()).String(), Description: b.Error.GetDescription()})
		case *pb.LeaseLogEntry_End:
			end := b.End
			s.Ended = &storyEnd{Time: end.GetEndedAt().AsTime(), Phase: client.PhaseName(end.GetPhase()), By: end.GetEndedBy(), Reason: end.GetReason()}
		}
	}
	if hook != nil { // still running
		d := now.Sub(hook.Start)
		hook.Outcome, hook.Duration, hook.Seconds = "running", roundDuration(d), d.Seconds()
		s.Hooks = append(s.Hooks, *hook)
	}
	for i := range s.Phases {
		p := &s.Phases[i]
		if p.Phase == "DONE" || p.Phase == "FAILED" {
			continue
		}
		until := now
		if i+1 < len(s.Phases) {
			until = s.Phases[i+1].Start
		} else if s.Ended != nil {
			until = s.Ended.Time
		} else {
			p.Ongoing = true
		}
		d := until.Sub(p.Start)
		p.Duration, p.Seconds = roundDuration(d), d.Seconds()
	}
	return s
}

func roundDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Minute:
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func printStory(w io.Writer, s leaseStory, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	case "yaml":
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(s); err != nil {
			return err
		}
		return enc.Close()
	}
	v := client.Visible // every text but the IDs came from a client or a supervisor
	ts := func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05.000") }
	fmt.Fprintf(w, "Lease %s  board %s  holder %s  phase %s\n", s.ID, first(v(s.Board), "(none)"), v(s.Holder), s.Phase)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(s.Phases) > 0 {
		fmt.Fprintln(tw, "\nPHASE\tSTART\tDURATION\tNOTE")
	}
	for _, p := range s.Phases {
		d := p.Duration
		if p.Ongoing {
			d += " (so far)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Phase, ts(p.Start), first(d, "-"), v(p.Message))
	}
	if len(s.Hooks) > 0 {
		fmt.Fprintln(tw, "\nHOOK\tOUTCOME\tSTART\tDURATION\tLINES")
		for _, h := range s.Hooks {
			lines := fmt.Sprint(h.Lines)
			if h.Warnings+h.Errors > 0 {
				lines += fmt.Sprintf(" (%d warnings, %d errors)", h.Warnings, h.Errors)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Hook, h.Outcome, ts(h.Start), h.Duration, lines)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Errors) > 0 {
		fmt.Fprintln(w, "\nERRORS")
		for _, e := range s.Errors {
			fmt.Fprintf(w, "%s  %s: %s\n", ts(e.Time), e.Kind, v(e.Description))
		}
	}
	switch {
	case s.Ended != nil:
		fmt.Fprintf(w, "\nEnded %s (%s)", ts(s.Ended.Time), s.Ended.Phase)
		if s.Ended.By != "" {
			fmt.Fprintf(w, " by %s", v(s.Ended.By))
		}
		if s.Ended.Reason != "" {
			fmt.Fprintf(w, ": %s", v(s.Ended.Reason))
		}
		fmt.Fprintln(w)
	case s.LogRemoved != "":
	default:
		fmt.Fprintln(w, "\nNot ended yet.")
	}
	if s.LogRemoved != "" {
		fmt.Fprintf(w, "\nNo timeline: %s\n", s.LogRemoved)
	}
	return nil
}
