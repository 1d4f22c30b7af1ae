package lease

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/boardvisor/boardvisor/jobs"
)

// Images performs a lease's image effects: the supervisor's image store and the
// board's devices behind it. Fetch and Provision run on a goroutine of the lease
// actor, which cancels their context when the lease stops the work (a StopJob during a
// fetch) or the actor stops; they must return promptly then.
type Images interface {
	// Fetch fetches and verifies the job's image, keeps it for the job and checks that
	// the board can run it; progress is told the bytes held of the total. Errors are
	// *jobs.JobError with an image kind.
	Fetch(ctx context.Context, job, board string, im jobs.Image, progress func(done, total int64)) error
	// Provision puts the fetched image on the board.
	Provision(ctx context.Context, job, board string, im jobs.Image) error
	// Release undoes the provisioning and forgets that the job keeps its image.
	// Idempotent.
	Release(job, board string)
}

// ProgressEvery is how often at most a fetch's progress becomes a SYSTEM line.
var ProgressEvery = time.Second

// stopWait bounds how long the actor waits for stopped image work to return (a
// stopped download removes its partial file before it returns).
const stopWait = 3 * time.Second

// imageWork is the fetch or provisioning in flight.
type imageWork struct {
	gen    uint64
	cancel context.CancelFunc
	done   chan struct{}
}

type imageResult struct {
	gen   uint64
	fetch bool
	err   error
}

type imageProgress struct {
	gen         uint64
	done, total int64
}

// image performs one of the image effects.
func (a *leaseActor) image(ctx actor.Context, e jobs.Effect) {
	spec := a.cfg.Spec
	switch e.Kind {
	case jobs.EffFetchImage, jobs.EffProvision:
		if a.cfg.Images == nil || spec.Image == nil {
			in := jobs.ImageFetched
			if e.Kind == jobs.EffProvision {
				in = jobs.Provisioned
			}
			a.step(ctx, in(jobs.NewJobError(jobs.KindImageNotCompatible, "this board cannot boot images")))
			return
		}
		a.stopImage()
		a.imageGen++
		w := &imageWork{gen: a.imageGen, done: make(chan struct{})}
		var wctx context.Context
		wctx, w.cancel = context.WithCancel(context.Background())
		a.work = w
		self, root, im, fetch := ctx.Self(), ctx.ActorSystem().Root, *spec.Image, e.Kind == jobs.EffFetchImage
		go func() {
			defer close(w.done)
			var err error
			if fetch {
				var last time.Time
				err = a.cfg.Images.Fetch(wctx, spec.JobID, spec.Board, im, func(done, total int64) {
					if now := time.Now(); done == total || now.Sub(last) >= ProgressEvery {
						last = now
						root.Send(self, &imageProgress{gen: w.gen, done: done, total: total})
					}
				})
			} else {
				err = a.cfg.Images.Provision(wctx, spec.JobID, spec.Board, im)
			}
			if wctx.Err() == nil {
				root.Send(self, &imageResult{gen: w.gen, fetch: fetch, err: err})
			}
		}()
	case jobs.EffStopImage:
		a.stopImage()
	case jobs.EffReleaseImage:
		a.stopImage()
		if a.cfg.Images != nil {
			a.cfg.Images.Release(spec.JobID, spec.Board)
		}
	}
}

// stopImage stops the image work in flight, if any, and waits (bounded) until it has
// returned, so that what it leaves (a partial blob) is gone before the lease goes on.
func (a *leaseActor) stopImage() {
	w := a.work
	if w == nil {
		return
	}
	a.work = nil
	w.cancel()
	t := time.NewTimer(stopWait)
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		a.log.Warn("stopped image work did not return in time; going on", "wait", stopWait.String())
	}
}

// imageMessage feeds the image work's answers to the lease; answers of stopped work
// are dropped.
func (a *leaseActor) imageMessage(ctx actor.Context, msg any) {
	switch m := msg.(type) {
	case *imageProgress:
		if a.work != nil && m.gen == a.work.gen {
			a.step(ctx, jobs.ImageProgress(m.done, m.total))
		}
	case *imageResult:
		if a.work == nil || m.gen != a.work.gen {
			return
		}
		a.work = nil
		if m.fetch {
			a.step(ctx, jobs.ImageFetched(m.err))
		} else {
			a.step(ctx, jobs.Provisioned(m.err))
		}
	default:
		panic(fmt.Sprintf("imageMessage: %T", msg))
	}
}
