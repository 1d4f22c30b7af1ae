package hook

import (
	"errors"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watcher is one inotify instance shared by all the runs of a Runner, so that a host
// with many hooks running at once stays far below the per-user limit on inotify
// instances (fs.inotify.max_user_instances, often 128). Its goroutine lives while at
// least one subscription exists and is ended by the last cancel.
type watcher struct {
	f      *os.File // the inotify descriptor, non-blocking, read through Go's poller
	fd     int
	mu     sync.Mutex
	subs   map[int32][]*subscription // watch descriptor → subscribers
	refs   int                       // guarded by Runner.wmu
	done   chan struct{}             // closed when the goroutine has ended
	broken chan struct{}             // closed if reading inotify events fails
}

// subscription wakes one run when its output file changes.
type subscription struct {
	w    *watcher
	wd   int32
	wake chan struct{} // capacity 1: wake-ups coalesce
}

// newWatcher creates an inotify instance and starts its reading goroutine.
func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	w := &watcher{
		f:      os.NewFile(uintptr(fd), "inotify"),
		fd:     fd,
		subs:   make(map[int32][]*subscription),
		done:   make(chan struct{}),
		broken: make(chan struct{}),
	}
	go w.loop()
	return w, nil
}

func (w *watcher) loop() {
	defer close(w.done)
	buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				close(w.broken)
			}
			return
		}
		w.mu.Lock()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			off += unix.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
				for _, subs := range w.subs {
					for _, s := range subs {
						s.notify()
					}
				}
				continue
			}
			for _, s := range w.subs[ev.Wd] {
				s.notify()
			}
		}
		w.mu.Unlock()
	}
}

func (s *subscription) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// subscribe watches path for writes. The caller must call unsubscribe.
func (r *Runner) subscribe(path string) (*subscription, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	if r.w != nil {
		select {
		case <-r.w.broken:
			r.w = nil // its last subscriber closes it
		default:
		}
	}
	if r.w == nil {
		w, err := newWatcher()
		if err != nil {
			return nil, err
		}
		r.w = w
	}
	w := r.w
	wd, err := unix.InotifyAddWatch(w.fd, path, unix.IN_MODIFY|unix.IN_CLOSE_WRITE)
	if err != nil {
		if w.refs == 0 {
			r.w = nil
			w.close()
		}
		return nil, os.NewSyscallError("inotify_add_watch", err)
	}
	s := &subscription{w: w, wd: int32(wd), wake: make(chan struct{}, 1)}
	w.mu.Lock()
	w.subs[s.wd] = append(w.subs[s.wd], s)
	w.mu.Unlock()
	w.refs++
	return s, nil
}

// unsubscribe ends s. The last one closes the inotify instance and waits for its
// goroutine to end.
func (r *Runner) unsubscribe(s *subscription) {
	r.wmu.Lock()
	w := s.w
	w.mu.Lock()
	subs := w.subs[s.wd]
	for i, o := range subs {
		if o == s {
			subs = append(subs[:i], subs[i+1:]...)
			break
		}
	}
	if len(subs) == 0 {
		delete(w.subs, s.wd)
		unix.InotifyRmWatch(w.fd, uint32(s.wd))
	} else {
		w.subs[s.wd] = subs
	}
	w.mu.Unlock()
	w.refs--
	last := w.refs == 0
	if last && r.w == w {
		r.w = nil
	}
	r.wmu.Unlock()
	if last {
		w.close()
	}
}

// close closes the inotify instance and waits for the goroutine reading it.
func (w *watcher) close() {
	w.f.Close()
	<-w.done
}
