package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The web scenario: what the dashboard costs the coordinator. The real coordinator
// (with --web) and a real supervisor with 1,000 boards; 50 headless tabs (HTTP clients
// logged in, each with its session, reading the boards page's event stream); the
// coordinator's CPU time measured with the tabs open and, as the baseline, the same farm
// doing the same work with no tab open. Twice: an idle farm, and a busy one (leases
// cycling through the boards).
const (
	WebTabs      = 50
	WebRounds    = 3
	WebRound     = 6 * time.Second
	WebLeaseGap  = 200 * time.Millisecond // a new lease every 200ms in the busy farm
	WebLeaseHold = 2 * time.Second        // each held READY this long
)

func runWeb(e *env) error {
	coordAddr, err := freeAddr()
	if err != nil {
		return err
	}
	webAddr, err := freeAddr()
	if err != nil {
		return err
	}
	tokens := filepath.Join(e.dir, "client-tokens")
	var tb strings.Builder
	for i := 0; i < WebTabs; i++ {
		fmt.Fprintf(&tb, "user%02d tok-user-%02d\n", i, i)
	}
	tb.WriteString("bench tok-bench admin\n")
	if err := os.WriteFile(tokens, []byte(tb.String()), 0o600); err != nil {
		return err
	}
	coord, err := startDaemon(e.bin, []string{"coordinator listening"}, "coordinator", "--listen", coordAddr,
		"--state-dir", filepath.Join(e.dir, "coord"), "--client-tokens", tokens, "--web", webAddr, "--log-format", "text")
	if err != nil {
		return err
	}
	defer coord.kill()
	if err := coord.waitFor("coordinator listening", 1, 30*time.Second); err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := waitPort(webAddr, 30*time.Second); err != nil {
		return fmt.Errorf("web dashboard: %w", err)
	}
	cfg := filepath.Join(e.dir, "sup.yaml")
	extra := fmt.Sprintf("coordinator: {address: %q, supervisorId: web-lab}\n", coordAddr)
	if err := writeConfig(cfg, filepath.Join(e.dir, "sup"), "127.0.0.1:0", extra, IdleBoards); err != nil {
		return err
	}
	sup, err := startDaemon(e.bin, []string{"supervising"}, "supervise", "--config", cfg)
	if err != nil {
		return err
	}
	defer sup.kill()
	if err := sup.waitFor("supervising", 1, 60*time.Second); err != nil {
		return err
	}
	conn, err := grpc.NewClient(coordAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	api := pb.NewLeaseServiceClient(conn)
	actx := func(ctx context.Context) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer tok-bench")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := api.ListBoards(actx(context.Background()), &pb.ListBoardsRequest{})
		if err == nil && len(r.GetBoards()) == IdleBoards {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the coordinator lists %d of %d boards after 60s (%v)", len(r.GetBoards()), IdleBoards, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	pid := coord.cmd.Process.Pid
	tabs, err := loginTabs(webAddr, WebTabs)
	if err != nil {
		return err
	}
	defer tabs.close()
	// Rounds alternate: tabs open, tabs closed, with the farm doing the same all along;
	// the dashboard's cost is the difference of the coordinator's CPU time between the
	// two halves. Alternating short rounds keeps the other load of a shared machine out
	// of the difference better than one long window each.
	rounds := func(what string) (with, without float64, perTab float64, err error) {
		var cw, cwo, tw, two time.Duration
		var events int64
		for i := 0; i < WebRounds; i++ {
			if err := tabs.open(); err != nil {
				return 0, 0, 0, err
			}
			time.Sleep(time.Second) // the snapshot is sent
			e0, c0, t0 := tabs.events(), cpuTime(pid), time.Now()
			time.Sleep(WebRound)
			cw, tw = cw+cpuTime(pid)-c0, tw+time.Since(t0)
			events += tabs.events() - e0
			tabs.shut()
			time.Sleep(time.Second) // the watcher stops
			c0, t0 = cpuTime(pid), time.Now()
			time.Sleep(WebRound)
			cwo, two = cwo+cpuTime(pid)-c0, two+time.Since(t0)
		}
		with, without = 100*float64(cw)/float64(tw), 100*float64(cwo)/float64(two)
		logf("%s: coordinator %.2f%% of a core with %d tabs, %.2f%% without", what, with, WebTabs, without)
		return with, without, float64(events) / WebTabs, nil
	}
	add := func(figure string, with, base float64, note string) {
		// The difference, not below 0: with the tabs' cost within the noise, the rounds
		// without them may come out dearer (the value read "-0.00 %").
		cost := max(with-base, 0)
		e.add(Row{Figure: figure, Value: fmt.Sprintf("%.2f %% of a core", cost), Num: cost, Unit: "% core",
			Target: "< 5 %", Baseline: fmt.Sprintf("%.2f %% (no tab)", base), Met: met(cost < 5),
			Note: fmt.Sprintf("coordinator %.2f%% with the tabs, %.2f%% without (%d alternating rounds of %s each); the value is the difference (0 if below); %s",
				with, base, WebRounds, WebRound, note)})
	}

	// Idle farm.
	with, without, _, err := rounds("idle farm")
	if err != nil {
		return err
	}
	add(fmt.Sprintf("web: %d open tabs, %d-board farm, idle", WebTabs, IdleBoards), with, without,
		"heartbeats only: the shared watcher reads nothing while nothing changes")

	// Busy farm: a lease every WebLeaseGap, each held READY for WebLeaseHold.
	ctx, stop := context.WithCancel(context.Background())
	var cycles atomic.Int64
	var lwg sync.WaitGroup
	defer func() { stop(); lwg.Wait() }()
	lwg.Add(1)
	go func() {
		defer lwg.Done()
		tick := time.NewTicker(WebLeaseGap)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			lwg.Add(1)
			go func(b string) {
				defer lwg.Done()
				if webCycle(actx(ctx), api, b) == nil {
					cycles.Add(1)
				}
			}(boardName(i % IdleBoards))
		}
	}()
	time.Sleep(3 * time.Second)
	c0, t0 := cycles.Load(), time.Now()
	with, without, perTab, err := rounds("busy farm")
	if err != nil {
		return err
	}
	rate := float64(cycles.Load()-c0) / time.Since(t0).Seconds()
	add(fmt.Sprintf("web: %d open tabs, %d-board farm, leases cycling", WebTabs, IdleBoards), with, without,
		fmt.Sprintf("%.1f lease cycles/s, each READY for %s; each tab got %.0f events; one shared read of the farm per change (at most every 250ms, at most 5%% of the time)",
			rate, WebLeaseHold, perTab))
	return nil
}

// webCycle leases a board, waits for READY, releases it and waits for its end.
func webCycle(ctx context.Context, api pb.LeaseServiceClient, b string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r, err := api.CreateLease(ctx, &pb.CreateLeaseRequest{Board: b, Duration: durationpb.New(time.Hour)})
	if err != nil {
		return err
	}
	w, err := api.WatchLease(ctx, &pb.WatchLeaseRequest{Id: r.GetLease().GetId()})
	if err != nil {
		return err
	}
	released := false
	for {
		l, err := w.Recv()
		if err != nil {
			return err
		}
		switch l.GetPhase() {
		case pb.LeasePhase_LEASE_PHASE_READY:
			if !released {
				released = true
				select {
				case <-time.After(WebLeaseHold):
				case <-ctx.Done():
					return ctx.Err()
				}
				if _, err := api.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Id: l.GetId()}); err != nil {
					return err
				}
			}
		case pb.LeasePhase_LEASE_PHASE_DONE, pb.LeasePhase_LEASE_PHASE_FAILED:
			return nil
		}
	}
}

