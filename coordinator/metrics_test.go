package coordinator

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func TestMetricsFollowBoardsLeasesAndSupervisors(t *testing.T) {
	e := newEnv(t, "", Options{})
	srv := httptest.NewServer(e.c.MetricsHandler())
	defer srv.Close()
	s := scrapeMetrics(t, srv.URL)
	if s["boardvisor_coordinator_metrics_errors"] != 0 || s[`boardvisor_coordinator_leases{state="active"}`] != 0 {
		t.Fatalf("empty coordinator: %v", s)
	}
	sup := e.dial("sup-1", []*pb.BoardInfo{board("rpi-1", "device", "rpi4")}, supOpts{})
	l := e.mustCreate("", "rpi-1", time.Hour)
	start := sup.expectStart()
	sup.toReady(start.GetJobId(), "rpi-1")
	eventually(t, "the lease to be active in the metrics", func() bool {
		s = scrapeMetrics(t, srv.URL)
		return s[`boardvisor_coordinator_leases{state="active"}`] == 1
	})
	if s[`boardvisor_coordinator_supervisor_connected{supervisor="sup-1"}`] != 1 || s[`boardvisor_coordinator_supervisor_last_seq{supervisor="sup-1"}`] < 3 {
		t.Fatalf("supervisor series: %v", s)
	}
	if _, ok := s[`boardvisor_coordinator_board_health{board="rpi-1",health="good",supervisor="sup-1"}`]; !ok {
		t.Fatalf("no health series for the board: %v", s)
	}
	sup.toDone(l.GetId(), "rpi-1")
	eventually(t, "the lease to be ended in the metrics", func() bool {
		s = scrapeMetrics(t, srv.URL)
		return s[`boardvisor_coordinator_leases{state="ended"}`] == 1 && s[`boardvisor_coordinator_leases{state="active"}`] == 0
	})
	sup.close()
	eventually(t, "the supervisor to show disconnected", func() bool {
		return scrapeMetrics(t, srv.URL)[`boardvisor_coordinator_supervisor_connected{supervisor="sup-1"}`] == 0
	})
}
