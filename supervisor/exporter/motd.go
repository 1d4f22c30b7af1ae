package exporter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/boardvisor/boardvisor/connector"
	"github.com/boardvisor/boardvisor/jobs"
)

// A beforeLease hook may write a message of the day to $JMP_MOTD_FILE (as upstream's
// hooks do). When the hook is over, the service reads it — what the hook left there is
// untrusted: the file is opened without following a symbolic link and without
// blocking (a FIFO cannot stall the service), only a regular file is read, and at most
// MaxMotdBytes of it, decoded leniently — and shows it twice: as GetReport.motd for the
// lease's holder (upstream's `jmp shell` prints it before the shell), and as one
// LOG_SOURCE_MESSAGE line in the lease's log (boardvisor's shell prints it).

// MaxMotdBytes bounds the message of the day read from a hook (as upstream's).
const MaxMotdBytes = 64 << 10

// motdFor reads the message of the day of a lease whose beforeLease hook just ended.
// It is called before the event is applied, without the service's lock.
func (s *Service) motdFor(ev connector.Event) (string, error) {
	if s.MotdFile == nil || ev.Transition == nil || ev.Transition.From != jobs.PhaseBeforeLease {
		return "", nil
	}
	return readMotd(s.MotdFile(ev.JobID))
}

func readMotd(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("open the message of the day: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("message of the day: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("message of the day %s is not a regular file; ignored", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxMotdBytes))
	if err != nil {
		return "", fmt.Errorf("read the message of the day: %w", err)
	}
	return strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD")), nil
}

// setMotd gives the lease its message of the day and logs it. Called with s.mu held.
func (l *leaseState) setMotd(motd string, seq uint64) {
	if motd == "" {
		return
	}
	l.motd = motd
	l.log(logLine{Source: jobs.SourceMessage, Severity: jobs.SeverityInfo, Text: motd, Seq: seq})
}
