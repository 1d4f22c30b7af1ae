// Package sdnotify tells systemd how a daemon is doing (sd_notify(3)): READY=1 once it
// serves, WATCHDOG=1 while it is healthy, STOPPING=1 when it stops. It writes datagrams
// to the socket systemd names in NOTIFY_SOCKET; without that variable (not started by
// systemd, or not Type=notify) every call is a no-op.
package sdnotify

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"
)

// Notify sends state (e.g. "READY=1") to systemd. It returns nil when there is no
// NOTIFY_SOCKET.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' { // an abstract socket
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

// Ready says the daemon serves.
func Ready() error { return Notify("READY=1") }

// Stopping says the daemon is stopping.
func Stopping() error { return Notify("STOPPING=1") }

// WatchdogInterval is how often the daemon must ping systemd's watchdog (half of
// WATCHDOG_USEC), or 0 when there is no watchdog for this process.
func WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// Watchdog pings systemd's watchdog every WatchdogInterval while healthy answers nil
// (each probe bounded by the interval), until ctx is done. A daemon that stops
// answering its probe is no longer pinged, and systemd restarts it. Without a watchdog
// it returns at once.
func Watchdog(ctx context.Context, healthy func(context.Context) error) {
	every := WatchdogInterval()
	if every == 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every)
		err := healthy(pctx)
		cancel()
		if err == nil {
			Notify("WATCHDOG=1")
		}
	}
}
