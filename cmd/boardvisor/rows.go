package main

// The rows of boards and leases as the commands print them (output.go), for every
// command that lists or shows one.

import (
	"strings"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// enumName shortens a protobuf enum name: EXPORTER_STATUS_LEASE_READY -> LEASE_READY.
func enumName(s, prefix string) string { return strings.TrimPrefix(s, prefix) }

type boardRow struct {
	Name       string            `json:"name"`
	Supervisor string            `json:"supervisor"`
	Status     string            `json:"status"`
	Health     string            `json:"health"`
	Lease      string            `json:"lease,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Endpoint   string            `json:"endpoint,omitempty"`
}

func boardRowOf(b *pb.Board) boardRow {
	return boardRow{Name: b.GetName(), Supervisor: b.GetSupervisorId(),
		Status: enumName(b.GetStatus().String(), "EXPORTER_STATUS_"),
		Health: strings.ToLower(enumName(b.GetHealth().String(), "BOARD_HEALTH_")),
		Lease:  b.GetCurrentLeaseId(), Labels: b.GetLabels(), Endpoint: b.GetEndpoint()}
}

var boardColumns = []Column[boardRow]{
	{Header: "BOARD", Cell: func(r boardRow) string { return r.Name }},
	{Header: "SUPERVISOR", Cell: func(r boardRow) string { return r.Supervisor }},
	{Header: "STATUS", Cell: func(r boardRow) string { return r.Status }},
	{Header: "HEALTH", Cell: func(r boardRow) string { return r.Health }},
	{Header: "LEASE", Cell: func(r boardRow) string { return r.Lease }},
	{Header: "LABELS", Wide: true, Cell: func(r boardRow) string { return labelsCell(r.Labels) }},
	{Header: "ENDPOINT", Wide: true, Cell: func(r boardRow) string { return r.Endpoint }},
}

// leaseRow is a lease as the commands print it (never with its token).
type leaseRow struct {
	ID       string     `json:"id"`
	Board    string     `json:"board,omitempty"`
	Selector string     `json:"selector,omitempty"`
	Client   string     `json:"client"`
	Phase    string     `json:"phase"`
	Status   string     `json:"status,omitempty"`
	Queued   bool       `json:"queued"`
	Created  *time.Time `json:"created,omitempty"`
	Begins   *time.Time `json:"begins,omitempty"`
	Ends     *time.Time `json:"ends,omitempty"`
	Message  string     `json:"message,omitempty"`
	Exporter string     `json:"exporter,omitempty"`
}

func leaseRowOf(l *pb.Lease) leaseRow {
	r := leaseRow{ID: l.GetId(), Board: l.GetBoard(), Selector: l.GetSelector(), Client: l.GetClientName(),
		Phase: enumName(l.GetPhase().String(), "LEASE_PHASE_"), Queued: l.GetQueued(),
		Message: l.GetStatusMessage(), Exporter: l.GetExporterEndpoint(),
		Created: tsTime(l.GetCreatedAt()), Begins: tsTime(l.GetBeginsAt()), Ends: tsTime(l.GetEndsAt())}
	if s := l.GetExporterStatus(); s != 0 {
		r.Status = enumName(s.String(), "EXPORTER_STATUS_")
	}
	return r
}

// tsTime is a protobuf timestamp as a time in UTC, nil for none.
func tsTime(t *timestamppb.Timestamp) *time.Time {
	if t == nil || !t.IsValid() {
		return nil
	}
	v := t.AsTime().UTC()
	return &v
}

// leaseColumns are a lease's columns; `lease list` and every command that shows a lease
// print them.
var leaseColumns = []Column[leaseRow]{
	{Header: "LEASE", Cell: func(r leaseRow) string { return r.ID }},
	{Header: "BOARD", Cell: func(r leaseRow) string {
		if r.Board == "" && r.Queued {
			return "(queued)"
		}
		return r.Board
	}},
	{Header: "CLIENT", Cell: func(r leaseRow) string { return r.Client }},
	{Header: "PHASE", Cell: func(r leaseRow) string { return r.Phase }},
	{Header: "ENDS", Cell: func(r leaseRow) string { return timeCell(r.Ends) }},
	{Header: "SELECTOR", Wide: true, Cell: func(r leaseRow) string { return r.Selector }},
	{Header: "STATUS", Wide: true, Cell: func(r leaseRow) string { return r.Status }},
	{Header: "CREATED", Wide: true, Cell: func(r leaseRow) string { return timeCell(r.Created) }},
	{Header: "MESSAGE", Wide: true, Cell: func(r leaseRow) string { return r.Message }},
}
