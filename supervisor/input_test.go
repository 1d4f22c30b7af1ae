package supervisor

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	"github.com/google/uuid"
)

// A client name or a parameter with a NUL byte or another control character is refused
// by StartJob with an error naming it; no lease starts, no hook runs, and a board whose
// hooks are onFailure: exit stays healthy and serves the next lease.
func TestStartJobRefusesControlCharacters(t *testing.T) {
	t.Parallel()
	rec, lines := record(t)
	h := start(t, board.Config{Name: "strict",
		Before: hookCfg(`echo "before-$CLIENT_NAME" >> `+rec, jobs.PolicyExit, wait),
		After:  hookCfg(`echo after >> `+rec, jobs.PolicyExit, wait)})
	for _, tc := range []struct {
		name string
		req  func(*connector.StartJobRequest)
		want string
	}{
		{"NUL in the client name", func(r *connector.StartJobRequest) { r.Client = "mallory\x00" },
			`client name "mallory\x00" holds a control character (U+0000)`},
		{"escape in the client name", func(r *connector.StartJobRequest) { r.Client = "\x1b[2J" }, "(U+001B)"},
		{"NUL in a parameter", func(r *connector.StartJobRequest) { r.Parameters = map[string]string{"image": "x\x00y"} },
			`parameter "image" "x\x00y" holds a control character`},
		{"newline in a parameter name", func(r *connector.StartJobRequest) { r.Parameters = map[string]string{"a\nb": "x"} },
			`parameter name "a\nb" holds a control character`},
	} {
		req := connector.StartJobRequest{JobID: uuid.NewString(), Board: "strict", Client: "alice"}
		tc.req(&req)
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		err := h.conn.StartJob(ctx, req)
		cancel()
		var je *jobs.JobError
		if !errors.As(err, &je) || !strings.Contains(je.Description, tc.want) {
			t.Errorf("%s: StartJob = %v, want a JobError saying %q", tc.name, err, tc.want)
		}
		for _, ev := range h.conn.Events() {
			if ev.JobID == req.JobID && ev.Transition != nil {
				t.Errorf("%s: the refused job has transitions: %s", tc.name, ev)
			}
		}
		h.assertBoard(t, "strict", jobs.StatusAvailable, jobs.HealthGood)
	}
	job := h.startJob("strict")
	h.waitPhase(job, jobs.PhaseReady)
	if err := h.stopJob(job); err != nil {
		t.Fatal(err)
	}
	h.waitPhase(job, jobs.PhaseDone)
	if got := strings.Join(lines(), "|"); got != "before-alice|after" {
		t.Errorf("hook runs: %q, want only the good lease's", got)
	}
	h.assertBoard(t, "strict", jobs.StatusAvailable, jobs.HealthGood)
}
