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
)

// runSweep measures what a coalescing pause costs by itself, reading every streaming pty
// in this process and forwarding nothing, two ways:
//
//   - bare: a goroutine per pty under Go's poller, pausing for exactly pause after each
//     read that drained its pty (what the serial driver did before its own reader, and
//     without its cap by the line rate: 500 ms lets the line discipline's 4 KiB fill);
//   - driver: the serial driver itself (drivers/serial: its reader, Coalesce = pause,
//     capped by the line rate).
//
// Rows: CPU, reads per second, bytes a read, the feeder's pace, times a pty was full,
// bytes lost.
func runSweep(e *env, f *farm, size consoleSize, pause time.Duration, driver bool) error {
	paths := f.paths[:size.streaming]
	counts := make([]consoleCount, len(paths))
	var reads, total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wake := func() {} // ends the readers' waits once stop is closed
	count := func(i int, b []byte) {
		reads.Add(1)
		total.Add(int64(len(b)))
		counts[i].n += int64(len(b))
		counts[i].crc = crc32.Update(counts[i].crc, castagnoli, b)
	}
	if driver {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for i, p := range paths {
			d, err := serial.New(serial.Config{Device: p, Coalesce: pause})
			if err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = d.Run(ctx, func(b []byte) { count(i, b) }) // one reader calls out per console: no lock needed
			}()
		}
		go func() { <-stop; cancel() }()
	} else {
		var files []*os.File
		defer func() {
			for _, fl := range files {
				fl.Close()
			}
		}()
		for _, p := range paths {
			fl, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return err
			}
			files = append(files, fl)
			if err := makeRawTTY(fl); err != nil {
				return err
			}
		}
		for i, fl := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 32<<10)
				t := time.NewTimer(time.Hour)
				t.Stop()
				for {
					_ = fl.SetReadDeadline(time.Now().Add(time.Second))
					n, err := fl.Read(buf)
					if n > 0 {
						count(i, buf[:n])
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
		wake = func() {
			for _, fl := range files {
				_ = fl.SetReadDeadline(time.Unix(1, 0))
			}
		}
	}
	var r0 int64
	w, on, err := measure(f, size, map[string]int{"reader": os.Getpid()}, func(stop <-chan struct{}) {
		time.Sleep(2 * time.Second) // the window's start (see measure)
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
	wake()
	wg.Wait()
	if err != nil {
		return err
	}
	how := "bare reads under Go's poller"
	if driver {
		how = "the serial driver"
	}
	lost, bad := compare(func(i int) consoleCount { return counts[i] }, size)
	rps := float64(r1-r0) / w.wall.Seconds()
	per := float64(w.sent) / w.wall.Seconds() / max(rps, 1)
	logf("console sweep %s, %s: %.1f%% of a core, %.0f reads/s of %.0f bytes; %s; %d bytes lost, %d boards wrong",
		pause, how, w.cpu["reader"]*100, rps, per, w.paceNote(size), lost, bad)
	e.add(Row{Figure: fmt.Sprintf("console sweep: %s, pause %s, %d boards", how, pause, size.streaming),
		Value: fmt.Sprintf("%.1f%% of a core", w.cpu["reader"]*100), Num: w.cpu["reader"] * 100, Unit: "%", Target: "-",
		Note: fmt.Sprintf("%.0f reads/s of %.0f bytes; %s; %d bytes lost, %d boards wrong; nothing forwarded",
			rps, per, w.paceNote(size), lost, bad)})
	return nil
}
