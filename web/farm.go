package web

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// What the pages show, as JSON. Times are RFC 3339 (UTC) or absent. Enum values lose
// their prefixes (AVAILABLE, GOOD, READY, BEFORE_LEASE_HOOK, ...).

type boardJSON struct {
	Kind       string            `json:"kind"`
	Key        string            `json:"key"`
	Name       string            `json:"name"`
	Supervisor string            `json:"supervisor"`
	Labels     map[string]string `json:"labels"`
	Status     string            `json:"status"`
	Health     string            `json:"health"`
	Lease      string            `json:"lease,omitempty"`
	Holder     string            `json:"holder,omitempty"`
	Phase      string            `json:"phase,omitempty"`
	EndsAt     string            `json:"endsAt,omitempty"`
	Queue      int               `json:"queue"`
}

type leaseJSON struct {
	Kind     string `json:"kind,omitempty"`
	Key      string `json:"key,omitempty"`
	ID       string `json:"id"`
	Board    string `json:"board,omitempty"`
	Selector string `json:"selector,omitempty"`
	Client   string `json:"client"`
	Phase    string `json:"phase"`
	Status   string `json:"status"`
	Message  string `json:"message,omitempty"`
	Created  string `json:"createdAt,omitempty"`
	Begins   string `json:"beginsAt,omitempty"`
	Ends     string `json:"endsAt,omitempty"`
	Queued   bool   `json:"queued"`
}

type supervisorJSON struct {
	Kind        string `json:"kind"`
	Key         string `json:"key"`
	ID          string `json:"id"`
	Connected   bool   `json:"connected"`
	Gone        bool   `json:"gone"`
	LastContact string `json:"lastContact,omitempty"`
	Version     string `json:"version"`
	Boards      int    `json:"boards"`
	LiveLeases  int    `json:"liveLeases"`
	LastSeq     int64  `json:"lastSeq"`
	// OutboxDepth is not known: supervisors do not report it yet.
}

func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339Nano)
}

func short(s, prefix string) string { return strings.TrimPrefix(s, prefix) }

func leaseOf(l *pb.Lease) leaseJSON {
	return leaseJSON{ID: l.GetId(), Board: l.GetBoard(), Selector: l.GetSelector(), Client: l.GetClientName(),
		Phase:   short(l.GetPhase().String(), "LEASE_PHASE_"),
		Status:  short(l.GetExporterStatus().String(), "EXPORTER_STATUS_"),
		Message: l.GetStatusMessage(), Created: ts(l.GetCreatedAt()), Begins: ts(l.GetBeginsAt()), Ends: ts(l.GetEndsAt()),
		Queued: l.GetQueued()}
}

func rowEvent(v any) []byte {
	b, _ := json.Marshal(v) // plain structs of strings, ints and bools always marshal
	return sseEvent("row", "", b)
}

// loadFarm reads the boards and the unended leases, as the coordinator's own process:
// the shared watcher serves every tab, and each tab's filter (label selector; a user's
// own leases) decides what it gets. Per-user access to a lease's details and log is
// checked by the coordinator on the user's own calls (lease.go).
func (s *Server) loadFarm(ctx context.Context) ([]*row, error) {
	boards, err := s.c.ListBoards(ctx, &pb.ListBoardsRequest{})
	if err != nil {
		return nil, err
	}
	leases, err := s.c.ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil {
		return nil, err
	}
	queues, err := s.c.BoardQueues(ctx)
	if err != nil {
		return nil, err
	}
	byID := make(map[string]*pb.Lease, len(leases.GetLeases()))
	rows := make([]*row, 0, len(boards.GetBoards())+len(leases.GetLeases()))
	for _, l := range leases.GetLeases() {
		byID[l.GetId()] = l
		j := leaseOf(l)
		j.Kind, j.Key = "lease", l.GetId()
		rows = append(rows, &row{kind: "lease", key: j.Key, event: rowEvent(j), client: l.GetClientName()})
	}
	for _, b := range boards.GetBoards() {
		j := boardJSON{Kind: "board", Key: b.GetName(), Name: b.GetName(), Supervisor: b.GetSupervisorId(), Labels: b.GetLabels(),
			Status: short(b.GetStatus().String(), "EXPORTER_STATUS_"), Health: short(b.GetHealth().String(), "BOARD_HEALTH_"),
			Lease: b.GetCurrentLeaseId(), Queue: queues[b.GetName()]}
		if j.Labels == nil {
			j.Labels = map[string]string{}
		}
		if l := byID[b.GetCurrentLeaseId()]; l != nil {
			j.Holder, j.EndsAt, j.Phase = l.GetClientName(), ts(l.GetEndsAt()), short(l.GetPhase().String(), "LEASE_PHASE_")
		}
		rows = append(rows, &row{kind: "board", key: j.Key, event: rowEvent(j), labels: b.GetLabels()})
	}
	return rows, nil
}

// loadSupervisors reads the supervisors' state.
func (s *Server) loadSupervisors(ctx context.Context) ([]*row, error) {
	sups, err := s.c.Supervisors(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]*row, 0, len(sups))
	for _, sp := range sups {
		j := supervisorJSON{Kind: "supervisor", Key: sp.ID, ID: sp.ID, Connected: sp.Connected, Gone: sp.Gone,
			Version: sp.Version, Boards: sp.Boards, LiveLeases: sp.LiveLeases, LastSeq: sp.LastSeq}
		if !sp.LastContact.IsZero() && sp.LastContact.Unix() > 0 {
			j.LastContact = sp.LastContact.UTC().Format(time.RFC3339Nano)
		}
		rows = append(rows, &row{kind: "supervisor", key: sp.ID, event: rowEvent(j)})
	}
	return rows, nil
}
