package board

import (
	"errors"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/drivers"
)

// Strategy is how a board supervises its children.
//
//   - A driver that fails is restarted after an exponential back-off (Backoff, doubling
//     up to MaxBackoff). The board hears of every failure (its health goes to unknown until
//     the driver is up again). More than MaxFailures failures within Window and the driver
//     is stopped and the board quarantined (health bad): a flapping board takes no leases.
//     A device that is absent (drivers.ErrDeviceAbsent: unplugged) is no such failure: it
//     is retried at back-off until it returns.
//   - A lease actor that panics is restarted at once; it resumes from the store in the
//     same phase. More than MaxFailures within Window and it is stopped: the board then
//     reports the lease as failed.
type Strategy struct {
	Backoff, MaxBackoff time.Duration
	MaxFailures         int
	Window              time.Duration
}

// DefaultStrategy is the strategy boards use unless told otherwise.
var DefaultStrategy = Strategy{Backoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second, MaxFailures: 5, Window: time.Minute}

// driverFault tells the board that a driver child failed; quarantined means it was
// stopped for good, else the board restarts it after backoff (the board owns that
// timer, so none outlives it).
type driverFault struct {
	child       *actor.PID
	reason      any
	quarantined bool
	backoff     time.Duration
}

// HandleFailure implements actor.SupervisorStrategy.
func (s Strategy) HandleFailure(sys *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason, _ any) {
	if rs.NumberOfFailures(s.Window) == 0 {
		rs.Reset()
	}
	rs.Fail()
	n := rs.NumberOfFailures(s.Window)
	stop := n > s.MaxFailures
	if !strings.Contains(child.Id, "/driver/") {
		if stop {
			sup.StopChildren(child)
		} else {
			sup.RestartChildren(child)
		}
		return
	}
	// A device that is unplugged (or not plugged in yet) is expected to come back: it is
	// retried at back-off for as long as it takes, with the board's health unknown.
	if err, ok := reason.(error); ok && errors.Is(err, drivers.ErrDeviceAbsent) {
		stop = false
	}
	backoff := s.Backoff << (n - 1)
	if backoff > s.MaxBackoff || backoff <= 0 {
		backoff = s.MaxBackoff
	}
	if stop {
		sup.StopChildren(child)
	}
	self, ok := sup.(interface{ Self() *actor.PID })
	if !ok {
		if !stop {
			sup.RestartChildren(child)
		}
		return
	}
	// The child's mailbox stays suspended until the board restarts it.
	sys.Root.Send(self.Self(), &driverFault{child: child, reason: reason, quarantined: stop, backoff: backoff})
}
