package tests

// A waiting lease belongs to a live client (issue 17): Ctrl+C, SIGTERM or kill -9 of
// `boardvisor shell` while it waits withdraws the lease within seconds, and it never
// becomes READY; while it waits the shell says where it is in the queue and who holds
// the board until when; Ctrl+C during the beforeLease hook releases the lease and says
// what still runs.

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
)

// liveLeasesOf lists the unended leases of a client.
func liveLeasesOf(t *testing.T, c pb.LeaseServiceClient, client string) []*pb.Lease {
	t.Helper()
	r, err := c.ListLeases(ctxT(t), &pb.ListLeasesRequest{ClientName: client})
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	return r.GetLeases()
}

// expectContaining reads terminal lines until one contains sub, and returns it whole
// (expect returns only the lines before).
func (term *terminal) expectContaining(sub string) string {
	term.t.Helper()
	var seen []string
	deadline := time.After(wait)
	for {
		select {
		case l, ok := <-term.seen:
			if !ok {
				term.t.Fatalf("terminal closed before a line with %q; saw:\n%s", sub, strings.Join(seen, "\n"))
			}
			if strings.Contains(l, sub) {
				return l
			}
			seen = append(seen, l)
		case <-deadline:
			term.t.Fatalf("no line with %q on the terminal; saw:\n%s", sub, strings.Join(seen, "\n"))
		}
	}
}

// exitStatus waits for the terminal's command and returns its exit status.
func (term *terminal) exitStatus() int {
	term.t.Helper()
	select {
	case err := <-term.done:
		if err == nil {
			return 0
		}
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			return ee.ExitCode()
		}
		term.t.Fatalf("wait: %v", err)
	case <-time.After(wait):
		term.t.Fatal("the command did not exit")
	}
	return -1
}

// neverReady checks, once the board was free again, that the lease ended without ever
// being READY: its supervisor reported no transition of it to READY.
func neverReady(t *testing.T, stateDir, id string) {
	t.Helper()
	db := openCoordinatorDB(t, stateDir)
	eachTransition(t, storedEvents(t, db), func(e storedEvent, st *pb.StateTransition) {
		if st.GetJobId() == id && st.GetTo() == pb.LeasePhase_LEASE_PHASE_READY {
			t.Errorf("withdrawn lease %s became READY (event %d)", id, e.seq)
		}
	})
}

// waitingLab is a coordinator and a supervisor with one board, which a lease of
// "holder" holds.
type waitingLab struct {
	coordAddr, coordDir string
	leases              pb.LeaseServiceClient
	holder              *pb.Lease
}

