package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/actors/board"
	"github.com/boardvisor/boardvisor/actors/lease"
	"github.com/boardvisor/boardvisor/actors/outbox"
	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	jhook "github.com/boardvisor/boardvisor/jobs/hook"
	"github.com/boardvisor/boardvisor/jobs/journal"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"github.com/boardvisor/boardvisor/supervisor"
	"github.com/boardvisor/boardvisor/supervisor/exporter"
	"github.com/google/uuid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// clientSide is an in-process supervisor with its client service on a loopback port.
type clientSide struct {
	p    *inproc
	c    *conn
	ph   *phases
	g    *grpc.Server
	cc   *grpc.ClientConn
	cli  jpb.ExporterServiceClient
	jr   *journal.Journal
	stop func()
}

func startClientSide(e *env, boards []board.Config, sinks ...outbox.Sink) (*clientSide, error) {
	jr, err := journal.Open(e.dir+"/journal.db", journal.Options{})
	if err != nil {
		return nil, err
	}
	labels := map[string]map[string]string{}
	for _, b := range boards {
		labels[b.Name] = b.Labels
	}
	cs := &clientSide{ph: newPhases(), jr: jr}
	cs.c = newConn(cs.ph.event)
	svc := exporter.New(labels, exporter.EnderFunc(func(ctx context.Context, board, job string) error {
		return cs.p.sup.EndSession(ctx, board, job)
	}), nil)
	cs.p, err = startInproc(e, inprocOpts{boards: boards, conn: cs.c, exporter: svc, sinks: sinks, store: supervisor.Options{Store: jr}})
	if err != nil {
		jr.Close()
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	cs.g = supervisor.NewGRPCServer()
	svc.Register(cs.g)
	go cs.g.Serve(lis)
	cs.cc, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	cs.cli = jpb.NewExporterServiceClient(cs.cc)
	cs.stop = func() {
		cs.cc.Close()
		cs.g.Stop()
		_ = cs.p.stop()
		jr.Close()
	}
	return cs, nil
}

func callCtx(ctx context.Context, board, token string) context.Context {
	kv := []string{exporter.MDBoard, board}
	if token != "" {
		kv = append(kv, "authorization", "Bearer "+token)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// Hook log scenario: HookBoards boards run a beforeLease hook at once, each printing
// HookLines timestamped lines, one every HookEvery, with a block-buffering writer
// (Python's print, which buffers into a pipe and writes each line to a terminal); a
// LogStream reader per lease computes now - printed time for each line. The baseline
// is the same hooks on a plain pipe (terminal: false), where the lines wait in the
// writer's buffer until it exits.
const (
	HookBoards = 20
	HookLines  = 100
	HookEvery  = 20 * time.Millisecond
)

func runHookLog(e *env) error {
	writer := "python3 print (no flush)"
	script := fmt.Sprintf(`exec /usr/bin/python3 -c 'import time
time.sleep(0.3)
for i in range(%d):
    time.sleep(%g)
    print("T", time.time_ns())
'`, HookLines, HookEvery.Seconds())
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		writer = "a Go writer with C stdio's buffering (python3 is not installed)"
		script = fmt.Sprintf("exec %s child hookprint -n %d -every %s -delay 300ms", e.self, HookLines, HookEvery)
	}
	lat, err := hookLogLatency(e, script, false)
	if err != nil {
		return err
	}
	base, err := hookLogLatency(e, script, true)
	if err != nil {
		return fmt.Errorf("baseline (pipe): %w", err)
	}
	p50, p99 := lat.pct(50), lat.pct(99)
	logf("hook line -> LogStream reader: %d lines, p50 %s p99 %s max %s; on a pipe p50 %s p99 %s", lat.n(), ms(p50), ms(p99), ms(lat.pct(100)),
		ms(base.pct(50)), ms(base.pct(99)))
	e.add(Row{Figure: fmt.Sprintf("hook line -> LogStream reader (%d hooks printing at once, block-buffering writer)", HookBoards),
		Value: "p50 " + ms(p50) + ", p99 " + ms(p99), Num: float64(p99) / 1e6, Unit: "ms", Target: "p99 < 20 ms",
		Baseline: "p99 " + ms(base.pct(99)) + " on a pipe", Ratio: ratio(float64(base.pct(99)), float64(p99)), Met: met(p99 < 20*time.Millisecond),
		Note: fmt.Sprintf("%d lines, one per %s per hook, while the hooks run, written by %s to the hook's terminal; max %s; baseline: the same hooks with terminal: false",
			lat.n(), HookEvery, writer, ms(lat.pct(100)))})
	return nil
}

// hookLogLatency runs the hook log scenario once, with the hooks on a terminal or a
// pipe, in a state directory of its own.
func hookLogLatency(e *env, script string, pipe bool) (*latencies, error) {
	var boards []board.Config
	for i := 0; i < HookBoards; i++ {
		boards = append(boards, board.Config{Name: boardName(i), LeaseDuration: time.Hour,
			Before: &lease.HookConfig{Spec: jhook.Spec{Script: script, Pipe: pipe}, Policy: jobs.HookPolicy{Timeout: time.Minute, OnFailure: jobs.PolicyEndLease}}})
	}
	sub := *e
	sub.dir = fmt.Sprintf("%s/hooklog-pipe-%v", e.dir, pipe)
	if err := os.MkdirAll(sub.dir, 0o700); err != nil {
		return nil, err
	}
	cs, err := startClientSide(&sub, boards)
	if err != nil {
		return nil, err
	}
	defer cs.stop()
	lat := &latencies{}
	var wg sync.WaitGroup
	errs := make(chan error, HookBoards)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	for i := 0; i < HookBoards; i++ {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			job, token := uuid.NewString(), uuid.NewString()
			chs := cs.ph.expect(job, jobs.PhaseReady, jobs.PhaseDone)
			if err := cs.c.StartJob(ctx, connector.StartJobRequest{JobID: job, Board: name, Client: "bench", Token: token}); err != nil {
				errs <- err
				return
			}
			stream, err := cs.cli.LogStream(callCtx(ctx, name, token), &emptypb.Empty{})
			if err != nil {
				errs <- err
				return
			}
			got := 0
			for got < HookLines {
				r, err := stream.Recv()
				now := time.Now()
				if err != nil {
					errs <- fmt.Errorf("log stream of %s after %d lines: %w", name, got, err)
					return
				}
				if ts, ok := strings.CutPrefix(r.GetMessage(), "T "); ok {
					ns, err := strconv.ParseInt(ts, 10, 64)
					if err == nil {
						lat.add(now.Sub(time.Unix(0, ns)))
						got++
					}
				}
			}
			<-chs[0]
			if err := cs.c.StopJob(ctx, connector.StopJobRequest{JobID: job}); err != nil {
				errs <- err
				return
			}
			select {
			case <-chs[1]:
			case <-ctx.Done():
				errs <- errors.New("lease did not end")
			}
		}(boardName(i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return nil, err
	}
	return lat, nil
}

// runHookPrint is the hook of the hook log scenario where python3 is missing: it
// prints -n lines "T <unix ns>", one every -every, after -delay, buffered as C stdio
// buffers: line by line on a terminal, in 4 KiB blocks into a pipe.
func runHookPrint(e *env) error {
	time.Sleep(e.durFlag("delay"))
	every := e.durFlag("every")
	w := bufio.NewWriterSize(os.Stdout, 4096)
	_, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS)
	lineBuffered := err == nil
	for i := 0; i < e.intFlag("n"); i++ {
		time.Sleep(every)
		fmt.Fprintf(w, "T %d\n", time.Now().UnixNano())
		if lineBuffered {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
	return w.Flush()
}

// Status scenario: StatusBoards boards cycle leases (no hooks) with a pause between
// steps, each watched by a WatchStatus reader.
const (
	StatusBoards = 100
	StatusWindow = 5 * time.Second
	StatusPause  = 100 * time.Millisecond
)

// statusTimes mirrors the client service's status versions: when each version of each
// board's status passed the outbox (this sink runs just before the service's own).
type statusTimes struct {
	mu sync.Mutex
	m  map[string]*boardVersions
}

type boardVersions struct {
	status  jobs.ExporterStatus
	version uint64
	at      map[uint64]time.Time
}

func (s *statusTimes) sink(ev connector.Event) {
	if ev.BoardStatus == nil {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[ev.Board]
	if b == nil {
		b = &boardVersions{at: map[uint64]time.Time{}}
		s.m[ev.Board] = b
	}
	if b.status != ev.BoardStatus.Status || b.version == 0 {
		b.version++
		b.status = ev.BoardStatus.Status
		b.at[b.version] = now
	}
}

func (s *statusTimes) when(board string, version uint64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.m[board]; b != nil {
		t, ok := b.at[version]
		return t, ok
	}
	return time.Time{}, false
}

func runStatus(e *env) error {
	var boards []board.Config
	for i := 0; i < StatusBoards; i++ {
		boards = append(boards, board.Config{Name: boardName(i), LeaseDuration: time.Hour})
	}
	times := &statusTimes{m: map[string]*boardVersions{}}
	cs, err := startClientSide(e, boards, times.sink)
	if err != nil {
		return err
	}
	defer cs.stop()
	var lat latencies
	ctx, cancel := context.WithTimeout(context.Background(), StatusWindow+30*time.Second)
	defer cancel()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var readers sync.WaitGroup
	var missing int64
	var mu sync.Mutex
	for i := 0; i < StatusBoards; i++ {
		stream, err := cs.cli.WatchStatus(callCtx(watchCtx, boardName(i), ""), &jpb.WatchStatusRequest{})
		if err != nil {
			stopWatch()
			return err
		}
		if _, err := stream.Recv(); err != nil { // the current status
			stopWatch()
			return err
		}
		readers.Add(1)
		go func(name string) {
			defer readers.Done()
			for {
				r, err := stream.Recv()
				now := time.Now()
				if err != nil {
					return
				}
				if t, ok := times.when(name, r.GetStatusVersion()); ok {
					lat.add(now.Sub(t))
				} else {
					mu.Lock()
					missing++
					mu.Unlock()
				}
			}
		}(boardName(i))
	}
	var drivers sync.WaitGroup
	stopAt := time.Now().Add(StatusWindow)
	errs := make(chan error, StatusBoards)
	for i := 0; i < StatusBoards; i++ {
		drivers.Add(1)
		go func(name string) {
			defer drivers.Done()
			for time.Now().Before(stopAt) {
				job := uuid.NewString()
				chs := cs.ph.expect(job, jobs.PhaseReady, jobs.PhaseDone)
				if err := cs.c.StartJob(ctx, connector.StartJobRequest{JobID: job, Board: name}); err != nil {
					errs <- err
					return
				}
				<-chs[0]
				time.Sleep(StatusPause)
				if err := cs.c.StopJob(ctx, connector.StopJobRequest{JobID: job}); err != nil {
					errs <- err
					return
				}
				<-chs[1]
				time.Sleep(StatusPause)
			}
		}(boardName(i))
	}
	drivers.Wait()
	time.Sleep(200 * time.Millisecond) // the last pushes
	stopWatch()
	readers.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	p50, p99 := lat.pct(50), lat.pct(99)
	logf("status change -> WatchStatus reader: %d changes, p50 %s p99 %s max %s (%d unmatched)", lat.n(), ms(p50), ms(p99), ms(lat.pct(100)), missing)
	e.add(Row{Figure: fmt.Sprintf("status change -> WatchStatus reader (%d boards cycling)", StatusBoards), Value: "p50 " + ms(p50) + ", p99 " + ms(p99),
		Num: float64(p99) / 1e6, Unit: "ms", Target: "p99 < 10 ms", Ratio: ratio(float64(p99), float64(10*time.Millisecond)), Met: met(p99 < 10*time.Millisecond),
		Note: fmt.Sprintf("%d changes; measured from the outbox numbering the BoardStatus event to the client's Recv; max %s", lat.n(), ms(lat.pct(100)))})
	return nil
}
