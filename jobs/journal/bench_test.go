package journal

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/boardvisor/boardvisor/jobs"
)

// benchSaveLease runs b.N SaveLease calls with real fsync from parallelism×GOMAXPROCS
// goroutines (boards), each writing its own lease, and reports writes/s and writes/commit.
func benchSaveLease(b *testing.B, parallelism int) {
	j := openT(b, dbPath(b), Options{})
	deadlines := map[jobs.Timer]time.Time{jobs.TimerLease: time.Now().Add(time.Hour)}
	var next atomic.Int64
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := jobID(int(next.Add(1)))
		spec := jobs.Spec{JobID: id, Board: "board-" + id[len(id)-4:], Duration: time.Hour,
			Before: &jobs.HookPolicy{Timeout: time.Minute}, After: &jobs.HookPolicy{Timeout: time.Minute}}
		i := 0
		for pb.Next() {
			i++
			st := jobs.State{Phase: jobs.PhaseReady, Acquired: true, Failure: strconv.Itoa(i)}
			if err := j.SaveLease(spec, st, deadlines); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := j.Stats()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
	if st.Commits > 0 {
		b.ReportMetric(float64(st.Writes)/float64(st.Commits), "writes/commit")
	}
}

// BenchmarkSaveLeaseParallel: many boards (64 per CPU) saving leases at once; one fsync
// round per group of writes.
func BenchmarkSaveLeaseParallel(b *testing.B) { benchSaveLease(b, 64) }

// BenchmarkSaveLeaseSerial: one board at a time, one fsync round per write (the baseline).
func BenchmarkSaveLeaseSerial(b *testing.B) {
	j := openT(b, dbPath(b), Options{})
	spec := jobs.Spec{JobID: jobID(1), Board: "board", Duration: time.Hour}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := j.SaveLease(spec, jobs.State{Phase: jobs.PhaseReady, Failure: strconv.Itoa(i)}, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "writes/s")
}
