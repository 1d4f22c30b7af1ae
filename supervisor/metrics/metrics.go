// Package metrics is the supervisor's Prometheus endpoint for operators: per-board
// status, health, lease phase durations, hook durations and outcomes, console bytes and
// driver restarts, and the coordinator link's reconnects, outbox depth and the age of
// its oldest un-acknowledged event.
//
// It is fed the supervisor's events through an outbox sink (Metrics.Sink, which never
// blocks) and never reaches into actor state; the link's figures are read at scrape
// time from the outbox queue (Options.Outbox) and the link client (Options.Link).
// Everything is registered on a registry of its own, served by Handler: never on
// prometheus.DefaultRegisterer or http.DefaultServeMux.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every series of this package.
const Namespace = "boardvisor"

// Outbox is the durable event queue of the coordinator link (connector/grpc.Queue
// satisfies it): how many bytes it holds, the last sequence number written and the last
// one the coordinator acknowledged.
//
// If the value also has OldestUnacked() (time.Time, bool), or connector/grpc.Queue's
// After(seq, n) method, the age of the oldest un-acknowledged event is reported too.
type Outbox interface {
	Stats() (stored int64, last, acked uint64)
}

// OldestUnacked reports when the oldest event not yet acknowledged by the coordinator
// happened; false when every event is acknowledged.
type OldestUnacked interface {
	OldestUnacked() (time.Time, bool)
}

// eventsAfter is connector/grpc.Queue's read method, used to find the oldest
// un-acknowledged event when the queue has no OldestUnacked.
type eventsAfter interface {
	After(seq uint64, n int) ([]*pb.Event, <-chan struct{}, error)
}

// StateDir is the state directory's space monitor (internal/diskspace.Monitor).
type StateDir interface {
	Full() bool
	Low() bool
}

// Link is the coordinator link client: how many times it has connected (welcomed by the
// coordinator) since the process started.
type Link interface {
	Connects() uint64
}

// Options configure New.
type Options struct {
	// Boards are created at once, so that every board has its series before its first
	// event (optional: a board's series appear with its first event otherwise).
	Boards []string
	// Outbox, if set, is read at scrape time for the outbox figures.
	Outbox Outbox
	// Link, if set, is read at scrape time for the reconnect count. Without it the count
	// comes from LinkConnected calls (or the LogSink).
	Link Link
	// StateDir, if set, is read at scrape time: whether the state directory is full (a
	// write failed for lack of space) or low (the console recordings stop).
	StateDir StateDir
	// PhaseBuckets are the buckets (seconds) of the phase and hook duration histograms
	// (default DefaultBuckets).
	PhaseBuckets []float64
	// NoProcessMetrics leaves out the Go runtime and process collectors (go_goroutines,
	// process_resident_memory_bytes, ...).
	NoProcessMetrics bool
}

// DefaultBuckets span a passed-through phase (microseconds) to a long lease (hours).
var DefaultBuckets = []float64{0.001, 0.01, 0.1, 1, 10, 60, 600, 3600, 14400}

// Metrics holds the series. Create it with New.
type Metrics struct {
	reg *prometheus.Registry

	status      *prometheus.GaugeVec
	health      *prometheus.GaugeVec
	phaseDur    *prometheus.HistogramVec
	hookDur     *prometheus.HistogramVec
	hookRuns    *prometheus.CounterVec
	hookLines   *prometheus.CounterVec
	leases      *prometheus.CounterVec
	leaseErrors *prometheus.CounterVec
	console     *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	restarts    *prometheus.CounterVec
	events      *prometheus.CounterVec
	lastSeq     prometheus.Gauge

	mu         sync.Mutex
	boards     map[string]*board
	leasesLive map[string]*lease
	kinds      map[string]prometheus.Counter
	connects   uint64 // LinkConnected calls
}

// board caches a board's series so that the sink does no label lookups for the common
// events (console output above all).
type board struct {
	name     string
	status   [8]prometheus.Gauge // by jobs.ExporterStatus
	health   [5]prometheus.Gauge // by jobs.Health
	cur      jobs.ExporterStatus
	curH     jobs.Health
	known    bool
	console  prometheus.Counter
	dropped  prometheus.Counter
	restarts prometheus.Counter
	phase    map[jobs.Phase]prometheus.Observer
	lines    map[jobs.LogSource]prometheus.Counter
}