// webTabs are headless tabs, each logged in with its own session, reading the boards
// page's stream while open.
type webTabs struct {
	base    string
	clients []*http.Client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	n       atomic.Int64 // events read, all tabs
}

func (w *webTabs) events() int64 { return w.n.Load() }

// shut closes every tab's stream (the sessions stay).
func (w *webTabs) shut() {
	if w.cancel != nil {
		w.cancel()
		w.cancel = nil
	}
	w.wg.Wait()
}

func (w *webTabs) close() { w.shut() }

// loginTabs logs n users in, each with its own session.
func loginTabs(addr string, n int) (*webTabs, error) {
	w := &webTabs{base: "http://" + addr}
	for i := 0; i < n; i++ {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.PostForm(w.base+"/login", url.Values{"token": {fmt.Sprintf("tok-user-%02d", i)}})
		if err != nil {
			return nil, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) == 0 {
			return nil, fmt.Errorf("login of tab %d: %s", i, resp.Status)
		}
		w.clients = append(w.clients, c)
	}
	return w, nil
}

// open opens every tab's stream and returns once each has the whole farm.
func (w *webTabs) open() error {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	ready := make(chan error, len(w.clients))
	for _, c := range w.clients {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.base+"/api/events/farm", nil)
			resp, err := c.Do(req)
			if err != nil {
				ready <- err
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			signalled := false
			for sc.Scan() {
				line := sc.Text()
				if strings.HasPrefix(line, "event: ") {
					w.n.Add(1)
					if line == "event: ready" && !signalled {
						signalled = true
						ready <- nil
					}
				}
			}
			if !signalled {
				ready <- fmt.Errorf("a tab's stream ended before the whole farm: %v", sc.Err())
			}
		}()
	}
	timeout := time.After(60 * time.Second)
	for i := range w.clients {
		select {
		case err := <-ready:
			if err != nil {
				w.shut()
				return err
			}
		case <-timeout:
			w.shut()
			return fmt.Errorf("only %d of %d tabs got the whole farm within 60s", i, len(w.clients))
		}
	}
	return nil
}
