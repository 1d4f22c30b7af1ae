package coordinator

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsHandler serves the coordinator's Prometheus series, read from its database at
// each scrape: per board its status, health and maintenance flag; leases by state;
// per supervisor whether it is connected, the last event sequence number stored and the
// time since its last contact; plus the Go runtime and process series. The series are
// on a registry of their own (never the default one).
func (c *Coordinator) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&metricsCollector{c: c}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError})
}

// metricsScrapeTimeout bounds the database reads of one scrape.
const metricsScrapeTimeout = 5 * time.Second

var (
	descCoordBoardStatus = prometheus.NewDesc("boardvisor_coordinator_board_status",
		"The board's status as the coordinator knows it: 1 for the current status (upstream ExporterStatus, lower case).",
		[]string{"board", "supervisor", "status"}, nil)
	descCoordBoardHealth = prometheus.NewDesc("boardvisor_coordinator_board_health",
		"The board's health as the coordinator knows it: 1 for the current health.", []string{"board", "supervisor", "health"}, nil)
	descCoordBoardMaint = prometheus.NewDesc("boardvisor_coordinator_board_maintenance",
		"1 if an operator put the board into maintenance.", []string{"board", "supervisor"}, nil)
	descCoordLeases = prometheus.NewDesc("boardvisor_coordinator_leases",
		"Leases by state: queued, assigned (StartJob sent), active (READY reported), ended.", []string{"state"}, nil)
	descCoordSupConnected = prometheus.NewDesc("boardvisor_coordinator_supervisor_connected",
		"1 if the supervisor's link is up.", []string{"supervisor"}, nil)
	descCoordSupLastSeq = prometheus.NewDesc("boardvisor_coordinator_supervisor_last_seq",
		"Sequence number of the last event stored from the supervisor.", []string{"supervisor"}, nil)
	descCoordSupContact = prometheus.NewDesc("boardvisor_coordinator_supervisor_last_contact_seconds",
		"Seconds since the supervisor was last heard from (connected or disconnected).", []string{"supervisor"}, nil)
	descCoordActive = prometheus.NewDesc("boardvisor_coordinator_active",
		"1 if this coordinator is the active one, 0 if it stands by (several coordinators on one PostgreSQL).", nil, nil)
	descCoordTerm = prometheus.NewDesc("boardvisor_coordinator_leader_term",
		"The fencing term this coordinator leads under (0: standing by, or SQLite).", nil, nil)
	descCoordScrapeErrors = prometheus.NewDesc("boardvisor_coordinator_metrics_errors",
		"1 if reading the database for this scrape failed (the other series may be missing).", nil, nil)
)

type metricsCollector struct{ c *Coordinator }

func (m *metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCoordBoardStatus, descCoordBoardHealth, descCoordBoardMaint, descCoordLeases,
		descCoordSupConnected, descCoordSupLastSeq, descCoordSupContact, descCoordScrapeErrors, descCoordActive, descCoordTerm} {
		ch <- d
	}
}

func (m *metricsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), metricsScrapeTimeout)
	defer cancel()
	role := m.c.Role()
	active := 0.0
	if role.Active {
		active = 1
	}
	ch <- prometheus.MustNewConstMetric(descCoordActive, prometheus.GaugeValue, active)
	ch <- prometheus.MustNewConstMetric(descCoordTerm, prometheus.GaugeValue, float64(role.Term))
	failed := 0.0
	if err := m.boards(ctx, ch); err != nil {
		m.c.log.Warn("metrics: read boards", "error", err)
		failed = 1
	}
	if err := m.leases(ctx, ch); err != nil {
		m.c.log.Warn("metrics: read leases", "error", err)
		failed = 1
	}
	if err := m.supervisors(ctx, ch); err != nil {
		m.c.log.Warn("metrics: read supervisors", "error", err)
		failed = 1
	}
	ch <- prometheus.MustNewConstMetric(descCoordScrapeErrors, prometheus.GaugeValue, failed)
}

func (m *metricsCollector) boards(ctx context.Context, ch chan<- prometheus.Metric) error {
	rows, err := m.c.db.QueryContext(ctx, `SELECT name, supervisor_id, status, health, maintenance FROM boards`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var name, sup string
		var status, health int
		var maint bool
		if err := rows.Scan(&name, &sup, &status, &health, &maint); err != nil {
			return err
		}
		ch <- prometheus.MustNewConstMetric(descCoordBoardStatus, prometheus.GaugeValue, 1, name, sup,
			strings.ToLower(jobs.ExporterStatus(status).String()))
		ch <- prometheus.MustNewConstMetric(descCoordBoardHealth, prometheus.GaugeValue, 1, name, sup,
			strings.ToLower(jobs.Health(health).String()))
		v := 0.0
		if maint {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descCoordBoardMaint, prometheus.GaugeValue, v, name, sup)
	}
	return rows.Err()
}

func (m *metricsCollector) leases(ctx context.Context, ch chan<- prometheus.Metric) error {
	counts := map[string]float64{stateQueued: 0, stateAssigned: 0, stateActive: 0, stateEnded: 0}
	rows, err := m.c.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM leases GROUP BY state`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			return err
		}
		counts[state] = float64(n)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(descCoordLeases, prometheus.GaugeValue, n, state)
	}
	return nil
}

func (m *metricsCollector) supervisors(ctx context.Context, ch chan<- prometheus.Metric) error {
	rows, err := m.c.db.QueryContext(ctx, `SELECT id, connected, last_seq, last_contact FROM supervisors`)
	if err != nil {
		return err
	}
	defer rows.Close()
	now := m.c.now()
	for rows.Next() {
		var id string
		var connected bool
		var lastSeq, lastContact int64
		if err := rows.Scan(&id, &connected, &lastSeq, &lastContact); err != nil {
			return err
		}
		v := 0.0
		if connected {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descCoordSupConnected, prometheus.GaugeValue, v, id)
		ch <- prometheus.MustNewConstMetric(descCoordSupLastSeq, prometheus.CounterValue, float64(lastSeq), id)
		since := 0.0
		if lastContact > 0 {
			since = max(now.Sub(time.Unix(0, lastContact)).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(descCoordSupContact, prometheus.GaugeValue, since, id)
	}
	return rows.Err()
}