// lease is what the sink remembers of a live lease.
type lease struct {
	phase     jobs.Phase
	since     time.Time
	hook      jobs.HookKind // the hook running, HookNone if none
	hookStart time.Time
	warned    bool // the running hook failed under onFailure: warn
}

// Hook run outcomes (label "outcome" of boardvisor_hook_runs_total).
const (
	OutcomeOK      = "ok"      // exited 0
	OutcomeWarned  = "warned"  // failed under onFailure: warn; the lease went on
	OutcomeFailed  = "failed"  // failed under onFailure: endLease or exit
	OutcomeAborted = "aborted" // the lease failed (internal fault) while the hook ran
)

var statusNames = func() [8]string {
	var n [8]string
	for i := range n {
		n[i] = strings.ToLower(jobs.ExporterStatus(i).String())
	}
	return n
}()

var healthNames = func() [5]string {
	var n [5]string
	for i := range n {
		n[i] = strings.ToLower(jobs.Health(i).String())
	}
	return n
}()

// New returns metrics registered on a registry of their own.
func New(opts Options) *Metrics {
	buckets := opts.PhaseBuckets
	if len(buckets) == 0 {
		buckets = DefaultBuckets
	}
	m := &Metrics{
		reg:        prometheus.NewRegistry(),
		boards:     map[string]*board{},
		leasesLive: map[string]*lease{},
		kinds:      map[string]prometheus.Counter{},
		status: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "board_status",
			Help: "The board's status (upstream ExporterStatus): 1 for the current status, 0 for the others."}, []string{"board", "status"}),
		health: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace, Name: "board_health",
			Help: "The board's health: 1 for the current health, 0 for the others."}, []string{"board", "health"}),
		phaseDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "lease_phase_duration_seconds",
			Help: "Time leases spent in each phase, observed when they leave it.", Buckets: buckets}, []string{"board", "phase"}),
		hookDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace, Name: "hook_duration_seconds",
			Help: "Duration of hook runs, from the phase that starts the hook to the one after it.", Buckets: buckets}, []string{"board", "hook"}),
		hookRuns: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "hook_runs_total",
			Help: "Hook runs by outcome: ok, warned (failed under onFailure warn), failed (onFailure endLease or exit), aborted (the lease failed while the hook ran)."},
			[]string{"board", "hook", "outcome"}),
		hookLines: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "log_lines_total",
			Help: "Lease log lines: hook output (source beforeLease/afterLease) and the supervisor's own lines (system)."}, []string{"board", "source"}),
		leases: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "leases_total",
			Help: "Leases that ended, by outcome (done or failed)."}, []string{"board", "outcome"}),
		leaseErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "job_errors_total",
			Help: "Job errors reported to the coordinator, by Treadmill JobErrorKind."}, []string{"board", "kind"}),
		console: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "console_bytes_total",
			Help: "Console bytes read from the board's drivers."}, []string{"board"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "console_dropped_bytes_total",
			Help: "Console bytes given up by the outbox (ConsoleGap events)."}, []string{"board"}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "driver_restarts_total",
			Help: "Driver failures that made the board restart a driver (health good -> unknown)."}, []string{"board"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "events_total",
			Help: "Events numbered by the outbox, by kind."}, []string{"kind"}),
		lastSeq: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: "event_last_seq",
			Help: "Sequence number of the last event numbered by the outbox."}),
	}
	m.reg.MustRegister(m.status, m.health, m.phaseDur, m.hookDur, m.hookRuns, m.hookLines, m.leases, m.leaseErrors,
		m.console, m.dropped, m.restarts, m.events, m.lastSeq, &linkCollector{m: m, outbox: opts.Outbox, link: opts.Link, dir: opts.StateDir})
	if !opts.NoProcessMetrics {
		m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m.mu.Lock()
	for _, b := range opts.Boards {
		m.board(b)
	}
	m.mu.Unlock()
	return m
}

