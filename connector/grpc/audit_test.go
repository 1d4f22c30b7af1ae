package grpc

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type auditRecorder struct {
	mu  sync.Mutex
	got []string
}

func (a *auditRecorder) Refused(who, board, job, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, fmt.Sprintf("%s|%s|%s|%s", who, board, job, reason))
}

// Supervisors refused for their token are audited, without the token.
func TestRefusedSupervisorsAreAudited(t *testing.T) {
	a := &auditRecorder{}
	srv := &Server{Handler: &checkingHandler{}, Audit: a, Auth: StaticTokens(map[string]string{"s3cret-lab-1": "lab-1"})}
	for _, c := range []struct {
		token, id string
		code      codes.Code
	}{
		{"s3cret-forged", "lab-1", codes.Unauthenticated},
		{"s3cret-lab-1", "lab-2", codes.PermissionDenied},
		{"s3cret-lab-1", "lab-1", codes.OK},
	} {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+c.token))
		err := srv.Connect(&memStream{ctx: ctx, in: []*pb.SupervisorMessage{helloMsg(c.id, 0)}})
		if status.Code(err) != c.code {
			t.Errorf("token %s as %s: %v, want %s", c.token, c.id, err, c.code)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error names the token: %v", err)
		}
	}
	want := []string{"unknown|||supervisor token not accepted", `unknown|||claimed to be supervisor "lab-2" with the token of supervisor "lab-1"`}
	if strings.Join(a.got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audited:\n%s\nwant:\n%s", strings.Join(a.got, "\n"), strings.Join(want, "\n"))
	}
}
