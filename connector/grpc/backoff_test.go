package grpc

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	ggrpc "google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// attempts records when a coordinator saw connection attempts.
type attempts struct {
	mu sync.Mutex
	at []time.Time
}

func (a *attempts) add() {
	a.mu.Lock()
	a.at = append(a.at, time.Now())
	a.mu.Unlock()
}

func (a *attempts) times() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.at...)
}

// flakyCoordinator answers every stream with fn's behaviour.
type flakyCoordinator struct {
	pb.UnimplementedSupervisorLinkServer
	tries *attempts
	fn    func(stream pb.SupervisorLink_ConnectServer) error
}

func (f *flakyCoordinator) Connect(stream pb.SupervisorLink_ConnectServer) error {
	f.tries.add()
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return f.fn(stream)
}

func welcomeThen(err error) func(pb.SupervisorLink_ConnectServer) error {
	return func(stream pb.SupervisorLink_ConnectServer) error {
		if e := stream.Send(welcome(0)); e != nil {
			return e
		}
		return err
	}
}

// runClient runs a Client with short back-offs against addr for d and returns its log.
func runClient(t *testing.T, addr, token string, d time.Duration, opts ClientOptions) string {
	t.Helper()
	q, err := OpenQueue(filepath.Join(t.TempDir(), "outbox.db"), QueueOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var log bufLog
	opts.Address, opts.Token, opts.SupervisorID, opts.Queue, opts.Logger = addr, token, "lab-1", q, logger(&log)
	c := NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c.Run(ctx, &fakeSupervisor{ch: make(chan struct{}, 1)})
	return log.String()
}

func serveRaw(t *testing.T, srv pb.SupervisorLinkServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := ggrpc.NewServer()
	pb.RegisterSupervisorLinkServer(g, srv)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func minGap(ts []time.Time) time.Duration {
	g := time.Duration(1 << 62)
	for i := 1; i < len(ts); i++ {
		g = min(g, ts[i].Sub(ts[i-1]))
	}
	return g
}

// A coordinator that refuses the token: attempts are RefusedBackoff apart (minutes by
// default), and each says which config key to fix, once.
func TestRefusedTokenBacksOffToMinutesAndNamesTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, token, key string
	}{
		{"unknown token", "bad-token", "coordinator.tokenFile"},
		{"token of another supervisor", "lab-2-token", "coordinator.supervisorId"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tries := &attempts{}
			auth := StaticTokens(map[string]string{"lab-2-token": "lab-2"})
			srv := &Server{Handler: newCoordinator(t), Auth: func(tok string) (string, error) { tries.add(); return auth(tok) }}
			addr, _ := serve(t, "127.0.0.1:0", srv)
			const refused = 400 * time.Millisecond
			log := runClient(t, addr, tc.token, 2500*time.Millisecond,
				ClientOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, RefusedBackoff: refused})
			ts := tries.times()
			if len(ts) < 2 || len(ts) > 2500/200+1 {
				t.Fatalf("%d attempts in 2.5s with a refused back-off of %s", len(ts), refused)
			}
			if g := minGap(ts); g < refused/2 {
				t.Fatalf("attempts %s apart, want at least %s", g, refused/2)
			}
			named := strings.Count(log, "config_key="+tc.key)
			if named < len(ts)-1 || named > len(ts) {
				t.Fatalf("%d attempts, %d log lines naming %s:\n%s", len(ts), named, tc.key, log)
			}
			if strings.Contains(log, tc.token) {
				t.Fatal("the token is in the log")
			}
		})
	}
}

// "Another live supervisor holds this ID" waits the longest ordinary back-off and names
// coordinator.supervisorId.
func TestSupervisorIDInUseBacksOffToTheMaximum(t *testing.T) {
	tries := &attempts{}
	addr := serveRaw(t, &flakyCoordinator{tries: tries, fn: func(pb.SupervisorLink_ConnectServer) error {
		return status.Error(codes.AlreadyExists, "another live supervisor holds ID lab-1")
	}})
	log := runClient(t, addr, "", 2*time.Second, ClientOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 300 * time.Millisecond})
	ts := tries.times()
	if g := minGap(ts); len(ts) < 2 || g < 150*time.Millisecond {
		t.Fatalf("%d attempts, %s apart at least; want about 300ms apart", len(ts), g)
	}
	if n := strings.Count(log, "config_key=coordinator.supervisorId"); n < len(ts)-1 {
		t.Fatalf("%d attempts, %d lines naming coordinator.supervisorId:\n%s", len(ts), n, log)
	}
}

// A session that fails right after the Welcome does not start the back-off over: the
// attempts space out to the maximum, and the same error is not logged again and again.
func TestSessionFailingAfterWelcomeKeepsBackingOff(t *testing.T) {
	tries := &attempts{}
	addr := serveRaw(t, &flakyCoordinator{tries: tries, fn: welcomeThen(status.Error(codes.Unavailable, "coordinator is shutting down"))})
	log := runClient(t, addr, "", 3*time.Second, ClientOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 320 * time.Millisecond})
	ts := tries.times()
	// Doubling from 5ms to 320ms (jittered down to half): about 15 attempts in 3s; with
	// a reset after every Welcome it would be hundreds.
	if len(ts) > 30 {
		t.Fatalf("%d attempts in 3s: the back-off was reset by sessions that failed at once", len(ts))
	}
	if n := strings.Count(log, "[WARN]  coordinator link down"); n > 2 {
		t.Fatalf("the same failure logged %d times:\n%s", n, log)
	}
}

// A session that lived (or had events acknowledged) starts the back-off over.
func TestLongSessionResetsTheBackoff(t *testing.T) {
	tries := &attempts{}
	var mu sync.Mutex
	n := 0
	addr := serveRaw(t, &flakyCoordinator{tries: tries, fn: func(stream pb.SupervisorLink_ConnectServer) error {
		mu.Lock()
		n++
		long := n%4 == 0
		mu.Unlock()
		if err := stream.Send(welcome(0)); err != nil {
			return err
		}
		if long {
			time.Sleep(300 * time.Millisecond) // longer than StableAfter
		}
		return status.Error(codes.Unavailable, "gone")
	}})
	runClient(t, addr, "", 3*time.Second, ClientOptions{MinBackoff: 5 * time.Millisecond, MaxBackoff: 2 * time.Second, StableAfter: 200 * time.Millisecond})
	ts := tries.times()
	// Without resets the waits would double to 2s: 5, 10, 20, ..., about 9 attempts in
	// 3s. With a reset every fourth session they stay short.
	if len(ts) < 12 {
		t.Fatalf("%d attempts in 3s: a session that lived did not reset the back-off", len(ts))
	}
}
