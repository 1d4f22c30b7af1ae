package exporter

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type recordingAuditor struct {
	mu      sync.Mutex
	refused []string
}

func (a *recordingAuditor) Refused(who, board, job, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refused = append(a.refused, fmt.Sprintf("%s|%s|%s|%s", who, board, job, reason))
}

// FuzzAuthorize feeds the metadata a call carries (board name, authorization values)
// to the service's check. It never panics; it lets a call in only with the exact token
// of the lease on that very board; and what it says — the error and the audit record —
// is one of a few fixed texts that depend on the board alone, so no part of a token
// presented ever shows.
func FuzzAuthorize(f *testing.F) {
	f.Add("rpi", "Bearer tok-rpi-1", "")
	f.Add("rpi", "Bearer tok-b2-2", "")
	f.Add("b2", "Bearer tok-rpi-1", "Bearer tok-b2-2")
	f.Add("", "Bearer tok-rpi-1", "")
	f.Add("rpi", "bearer tok-rpi-1", "")
	f.Add("rpi", "Bearer ", "Bearer tok-rpi-1")
	f.Add("nope\x00", "Basic dG9rLXJwaS0x", "")
	f.Add("rpi", "Bearer tok-rpi-1\n", "")

	s := New(map[string]map[string]string{"rpi": nil, "b2": nil, "idle": nil}, nil, nil)
	a := &recordingAuditor{}
	s.Audit = a
	for _, r := range []connector.StartJobRequest{{JobID: "j1", Board: "rpi", Token: "tok-rpi-1"}, {JobID: "j2", Board: "b2", Token: "tok-b2-2"}} {
		if s.register(r) == nil {
			f.Fatal("lease not registered")
		}
		s.Sink(connector.Event{Board: r.Board, JobID: r.JobID, BoardStatus: &connector.BoardStatus{Status: jobs.StatusLeaseReady}})
	}
	f.Fuzz(func(t *testing.T, board, auth, auth2 string) {
		md := metadata.MD{MDBoard: {board}, "authorization": {auth}}
		if auth2 != "" {
			md["authorization"] = append(md["authorization"], auth2)
		}
		ctx := metadata.NewIncomingContext(context.Background(), md)
		a.mu.Lock()
		a.refused = nil
		a.mu.Unlock()

		l, err := s.authorize(ctx)
		if err == nil {
			want := map[string]string{"rpi": "j1", "b2": "j2"}[board]
			tokens := map[string]string{"rpi": "Bearer tok-rpi-1", "b2": "Bearer tok-b2-2"}
			if l == nil || want == "" || l.job != want || l.board != board || auth != tokens[board] {
				t.Fatalf("board %q, authorization %q: let in as %+v", board, auth, l)
			}
			return
		}
		if l != nil {
			t.Fatal("a lease with an error")
		}
		st := status.Convert(err)
		allowed := map[codes.Code]string{
			codes.InvalidArgument:  "no board named: set the " + MDBoard + " metadata key",
			codes.NotFound:         fmt.Sprintf("no board named %q on this supervisor", board),
			codes.Unauthenticated:  "no lease token: send authorization: Bearer <lease token>",
			codes.PermissionDenied: "this token holds no live lease on board " + board,
		}
		if msg, ok := allowed[st.Code()]; !ok || st.Message() != msg {
			t.Fatalf("board %q, authorization %q: %v", board, auth, err)
		}
		a.mu.Lock()
		got := slices.Clone(a.refused)
		a.mu.Unlock()
		switch st.Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			job := map[string]string{"rpi": "j1", "b2": "j2"}[board]
			reasons := []string{"no lease token", "the token holds no live lease",
				"the token is for lease j1 on board rpi", "the token is for lease j2 on board b2"}
			if len(got) != 1 || !slices.ContainsFunc(reasons, func(r string) bool { return got[0] == "unknown|"+board+"|"+job+"|"+r }) {
				t.Fatalf("board %q, authorization %q: audited %q", board, auth, got)
			}
		default:
			if len(got) != 0 {
				t.Fatalf("audited %q for %v", got, err)
			}
		}
	})
}
