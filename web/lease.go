package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A lease's page: its state (WatchLease) and its log (LeaseLog: phases, hook lines,
// errors, console bytes), both called with the user's token, merged into one event
// stream. Each log entry's SSE id is its LeaseLog position, so a browser that
// reconnects (Last-Event-ID) goes on exactly after the last entry it got: nothing
// missed, nothing twice, across a restart of the coordinator too.

// logEntryJSON is one entry of a lease's log as the page gets it.
type logEntryJSON struct {
	Kind string `json:"kind"` // phase, hook, error, console, gap, end
	Time string `json:"time,omitempty"`
	// phase
	From    string `json:"from,omitempty"`
	To      string `json:"to,omitempty"`
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	// hook
	Source   string `json:"source,omitempty"`
	Severity string `json:"severity,omitempty"`
	Text     string `json:"text,omitempty"`
	Progress bool   `json:"progress,omitempty"`
	Cut      bool   `json:"cut,omitempty"`
	// error
	ErrorKind string `json:"errorKind,omitempty"`
	// console
	Data []byte `json:"data,omitempty"`
	// gap
	Bytes uint64 `json:"bytes,omitempty"`
	// end
	Phase   string `json:"phase,omitempty"`
	EndedBy string `json:"endedBy,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

func entryJSON(e *pb.LeaseLogEntry) logEntryJSON {
	j := logEntryJSON{Time: ts(e.GetTime())}
	switch b := e.GetBody().(type) {
	case *pb.LeaseLogEntry_Phase:
		j.Kind = "phase"
		j.From, j.To = short(b.Phase.GetFrom().String(), "LEASE_PHASE_"), short(b.Phase.GetTo().String(), "LEASE_PHASE_")
		j.Status, j.Message = short(b.Phase.GetExporterStatus().String(), "EXPORTER_STATUS_"), b.Phase.GetStatusMessage()
	case *pb.LeaseLogEntry_HookLine:
		h := b.HookLine
		j.Kind = "hook"
		j.Source, j.Severity = short(h.GetSource().String(), "LOG_SOURCE_"), short(h.GetSeverity().String(), "SEVERITY_")
		j.Text, j.Progress, j.Cut = h.GetText(), h.GetProgress(), h.GetCut()
	case *pb.LeaseLogEntry_Error:
		j.Kind = "error"
		j.ErrorKind, j.Message = short(b.Error.GetKind().String(), "JOB_ERROR_KIND_"), b.Error.GetDescription()
	case *pb.LeaseLogEntry_Console:
		j.Kind, j.Data = "console", b.Console
	case *pb.LeaseLogEntry_ConsoleGap:
		j.Kind, j.Bytes = "gap", b.ConsoleGap
	case *pb.LeaseLogEntry_End:
		j.Kind = "end"
		j.Phase, j.Time = short(b.End.GetPhase().String(), "LEASE_PHASE_"), ts(b.End.GetEndedAt())
		j.Message, j.EndedBy, j.Reason = b.End.GetStatusMessage(), b.End.GetEndedBy(), b.End.GetReason()
	default:
		j.Kind = "unknown"
	}
	return j
}

// visible tells whether a user may see a lease: its holder and admins. (The coordinator
// checks LeaseLog itself; this also covers GetLease and WatchLease.)
func (c caller) visible(l *pb.Lease) bool { return c.user.Admin || l.GetClientName() == c.user.Name }

// lease reads a lease with the user's token and checks that the user may see it.
func (s *Server) lease(ctx context.Context, c caller, id string) (*pb.Lease, int, string) {
	resp, err := s.api.GetLease(c.ctx(ctx), &pb.GetLeaseRequest{Id: id})
	if err != nil {
		code, msg := rpcHTTP(err)
		if code == http.StatusUnauthorized {
			s.sessions.drop(c.sess)
		}
		return nil, code, msg
	}
	l := resp.GetLease()
	if !c.visible(l) {
		s.audit().Refused(c.who(), l.GetBoard(), l.GetId(), "dashboard: view a lease held by "+l.GetClientName())
		return nil, http.StatusForbidden, "lease " + id + " is another user's; only its holder or an admin may see it"
	}
	return l, 0, ""
}

func (s *Server) getLease(w http.ResponseWriter, r *http.Request, c caller) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	l, code, msg := s.lease(ctx, c, r.PathValue("id"))
	if l == nil {
		writeError(w, code, msg)
		return
	}
	writeJSON(w, http.StatusOK, leaseOf(l))
}

// leaseEvents streams a lease: "lease" (its state, on every change), "log" (its log
// entries, each with its position as id), "problem" (a sentence; fatal: do not
// reconnect) and, once the lease has ended, "end" after its last entry.
func (s *Server) leaseEvents(w http.ResponseWriter, r *http.Request, c caller) {
	id := r.PathValue("id")
	after := r.Header.Get("Last-Event-ID")
	if after == "" {
		after = r.URL.Query().Get("after")
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	l, code, msg := s.lease(ctx, c, id)
	if l == nil {
		writeError(w, code, msg)
		return
	}
	if !s.streamSlot(w) {
		return
	}
	defer s.streams.Add(-1)
	uctx := c.ctx(ctx)
	logs, err := s.api.LeaseLog(uctx, &pb.LeaseLogRequest{LeaseId: id, After: after, Console: true, Follow: true})
	if err != nil {
		s.rpcError(w, c, err)
		return
	}
	watch, err := s.api.WatchLease(uctx, &pb.WatchLeaseRequest{Id: id})
	if err != nil {
		s.rpcError(w, c, err)
		return
	}
	out, err := startSSE(w, s.opts.WriteTimeout, s.opts.Retry)
	if err != nil {
		return
	}
	// Two readers, one writer (this goroutine). The channels are small: a browser that
	// reads slowly holds up its own LeaseLog stream (gRPC flow control), nobody else.
	states := make(chan *pb.Lease, 4)
	entries := make(chan *pb.LeaseLogEntry, 64)
	logErr := make(chan error, 1)
	go func() {
		for {
			l, err := watch.Recv()
			if err != nil {
				return
			}
			select {
			case states <- l:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		defer close(entries)
		for {
			e, err := logs.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					logErr <- err
				}
				return
			}
			select {
			case entries <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	if out.write(s.leaseState(l)) != nil {
		return
	}
	hb := time.NewTicker(s.opts.Heartbeat)
	defer hb.Stop()
	for {
		if out.flush() != nil {
			return
		}
		select {
		case l := <-states:
			if out.write(s.leaseState(l)) != nil {
				return
			}
		case e, ok := <-entries:
			if !ok {
				s.endLeaseStream(ctx, out, c, id, logErr)
				return
			}
			if !s.writeEntries(out, e, entries) {
				return
			}
		case <-hb.C:
			if out.heartbeat() != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}

// writeEntries writes an entry and whatever else is waiting, before one flush.
func (s *Server) writeEntries(out *sseWriter, e *pb.LeaseLogEntry, more <-chan *pb.LeaseLogEntry) bool {
	for n := 0; ; n++ {
		b, _ := json.Marshal(entryJSON(e))
		name := "log"
		if e.GetEnd() != nil {
			name = "end"
		}
		if out.write(sseEvent(name, e.GetPosition(), b)) != nil {
			return false
		}
		if n >= 255 {
			return true
		}
		select {
		case next, ok := <-more:
			if !ok {
				return true // the caller sees the closed channel next
			}
			e = next
		default:
			return true
		}
	}
}

// endLeaseStream ends a lease's stream after its log: with the lease's last state, or
// with a problem the user is told.
func (s *Server) endLeaseStream(ctx context.Context, out *sseWriter, c caller, id string, logErr <-chan error) {
	select {
	case err := <-logErr:
		st := status.Convert(err)
		switch st.Code() {
		case codes.Canceled, codes.Unavailable:
			return // the browser went away, or the coordinator stops: the browser reconnects
		case codes.Unauthenticated:
			s.sessions.drop(c.sess)
		}
		_, msg := rpcHTTP(err)
		fatal := st.Code() != codes.ResourceExhausted && st.Code() != codes.Internal
		b, _ := json.Marshal(map[string]any{"message": msg, "fatal": fatal})
		if !fatal {
			_ = out.write([]byte("retry: 10000\n\n"))
		}
		_ = out.write(sseEvent("problem", "", b))
		_ = out.flush()
		return
	default:
	}
	gctx, cancel := context.WithTimeout(c.ctx(ctx), 10*time.Second)
	defer cancel()
	if resp, err := s.api.GetLease(gctx, &pb.GetLeaseRequest{Id: id}); err == nil {
		_ = out.write(s.leaseState(resp.GetLease()))
	}
	_ = out.flush()
}

func (s *Server) leaseState(l *pb.Lease) []byte {
	b, _ := json.Marshal(leaseOf(l))
	return sseEvent("lease", "", b)
}