func newWaitingLab(t *testing.T, before string) *waitingLab {
	t.Helper()
	dir := t.TempDir()
	lab := &waitingLab{coordAddr: freeAddr(t), coordDir: filepath.Join(dir, "coord")}
	startCoordinator(t, lab.coordAddr, lab.coordDir)
	cfg := supervisorConfig(t, dir, "lab-1", lab.coordAddr, before, "", boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	lab.leases = leaseClient(t, lab.coordAddr)
	waitBoards(t, lab.leases, 1)
	return lab
}

func (lab *waitingLab) hold(t *testing.T) {
	t.Helper()
	l, err := createLease(ctxT(t), lab.leases, "", "rpi4-01", 10*time.Minute, "holder")
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchLease(ctxT(t), lab.leases, l.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.ready(); err != nil {
		t.Fatal(err)
	}
	lab.holder = l
}

// free releases the holder's lease and waits until the board is AVAILABLE again (and
// so could have gone to a lease still queued).
func (lab *waitingLab) free(t *testing.T) {
	t.Helper()
	if _, err := lab.leases.ReleaseLease(ctxT(t), &pb.ReleaseLeaseRequest{Id: lab.holder.GetId()}); err != nil {
		t.Fatal(err)
	}
	waitBoards(t, lab.leases, 1)
	// A lease still queued would have been assigned by now: the board stays free.
	time.Sleep(time.Second)
	if st := boardStatuses(t, lab.leases)["rpi4-01"]; st != "AVAILABLE" {
		t.Fatalf("board is %s after the holder left: a withdrawn lease took it", st)
	}
}

// waitingID waits until the client has a queued lease and returns its ID.
func (lab *waitingLab) waitingID(t *testing.T, client string) string {
	t.Helper()
	var id string
	eventually(t, "a queued lease of "+client, func() bool {
		for _, l := range liveLeasesOf(t, lab.leases, client) {
			if l.GetQueued() {
				id = l.GetId()
			}
		}
		return id != ""
	})
	return id
}

// goneWithin fails unless the client's leases are all gone from `lease list` within d
// of start.
func (lab *waitingLab) goneWithin(t *testing.T, client string, start time.Time, d time.Duration) {
	t.Helper()
	for len(liveLeasesOf(t, lab.leases, client)) > 0 {
		if time.Since(start) > d {
			t.Fatalf("the lease of %s is still listed %s after its client went away: %v", client, d, liveLeasesOf(t, lab.leases, client))
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := bv(t, lab.coordAddr, "lease", "list")
	if strings.Contains(out, client) {
		t.Fatalf("lease list still shows %s's lease:\n%s", client, out)
	}
}

// On a terminal, `boardvisor shell` waiting in the queue says where it is and who holds
// the board until when; Ctrl+C withdraws its lease at once, and it never becomes READY.
func TestShellCtrlCWhileQueuedWithdrawsTheLease(t *testing.T) {
	lab := newWaitingLab(t, "")
	lab.hold(t)
	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + lab.coordAddr, "SHELL=/bin/sh"},
		"shell", "--board", "rpi4-01", "--client", "waiter", "--", "true")
	term.expect("Waiting for a free board (board rpi4-01)...")
	line := term.expectContaining("In the queue: 1st of 1")
	if !strings.Contains(line, "rpi4-01 is held by holder until ") {
		t.Fatalf("the queue line does not name the holder and its end: %q", line)
	}
	id := lab.waitingID(t, "waiter")
	term.send("\x03")
	start := time.Now()
	term.expect("boardvisor: Lease " + id + " withdrawn from the queue.")
	if code := term.exitStatus(); code != 130 {
		t.Errorf("exit status %d after Ctrl+C, want 130", code)
	}
	lab.goneWithin(t, "waiter", start, 5*time.Second)
	lab.free(t)
	neverReady(t, lab.coordDir, id)
}

// kill -9 of a waiting shell: the coordinator withdraws the lease within seconds (its
// AttachLease stream is gone), and it never becomes READY.
func TestKilledWaitingClientsLeaseIsWithdrawn(t *testing.T) {
	lab := newWaitingLab(t, "")
	lab.hold(t)
	shell := start(t, "shell", "shell", "--coordinator", lab.coordAddr, "--board", "rpi4-01", "--client", "waiter", "--", "true")
	shell.waitLine("Waiting for a free board")
	id := lab.waitingID(t, "waiter")
	shell.kill()
	killed := time.Now()
	lab.goneWithin(t, "waiter", killed, 5*time.Second)
	l, err := lab.leases.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if l.GetLease().GetPhase() != pb.LeasePhase_LEASE_PHASE_DONE || !strings.Contains(l.GetLease().GetStatusMessage(), "client went away") {
		t.Errorf("withdrawn lease: %s %q, want DONE saying its client went away", l.GetLease().GetPhase(), l.GetLease().GetStatusMessage())
	}
	lab.free(t)
	neverReady(t, lab.coordDir, id)
	b, _ := os.ReadFile(filepath.Join(lab.coordDir, "audit.jsonl"))
	if !strings.Contains(string(b), id) || !strings.Contains(string(b), "withdrawn") {
		t.Errorf("the withdrawal is not in the coordinator's audit log:\n%s", b)
	}
}

// SIGTERM of a waiting shell withdraws its lease and says so.
func TestSIGTERMWhileQueuedWithdrawsTheLease(t *testing.T) {
	lab := newWaitingLab(t, "")
	lab.hold(t)
	shell := start(t, "shell", "shell", "--coordinator", lab.coordAddr, "--board", "rpi4-01", "--client", "waiter", "--", "true")
	shell.waitLine("Waiting for a free board")
	id := lab.waitingID(t, "waiter")
	if err := shell.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	shell.waitLine("Lease " + id + " withdrawn from the queue.")
	<-shell.done
	if code := shell.cmd.ProcessState.ExitCode(); code != 130 {
		t.Errorf("exit status %d after SIGTERM, want 130", code)
	}
	lab.goneWithin(t, "waiter", start, 5*time.Second)
}

// Ctrl+C during the beforeLease hook releases the lease with a sentence (not "context
// canceled"): the hook finishes, then the afterLease hook runs. Meanwhile the terminal
// showed the hook's time against its timeout.
func TestShellCtrlCDuringBeforeLease(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	after := filepath.Join(dir, "after-ran")
	coordAddr, coordDir := freeAddr(t), filepath.Join(dir, "coord")
	startCoordinator(t, coordAddr, coordDir)
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "echo 'JMP_INFO: flashing'; read x < "+gate, "touch "+after, boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)

	term := openTerminal(t, []string{"BOARDVISOR_COORDINATOR=" + coordAddr, "SHELL=/bin/sh"}, "shell", "-l", "device=rpi4", "--client", "impatient")
	term.expect("Waiting for beforeLease hooks to complete...")
	term.expect("[Hook INFO] flashing")
	time.Sleep(2500 * time.Millisecond) // the hook's clock is drawn every second
	term.send("\x03")
	line := term.expectContaining("released; the beforeLease hook finishes, then the afterLease hook runs on board rpi4-01.")
	if !strings.Contains(line, "[boardvisor] beforeLease hook running: ") || !strings.Contains(line, " of its 20s timeout") {
		t.Errorf("the hook's time against its timeout was not shown before: %q", line)
	}
	if strings.Contains(line, "context canceled") {
		t.Errorf("raw error: %q", line)
	}
	if code := term.exitStatus(); code != 130 {
		t.Errorf("exit status %d, want 130", code)
	}
	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteString("go\n")
	g.Close()
	if err := waitExists(after, wait); err != nil {
		t.Fatalf("the afterLease hook did not run after the release: %v", err)
	}
	waitBoards(t, leases, 1)
	r, err := leases.ListLeases(ctxT(t), &pb.ListLeasesRequest{ClientName: "impatient", IncludeEnded: true})
	if err != nil || len(r.GetLeases()) != 1 {
		t.Fatalf("leases: %v %v", r, err)
	}
	neverReady(t, coordDir, r.GetLeases()[0].GetId())
}

// A detached lease (lease create --detach) outlives its command, and is withdrawn if it
// is still queued after its maximum wait.
func TestDetachedLeaseIsBoundedInTheQueue(t *testing.T) {
	lab := newWaitingLab(t, "")
	lab.hold(t)
	out, err := runCLI(coordEnv(lab.coordAddr, ""), "lease", "create", "--board", "rpi4-01", "--client", "later", "--detach", "--max-wait", "5s")
	if err != nil {
		t.Fatalf("lease create --detach: %v\n%s", err, out)
	}
	id := createdLease(out)["lease"]
	if id == "" || !strings.Contains(out, "is queued (detached)") {
		t.Fatalf("lease create --detach: %q", out)
	}
	if len(liveLeasesOf(t, lab.leases, "later")) != 1 {
		t.Fatal("the detached lease did not outlive its command")
	}
	eventually(t, "the detached lease withdrawn after its maximum wait", func() bool {
		return len(liveLeasesOf(t, lab.leases, "later")) == 0
	})
	l, err := lab.leases.GetLease(ctxT(t), &pb.GetLeaseRequest{Id: id})
	if err != nil || !strings.Contains(l.GetLease().GetStatusMessage(), "maximum wait") {
		t.Fatalf("withdrawn detached lease: %v %v", l, err)
	}
	// Without --detach, --max-wait is refused: such a lease waits as long as its command.
	if out, err := runCLI(coordEnv(lab.coordAddr, ""), "lease", "create", "--board", "rpi4-01", "--max-wait", "2s"); err == nil || !strings.Contains(out, "--detach") {
		t.Fatalf("--max-wait without --detach: %v %q", err, out)
	}
}

// A failed beforeLease is reported once: the failure in one line, each hook line once.
func TestFailedBeforeLeaseReportedOnce(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord"))
	cfg := supervisorConfig(t, dir, "lab-1", coordAddr, "echo 'JMP_INFO: flashing'; echo 'JMP_ERROR: flash failed'; exit 3", "", boardSpec{"rpi4-01", "device: rpi4"})
	startSupervisor(t, "supervisor", cfg)
	waitBoards(t, leaseClient(t, coordAddr), 1)
	out, err := runShell(t, coordAddr, "shell", "-l", "device=rpi4", "--", "true")
	if err == nil {
		t.Fatalf("shell succeeded with a failing beforeLease:\n%s", out)
	}
	for _, want := range []string{"flashing", "flash failed", "beforeLease hook failed"} {
		if n := strings.Count(out, want); n != 1 {
			t.Errorf("%q shows %d times, want once:\n%s", want, n, out)
		}
	}
	if !strings.Contains(out, "beforeLease hook failed: exit status 3") || !strings.Contains(out, "was not handed over") {
		t.Errorf("failure report:\n%s", out)
	}
}

// A user waiting while every board they want is OFFLINE is told so, with the
// supervisor that is gone and since when.
func TestWaitingForAnOfflineBoardSaysWhy(t *testing.T) {
	dir := t.TempDir()
	coordAddr := freeAddr(t)
	startCoordinator(t, coordAddr, filepath.Join(dir, "coord")) // grace 2s
	cfg := supervisorConfig(t, dir, "lab-b", coordAddr, "", "", boardSpec{"rpi4-01", "device: rpi4"})
	sup := startSupervisor(t, "supervisor", cfg)
	leases := leaseClient(t, coordAddr)
	waitBoards(t, leases, 1)
	sup.kill()
	eventually(t, "rpi4-01 OFFLINE", func() bool { return boardStatuses(t, leases)["rpi4-01"] == "OFFLINE" })
	shell := start(t, "shell", "shell", "--coordinator", coordAddr, "-l", "device=rpi4", "--", "true")
	line := shell.waitLine("The only board matching device=rpi4 is OFFLINE")
	if !regexp.MustCompile(`rpi4-01 is OFFLINE \(supervisor lab-b gone since \d\d:\d\d:\d\d\)\.$`).MatchString(line) {
		t.Errorf("offline explanation: %q", line)
	}
	// The supervisor comes back: the lease goes on.
	startSupervisor(t, "supervisor-again", cfg)
	shell.waitLine("Connected to device.")
}