// Registry returns the registry the series are on (to add more, or to gather in tests).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the series in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg, ErrorHandling: promhttp.ContinueOnError})
}

// Serve serves Handler at /metrics on lis (with a mux of its own) until ctx is done.
func (m *Metrics) Serve(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	err := srv.Serve(lis)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// LinkConnected counts one successful connection of the coordinator link, for a link
// client that has no Connects method (see Options.Link).
func (m *Metrics) LinkConnected() {
	m.mu.Lock()
	m.connects++
	m.mu.Unlock()
}

// LinkConnectedMessage is what connector/grpc.Client logs each time the coordinator
// welcomes it; LogSink counts it.
const LinkConnectedMessage = "connected to coordinator"

// LogSink returns an hclog sink that calls LinkConnected for every
// LinkConnectedMessage logged: register it on an hclog.InterceptLogger given to the
// link client when the client itself does not count its connections.
func (m *Metrics) LogSink() hclog.SinkAdapter { return logSink{m} }

type logSink struct{ m *Metrics }

func (s logSink) Accept(_ string, _ hclog.Level, msg string, _ ...interface{}) {
	if msg == LinkConnectedMessage {
		s.m.LinkConnected()
	}
}

// board returns a board's series, creating them. m.mu is held.
func (m *Metrics) board(name string) *board {
	if b := m.boards[name]; b != nil {
		return b
	}
	b := &board{name: name, phase: map[jobs.Phase]prometheus.Observer{}, lines: map[jobs.LogSource]prometheus.Counter{},
		console: m.console.WithLabelValues(name), dropped: m.dropped.WithLabelValues(name),
		restarts: m.restarts.WithLabelValues(name)}
	for i := range b.status {
		b.status[i] = m.status.WithLabelValues(name, statusNames[i])
	}
	for i := range b.health {
		b.health[i] = m.health.WithLabelValues(name, healthNames[i])
	}
	m.boards[name] = b
	return b
}

func (b *board) observePhase(m *Metrics, p jobs.Phase, d time.Duration) {
	o := b.phase[p]
	if o == nil {
		o = m.phaseDur.WithLabelValues(b.name, p.String())
		b.phase[p] = o
	}
	o.Observe(max(d, 0).Seconds())
}

// Sink is the outbox sink that feeds the metrics. It never blocks (it takes one
// uncontended lock and updates counters).
func (m *Metrics) Sink(ev connector.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	kind := ev.Kind()
	c := m.kinds[kind]
	if c == nil {
		c = m.events.WithLabelValues(kind)
		m.kinds[kind] = c
	}
	c.Inc()
	m.lastSeq.Set(float64(ev.Seq))
	if ev.Board == "" {
		return
	}
	b := m.board(ev.Board)
	switch {
	case ev.Console != nil:
		b.console.Add(float64(len(ev.Console.Data)))
	case ev.Gap != nil:
		b.dropped.Add(float64(ev.Gap.Bytes))
	case ev.BoardStatus != nil:
		m.boardStatus(b, ev.BoardStatus)
	case ev.Transition != nil:
		m.transition(b, ev)
	case ev.Hook != nil:
		m.hookLine(b, ev)
	case ev.Error != nil:
		m.leaseErrors.WithLabelValues(b.name, ev.Error.Kind.String()).Inc()
	}
}

func (m *Metrics) boardStatus(b *board, st *connector.BoardStatus) {
	if b.known && b.curH == jobs.HealthGood && st.Health == jobs.HealthUnknown {
		b.restarts.Inc()
	}
	if int(st.Status) >= 0 && int(st.Status) < len(b.status) && (!b.known || st.Status != b.cur) {
		for i, g := range b.status {
			g.Set(boolf(i == int(st.Status)))
		}
	}
	if int(st.Health) >= 0 && int(st.Health) < len(b.health) && (!b.known || st.Health != b.curH) {
		for i, g := range b.health {
			g.Set(boolf(i == int(st.Health)))
		}
	}
	b.cur, b.curH, b.known = st.Status, st.Health, true
}

func boolf(v bool) float64 {
	if v {
		return 1
	}
	return 0
}

func (m *Metrics) transition(b *board, ev connector.Event) {
	t := ev.Transition
	at := ev.Time
	l := m.leasesLive[ev.JobID]
	if l != nil && l.phase == t.From {
		b.observePhase(m, t.From, at.Sub(l.since))
	}
	if l == nil {
		// A new lease, or one resumed after a restart: its earlier phases were not seen.
		l = &lease{}
		m.leasesLive[ev.JobID] = l
	}
	if l.hook != jobs.HookNone && t.From == hookPhase(l.hook) {
		outcome := OutcomeOK
		switch {
		case t.To == jobs.PhaseFailed:
			outcome = OutcomeAborted
		case t.Status == jobs.StatusBeforeLeaseHookFailed && l.hook == jobs.HookBefore,
			t.Status == jobs.StatusAfterLeaseHookFailed && l.hook == jobs.HookAfter:
			outcome = OutcomeFailed
		case l.warned:
			outcome = OutcomeWarned
		}
		m.hookDur.WithLabelValues(b.name, l.hook.String()).Observe(max(at.Sub(l.hookStart), 0).Seconds())
		m.hookRuns.WithLabelValues(b.name, l.hook.String(), outcome).Inc()
		l.hook, l.warned = jobs.HookNone, false
	}
	// A hook runs in BEFORE_LEASE / AFTER_LEASE when the status entering it says so
	// (a phase without a hook is passed through with another status).
	switch {
	case t.To == jobs.PhaseBeforeLease && t.Status == jobs.StatusBeforeLeaseHook:
		l.hook, l.hookStart, l.warned = jobs.HookBefore, at, false
	case t.To == jobs.PhaseAfterLease && t.Status == jobs.StatusAfterLeaseHook:
		l.hook, l.hookStart, l.warned = jobs.HookAfter, at, false
	}
	l.phase, l.since = t.To, at
	if t.To.Terminal() {
		outcome := "done"
		if t.To == jobs.PhaseFailed {
			outcome = "failed"
		}
		m.leases.WithLabelValues(b.name, outcome).Inc()
		delete(m.leasesLive, ev.JobID)
	}
}

func hookPhase(k jobs.HookKind) jobs.Phase {
	if k == jobs.HookAfter {
		return jobs.PhaseAfterLease
	}
	return jobs.PhaseBeforeLease
}

func (m *Metrics) hookLine(b *board, ev connector.Event) {
	h := ev.Hook
	c := b.lines[h.Source]
	if c == nil {
		c = m.hookLines.WithLabelValues(b.name, sourceName(h.Source))
		b.lines[h.Source] = c
	}
	c.Inc()
	// The lease says so when a hook failed under onFailure: warn (jobs.Lease.hookDone).
	if l := m.leasesLive[ev.JobID]; l != nil && l.hook != jobs.HookNone && h.Source == jobs.SourceSystem &&
		h.Severity == jobs.SeverityWarn && strings.HasPrefix(h.Text, l.hook.String()+" hook failed") {
		l.warned = true
	}
}

func sourceName(s jobs.LogSource) string {
	switch s {
	case jobs.SourceBeforeLeaseHook:
		return "beforeLease"
	case jobs.SourceAfterLeaseHook:
		return "afterLease"
	}
	return strings.ToLower(s.String())
}

// linkCollector reads the link's figures at scrape time.
type linkCollector struct {
	m      *Metrics
	outbox Outbox
	link   Link
	dir    StateDir
}

// shedBytes is connector/grpc.Queue's count of console bytes it replaced by gaps.
type shedBytes interface {
	ShedBytes() uint64
}

var (
	descReconnects = prometheus.NewDesc(Namespace+"_coordinator_reconnects_total",
		"Times the coordinator link connected again after its first connection.", nil, nil)
	descConnects = prometheus.NewDesc(Namespace+"_coordinator_connects_total",
		"Times the coordinator link connected (welcomed by the coordinator).", nil, nil)
	descOutboxEvents = prometheus.NewDesc(Namespace+"_outbox_unacked_events",
		"Events written to the outbox and not yet acknowledged by the coordinator.", nil, nil)
	descOutboxBytes = prometheus.NewDesc(Namespace+"_outbox_bytes",
		"Bytes of events the outbox keeps on disk.", nil, nil)
	descOutboxLast = prometheus.NewDesc(Namespace+"_outbox_last_seq",
		"Highest sequence number written to the outbox.", nil, nil)
	descOutboxAcked = prometheus.NewDesc(Namespace+"_outbox_acked_seq",
		"Highest sequence number the coordinator acknowledged.", nil, nil)
	descOutboxAge = prometheus.NewDesc(Namespace+"_outbox_oldest_unacked_age_seconds",
		"Age of the oldest event not yet acknowledged by the coordinator (0 when all are).", nil, nil)
	descOutboxShed = prometheus.NewDesc(Namespace+"_outbox_shed_console_bytes_total",
		"Console bytes the outbox replaced by ConsoleGap events (its bound, or a full state directory).", nil, nil)
	descStateDirFull = prometheus.NewDesc(Namespace+"_state_dir_full",
		"1 while the state directory is full (a write failed for lack of space and space has not come back): console output is shed, transitions, errors and hook lines wait.", nil, nil)
	descStateDirLow = prometheus.NewDesc(Namespace+"_state_dir_low",
		"1 while the state directory is low on space or full: the console recordings stop.", nil, nil)
)

func (c *linkCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descReconnects
	ch <- descConnects
	if c.dir != nil {
		ch <- descStateDirFull
		ch <- descStateDirLow
	}
	if _, ok := c.outbox.(shedBytes); ok {
		ch <- descOutboxShed
	}
	if c.outbox != nil {
		ch <- descOutboxEvents
		ch <- descOutboxBytes
		ch <- descOutboxLast
		ch <- descOutboxAcked
		if c.ageSource() != nil {
			ch <- descOutboxAge
		}
	}
}

func (c *linkCollector) ageSource() func(acked uint64) (time.Time, bool) {
	switch o := c.outbox.(type) {
	case OldestUnacked:
		return func(uint64) (time.Time, bool) { return o.OldestUnacked() }
	case eventsAfter:
		return func(acked uint64) (time.Time, bool) {
			evs, _, err := o.After(acked, 1)
			if err != nil || len(evs) == 0 || evs[0].GetTime() == nil {
				return time.Time{}, false
			}
			return evs[0].GetTime().AsTime(), true
		}
	}
	return nil
}

func (c *linkCollector) Collect(ch chan<- prometheus.Metric) {
	var connects uint64
	if c.link != nil {
		connects = c.link.Connects()
	} else {
		c.m.mu.Lock()
		connects = c.m.connects
		c.m.mu.Unlock()
	}
	ch <- prometheus.MustNewConstMetric(descConnects, prometheus.CounterValue, float64(connects))
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(max(connects, 1)-1))
	if c.dir != nil {
		ch <- prometheus.MustNewConstMetric(descStateDirFull, prometheus.GaugeValue, boolf(c.dir.Full()))
		ch <- prometheus.MustNewConstMetric(descStateDirLow, prometheus.GaugeValue, boolf(c.dir.Low()))
	}
	if c.outbox == nil {
		return
	}
	if s, ok := c.outbox.(shedBytes); ok {
		ch <- prometheus.MustNewConstMetric(descOutboxShed, prometheus.CounterValue, float64(s.ShedBytes()))
	}
	stored, last, acked := c.outbox.Stats()
	ch <- prometheus.MustNewConstMetric(descOutboxEvents, prometheus.GaugeValue, float64(last-min(acked, last)))
	ch <- prometheus.MustNewConstMetric(descOutboxBytes, prometheus.GaugeValue, float64(stored))
	ch <- prometheus.MustNewConstMetric(descOutboxLast, prometheus.CounterValue, float64(last))
	ch <- prometheus.MustNewConstMetric(descOutboxAcked, prometheus.CounterValue, float64(acked))
	if age := c.ageSource(); age != nil {
		v := 0.0
		if acked < last {
			if t, ok := age(acked); ok {
				v = max(time.Since(t).Seconds(), 0)
			}
		}
		ch <- prometheus.MustNewConstMetric(descOutboxAge, prometheus.GaugeValue, v)
	}
}
