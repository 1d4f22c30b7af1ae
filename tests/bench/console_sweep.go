package main

import (
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/boardvisor/boardvisor/drivers/serial"
)

// runSweep measures what a coalescing pause costs and keeps, by itself: every streaming
// pty read in this process with a fixed pause after each read that drained it (as the
// serial driver does, but without its cap by the line rate), nothing forwarded. Rows:
// CPU, reads per second, bytes a read, the feeder's pace, bytes lost.
func runSweep(e *env, f *farm, size consoleSize, pause time.Duration) error {
	var files []*os.File
	defer func() {
		for _, fl := range files {
			fl.Close()
		}
	}()
	for _, p := range f.paths[:size.streaming] {
		fl, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		files = append(files, fl)
		if err := makeRawTTY(fl); err != nil {
			return err
		}
	}
	counts := make([]consoleCount, len(files))
	var reads, total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
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
	logf("console sweep %s: %.1f%% of a core, %.0f reads/s of %.0f bytes; %s; %d stalled writes; %d bytes lost, %d boards wrong",
		pause, w.cpu["reader"]*100, rps, float64(w.sent)/w.wall.Seconds()/max(rps, 1), w.paceNote(size), w.stalls, lost, bad)
	e.add(Row{Figure: fmt.Sprintf("console sweep: bare pty reads, pause %s after a draining read, %d boards", pause, size.streaming),
		Value: fmt.Sprintf("%.1f%% of a core", w.cpu["reader"]*100), Num: w.cpu["reader"] * 100, Unit: "%", Target: "-",
		Note: fmt.Sprintf("%.0f reads/s of %.0f bytes; %s; %d writes the ptys did not take within 50 ms; %d bytes lost, %d boards wrong",
			rps, float64(w.sent)/w.wall.Seconds()/max(rps, 1), w.paceNote(size), w.stalls, lost, bad)})
	return nil
}
