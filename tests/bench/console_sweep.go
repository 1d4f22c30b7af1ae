package main

import (
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers/serial"
	"golang.org/x/sys/unix"
)

// runSweep measures what a coalescing pause costs and keeps, by itself: every streaming
// pty read in this process with a fixed pause after each read that drained it (as the
// serial driver does, but without its cap by the line rate), nothing forwarded. Rows:
// CPU, reads per second, bytes a read, the feeder's pace, bytes lost.
func runSweep(e *env, f *farm, size consoleSize, pause time.Duration, own bool, central bool, drv bool) error {
	var er *epollReader
	if own {
		var err error
		if er, err = newEpollReader(); err != nil {
			return err
		}
		defer unix.Close(er.ep)
	}
	var files []*os.File
	defer func() {
		for _, fl := range files {
			fl.Close()
		}
	}()
	paths := f.paths[:size.streaming]
	for _, p := range paths {
		if own || central || drv {
			break // opened below, off Go's poller
		}
		fl, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		files = append(files, fl)
		if err := makeRawTTY(fl); err != nil {
			return err
		}
	}
	counts := make([]consoleCount, len(paths))
	var reads, total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if drv {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for i, p := range paths {
			d, err := serial.New(serial.Config{Device: p, Coalesce: pause})
			if err != nil {
				return err
			}
			var mu sync.Mutex
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = d.Run(ctx, func(b []byte) {
					mu.Lock()
					reads.Add(1)
					total.Add(int64(len(b)))
					counts[i].n += int64(len(b))
					counts[i].crc = crc32.Update(counts[i].crc, castagnoli, b)
					mu.Unlock()
				})
			}()
		}
		go func() { <-stop; cancel() }()
	}
	if central {
		var fds []int
		for _, p := range paths {
			fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
				t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
				t.Oflag &^= unix.OPOST
				t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
				t.Cflag &^= unix.CSIZE | unix.PARENB
				t.Cflag |= unix.CS8
				_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
			}
			fds = append(fds, fd)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			t := time.NewTimer(pause)
			for {
				for i, fd := range fds {
					for {
						n, err := unix.Read(fd, buf)
						if n > 0 {
							reads.Add(1)
							total.Add(int64(n))
							counts[i].n += int64(n)
							counts[i].crc = crc32.Update(counts[i].crc, castagnoli, buf[:n])
						}
						if err != nil || n < serial.PendingBudget {
							break
						}
					}
				}
				select {
				case <-t.C:
					t.Reset(pause)
				case <-stop:
					return
				}
			}
		}()
	}
	for i, p := range paths {
		if central || drv {
			break
		}
		wg.Add(1)
		if own {
			fd, err := unix.Open(p, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
				t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
				t.Oflag &^= unix.OPOST
				t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
				t.Cflag &^= unix.CSIZE | unix.PARENB
				t.Cflag |= unix.CS8
				_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
			}
			ready, err := er.add(fd)
			if err != nil {
				return err
			}
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				t := time.NewTimer(time.Hour)
				t.Stop()
				for {
					n, err := unix.Read(fd, buf)
					if n > 0 {
						reads.Add(1)
						total.Add(int64(n))
						counts[i].n += int64(n)
						counts[i].crc = crc32.Update(counts[i].crc, castagnoli, buf[:n])
					}
					if err == unix.EAGAIN || n < serial.PendingBudget {
						if err == nil {
							t.Reset(pause)
							select {
							case <-t.C:
							case <-stop:
								return
							}
						}
						_ = er.arm(fd)
						select {
						case <-ready:
						case <-stop:
							return
						}
					}
				}
			}()
			continue
		}
		fl := files[i]
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			t := time.NewTimer(time.Hour)
			t.Stop()
			for {
				_ = fl.SetReadDeadline(time.Now().Add(time.Second))
				n, err := fl.Read(buf)
				if n > 0 {
					reads.Add(1)
					total.Add(int64(n))
					counts[i].n += int64(n)
					counts[i].crc = crc32.Update(counts[i].crc, castagnoli, buf[:n])
				}
				select {
				case <-stop:
					return
				default:
				}
				if err == nil && n < serial.PendingBudget {
					t.Reset(pause)
					select {
					case <-t.C:
					case <-stop:
						t.Stop()
						return
					}
				}
			}
		}()
	}
	self := os.Getpid()
	var r0 int64
	w, on, err := measure(f, size, map[string]int{"reader": self}, func(stop <-chan struct{}) {
		time.Sleep(time.Second)
		r0 = reads.Load()
		<-stop
	})
	r1 := reads.Load()
	if err == nil {
		end := on.Add(time.Duration(size.seconds) * time.Second)
		waitTotal(total.Load, size.perBoard*int64(size.streaming), end.Add(20*time.Second))
		time.Sleep(300 * time.Millisecond)
		err = f.power(false)
	}
	close(stop)
	for _, fl := range files {
		_ = fl.SetReadDeadline(time.Unix(1, 0))
	}
	wg.Wait()
	if err != nil {
		return err
	}
	lost, bad := compare(func(i int) consoleCount { return counts[i] }, size)
	rps := float64(r1-r0) / w.wall.Seconds()
	logf("console sweep %s own=%v central=%v: %.1f%% of a core, %.0f reads/s of %.0f bytes; %s; %d stalled writes; %d bytes lost, %d boards wrong",
		pause, own, central, w.cpu["reader"]*100, rps, float64(w.sent)/w.wall.Seconds()/max(rps, 1), w.paceNote(size), w.stalls, lost, bad)
	how := "Go's poller"
	if own {
		how = "own epoll, armed once a pause"
	}
	if central {
		how = "one goroutine reading every console each pause, no poller"
	}
	if drv {
		how = "the serial driver"
	}
	e.add(Row{Figure: fmt.Sprintf("console sweep: bare pty reads (%s), pause %s after a draining read, %d boards", how, pause, size.streaming),
		Value: fmt.Sprintf("%.1f%% of a core", w.cpu["reader"]*100), Num: w.cpu["reader"] * 100, Unit: "%", Target: "-",
		Note: fmt.Sprintf("%.0f reads/s of %.0f bytes; %s; %d writes the ptys did not take within 50 ms; %d bytes lost, %d boards wrong",
			rps, float64(w.sent)/w.wall.Seconds()/max(rps, 1), w.paceNote(size), w.stalls, lost, bad)})
	return nil
}

// epollReader is the sweep's other reader: its own epoll, each pty armed for one
// EPOLLIN at a time (EPOLLONESHOT) and left unarmed during its pause, so that the
// feeder's writes wake nobody meanwhile.
type epollReader struct {
	ep    int
	mu    sync.Mutex
	ready map[int]chan struct{}
}

func newEpollReader() (*epollReader, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	r := &epollReader{ep: ep, ready: map[int]chan struct{}{}}
	go func() {
		evs := make([]unix.EpollEvent, 256)
		for {
			n, err := unix.EpollWait(ep, evs, -1)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return
			}
			r.mu.Lock()
			for _, ev := range evs[:n] {
				if ch := r.ready[int(ev.Fd)]; ch != nil {
					select {
					case ch <- struct{}{}:
					default:
					}
				}
			}
			r.mu.Unlock()
		}
	}()
	return r, nil
}

func (r *epollReader) add(fd int) (chan struct{}, error) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.ready[fd] = ch
	r.mu.Unlock()
	return ch, unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd)})
}

func (r *epollReader) arm(fd int) error {
	return unix.EpollCtl(r.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd)})
}
