package main

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/boardvisor/boardvisor/coordinator"
	"github.com/dustin/go-humanize"
	"github.com/spf13/pflag"
)

// leaseLogFlags are the coordinator's flags for lease logs: retention and stream caps.
type leaseLogFlags struct {
	retention, pruneInterval time.Duration
	size                     string
	streams, perUser         int
}

func (l *leaseLogFlags) addTo(f *pflag.FlagSet) {
	f.DurationVar(&l.retention, "log-retention", 30*24*time.Hour, "keep an ended lease's log (phases, hook lines, console) this long; 0: for ever")
	f.StringVar(&l.size, "log-retention-size", "8GiB", "keep at most this much of ended leases' logs, removing the oldest first (e.g. 500MB, 8GiB); 0: no bound")
	f.DurationVar(&l.pruneInterval, "log-prune-interval", time.Minute, "how often the retention of lease logs runs")
	f.IntVar(&l.streams, "max-log-streams", 256, "lease log streams (LeaseLog) served at once")
	f.IntVar(&l.perUser, "max-log-streams-per-user", 16, "lease log streams one user may have open (with --client-tokens)")
}

func (l *leaseLogFlags) options() (coordinator.LeaseLogOptions, error) {
	o := coordinator.LeaseLogOptions{Retention: l.retention, PruneInterval: l.pruneInterval, MaxStreams: l.streams, MaxStreamsPerUser: l.perUser}
	switch {
	case l.retention < 0:
		return o, usageError{fmt.Errorf("--log-retention %s: give a positive duration, or 0 to keep logs for ever", l.retention)}
	case l.retention == 0:
		o.Retention = -1
	}
	if l.pruneInterval <= 0 {
		return o, usageError{fmt.Errorf("--log-prune-interval %s: give a positive duration", l.pruneInterval)}
	}
	if l.streams <= 0 || l.perUser <= 0 {
		return o, usageError{errors.New("--max-log-streams and --max-log-streams-per-user must be positive")}
	}
	n, err := humanize.ParseBytes(l.size)
	if err != nil || n > math.MaxInt64 {
		return o, usageError{fmt.Errorf("--log-retention-size %q: give a size such as 500MB or 8GiB (0: no bound)", l.size)}
	}
	o.MaxBytes = int64(n)
	if n == 0 {
		o.MaxBytes = -1
	}
	return o, nil
}
