package coordinator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	link "github.com/boardvisor/boardvisor/connector/grpc"
	"github.com/boardvisor/boardvisor/jobs"
	pb "github.com/boardvisor/boardvisor/proto/boardvisor/v1"
	jpb "github.com/boardvisor/boardvisor/proto/jumpstarter/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Connected records a supervisor that said Hello: the supervisor and its boards are
// upserted, its live jobs are reconciled with the coordinator's leases, and queued leases
// are assigned to its free boards. It returns the highest event seq stored from it.
func (c *Coordinator) Connected(ctx context.Context, s *link.Session, hello *pb.Hello) (uint64, error) {
	var lastSeen uint64
	id := hello.GetSupervisorId()
	if !jobs.ValidName(id) {
		c.auditRefusal(s.Peer, "", "", fmt.Sprintf("Hello with the invalid supervisor ID %q", id))
		return 0, status.Errorf(codes.InvalidArgument, "supervisor ID %q is not valid (want 1 to 64 of A-Z a-z 0-9 . _ -): set coordinator.supervisorId", id)
	}
	err := c.do(ctx, func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		if old := c.sessions[id]; old != nil && old != s && old.Alive() && (old.Instance == "" || old.Instance != s.Instance) {
			// Two supervisors with one ID: the live one keeps its boards.
			c.auditRefusal(s.Peer, "", "", fmt.Sprintf("Hello as supervisor %s, which is connected from %s", id, old.Peer))
			return status.Errorf(codes.AlreadyExists,
				"supervisor ID %q is already connected from %s (since %s); refused the connection from %s: give each supervisor its own coordinator.supervisorId",
				id, old.Peer, old.Since.UTC().Format(time.RFC3339), s.Peer)
		}
		now := c.now().UnixNano()
		var stored int64
		err := tx.QueryRowContext(ctx, `SELECT last_seq FROM supervisors WHERE id = $1`, id).Scan(&stored)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		// Events of this supervisor stored but not applied yet are applied first: the
		// Hello is newer than they are.
		if err := c.catchUp(ctx, tx, fx, id, uint64(max(stored, 0))); err != nil {
			return err
		}
		lastSeen = uint64(max(stored, 0))
		if acked := hello.GetLastAckedSeq(); acked > lastSeen {
			// The supervisor forgot events this database does not hold (it was restored
			// from a backup or replaced): they cannot be replayed, so do not wait for them.
			c.log.Warn("supervisor says events were acknowledged that this database does not hold: skipping them",
				"supervisor", id, "stored_seq", lastSeen, "acked_seq", acked)
			lastSeen = acked
			c.applied[id] = max(c.applied[id], acked)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO supervisors (id, last_seq, connected, last_contact, version, applied_seq)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, connected = excluded.connected,
				last_contact = excluded.last_contact, version = excluded.version, applied_seq = excluded.applied_seq`,
			id, int64(lastSeen), true, now, hello.GetVersion(), int64(c.applied[id])); err != nil {
			return err
		}
		old := c.sessions[id]
		c.sessions[id] = s // before the effects, so that they reach the new session
		if old != nil && old != s {
			c.log.Info("supervisor reconnected: the older session is dropped", "supervisor", id)
		}
		if err := c.upsertBoards(ctx, tx, id, hello); err != nil {
			return err
		}
		if err := c.reconcileHello(ctx, tx, fx, id, hello); err != nil {
			return err
		}
		for _, b := range c.fleet.boardsOf(id) {
			c.refresh(b)
		}
		delete(c.goneLogged, id)
		return nil
	})
	if _, ok := status.FromError(err); ok && err != nil {
		return 0, err // refused
	}
	if err != nil {
		c.log.Error("supervisor Hello not recorded", "supervisor", hello.GetSupervisorId(), "error", err)
		return 0, fmt.Errorf("record Hello: %w", err)
	}
	return lastSeen, nil
}

// upsertBoards records the boards of a Hello. A board name belongs to the supervisor
// that first announced it until that supervisor stops announcing it or an admin moves it
// (MoveBoard): another supervisor announcing it is refused, whether the owner is
// connected or not. Names and labels are checked with the supervisor config's rules
// (jobs.ValidName, ValidLabelKey, CheckLabelValue); a board that breaks them is refused.
// Boards the supervisor no longer announces are removed.
func (c *Coordinator) upsertBoards(ctx context.Context, tx *sql.Tx, sup string, hello *pb.Hello) error {
	current := map[string]string{}
	for _, lj := range hello.GetLiveJobs() {
		if !lj.GetEnded() && current[lj.GetBoard()] == "" {
			current[lj.GetBoard()] = lj.GetJobId()
		}
	}
	announced := map[string]bool{}
	for _, bi := range hello.GetBoards() {
		name := bi.GetName()
		if why := checkBoardInfo(bi); why != "" {
			c.auditRefusal(sup, "", "", "announced board "+why+": ignored")
			continue
		}
		prev := c.fleet.get(name)
		if prev != nil && prev.SupervisorID != sup {
			c.auditRefusal(sup, name, "", fmt.Sprintf("announced board %s, which belongs to supervisor %s (an admin may move it: MoveBoard): ignored", name, prev.SupervisorID))
			continue
		}
		announced[name] = true
		row := boardRow{Name: name, SupervisorID: sup, Labels: copyLabels(bi.GetLabels()), Status: int32(bi.GetStatus()),
			Health: int32(bi.GetHealth()), CurrentJob: current[name], Endpoint: bi.GetClientEndpoint()}
		if prev != nil { // the coordinator's own columns stay
			row.Maintenance, row.MaintenanceReason = prev.Maintenance, prev.MaintenanceReason
			row.HoldUntil, row.LastLeaseAt = prev.HoldUntil, prev.LastLeaseAt
		}
		if err := saveBoard(ctx, c.cached(tx), &row); err != nil {
			return err
		}
		b := c.fleet.put(row)
		if l := c.live[b.lease]; l != nil {
			l.Endpoint = b.Endpoint
		}
		c.refresh(b)
	}
	for _, b := range c.fleet.boardsOf(sup) {
		if announced[b.Name] {
			continue
		}
		c.log.Info("board no longer announced by its supervisor: removed", "board", b.Name, "supervisor", sup)
		if _, err := tx.ExecContext(ctx, `DELETE FROM boards WHERE name = $1 AND supervisor_id = $2`, b.Name, sup); err != nil {
			return err
		}
		c.fleet.remove(b)
	}
	return nil
}

func copyLabels(in map[string]string) map[string]string {
	out := make(map[string]string, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// reconcileHello compares the leases assigned to a supervisor with the jobs its Hello
// reports live (DESIGN.md §8) and queues StartJob / StopJob where they differ.
func (c *Coordinator) reconcileHello(ctx context.Context, tx *sql.Tx, fx *effects, sup string, hello *pb.Hello) error {
	now := c.now().UnixNano()
	live := map[string]*pb.LiveJob{}
	for _, lj := range hello.GetLiveJobs() {
		live[lj.GetJobId()] = lj
	}
	var leases []*leaseRow
	for _, l := range c.live {
		if l.SupervisorID == sup && (l.State == stateAssigned || l.State == stateActive) {
			leases = append(leases, l)
		}
	}
	c.visits.Add(int64(len(c.live)))
	sortByQueue(leases)
	mine := map[string]bool{}
	for _, l := range leases {
		mine[l.ID] = true
		lj := live[l.ID]
		switch {
		case lj == nil && l.StopAt != 0:
			endLease(l, pb.LeasePhase_LEASE_PHASE_DONE, now, "ended ("+l.StopReason+"): supervisor "+sup+" no longer holds the job")
		case lj == nil && l.State == stateActive:
			endLease(l, pb.LeasePhase_LEASE_PHASE_FAILED, now, "failed: supervisor "+sup+" no longer holds the job")
		case lj == nil:
			c.log.Info("reconcile: assigned job missing on its supervisor: StartJob sent again", "supervisor", sup, "job", l.ID, "board", l.Board)
			fx.startJob(sup, c.startJobOf(l))
			continue
		case lj.GetEnded():
			phase := lj.GetPhase()
			if !terminal(phase) {
				phase = pb.LeasePhase_LEASE_PHASE_FAILED
			}
			endLease(l, phase, now, "ended while the supervisor link was down")
		default:
			c.adoptPhase(l, lj.GetPhase(), now)
			if l.StopAt != 0 {
				fx.stopJob(sup, l.ID, l.StopReason)
			} else {
				c.syncEnd(fx, l) // an extension made while the link was down reaches it too
			}
		}
		if err := c.saveChanged(ctx, tx, fx, l); err != nil {
			return err
		}
	}
	for _, lj := range hello.GetLiveJobs() {
		if mine[lj.GetJobId()] || lj.GetEnded() {
			continue
		}
		l, err := c.leaseOf(ctx, tx, lj.GetJobId())
		if err != nil {
			return err
		}
		if l != nil && l.State == stateQueued && !c.adoptable(sup, lj, l) {
			c.auditRefusal(sup, lj.GetBoard(), l.ID, fmt.Sprintf("Hello lists queued lease %s as live on board %q, where it was not offered to supervisor %s: not adopted", l.ID, lj.GetBoard(), sup))
		}
		if l != nil && l.State != stateQueued && l.SupervisorID != "" && l.SupervisorID != sup {
			c.auditRefusal(sup, lj.GetBoard(), l.ID, fmt.Sprintf("Hello lists lease %s, which supervisor %s holds, as live on board %q", l.ID, l.SupervisorID, lj.GetBoard()))
		}
		if l != nil && l.State == stateQueued && c.adoptable(sup, lj, l) {
			// A lease put back in the queue (its StartJob looked refused) that the
			// supervisor runs after all: it keeps that board.
			c.log.Info("reconcile: queued lease found live on a supervisor: adopted", "supervisor", sup, "job", l.ID, "board", lj.GetBoard())
			b := c.fleet.get(lj.GetBoard())
			c.take(l, b)
			c.adoptPhase(l, lj.GetPhase(), now)
			c.rearm(l)
			c.markLease(l)
			c.markBoard(b)
			fx.leaseChanged(l)
			continue
		}
		why := "job unknown to the coordinator"
		if l != nil {
			why = "job ended or moved at the coordinator"
		}
		c.log.Info("reconcile: stopping a live job", "supervisor", sup, "job", lj.GetJobId(), "reason", why)
		fx.stopJob(sup, lj.GetJobId(), why)
	}
	return nil
}

// saveChanged stores a lease the state loop changed, keeps the in-memory state in step
// with it (an ended lease leaves it) and publishes it.
func (c *Coordinator) saveChanged(_ context.Context, _ *sql.Tx, fx *effects, l *leaseRow) error {
	if l.State == stateEnded {
		c.clearCurrentJob(l)
		c.ended(l)
	} else {
		c.rearm(l)
	}
	fx.leaseChanged(l)
	c.markLease(l)
	return nil
}

func sortByQueue(ls []*leaseRow) {
	for i := 1; i < len(ls); i++ {
		for j := i; j > 0 && ls[j].QueuePos < ls[j-1].QueuePos; j-- {
			ls[j], ls[j-1] = ls[j-1], ls[j]
		}
	}
}

// syncEnd tells the supervisor of a READY lease when it ends, with an ExtendJob: ends_at
// (begins_at + duration + extensions, begins_at being the READY time the supervisor
// reported, so in the supervisor's clock) and the time remaining from now. The
// supervisor's own bound counts from the lease's start (StartJob.duration: the start
// bound plus the duration, a fallback while the link is down), so this moves it to the
// ends_at the coordinator advertises. A lease already asked to stop, or past its end
// (the timers stop it), gets nothing.
func (c *Coordinator) syncEnd(fx *effects, l *leaseRow) {
	if l.StopAt != 0 || l.EndsAt == 0 || l.State != stateActive || l.Phase != int32(pb.LeasePhase_LEASE_PHASE_READY) || l.SupervisorID == "" {
		return
	}
	remaining := l.EndsAt - c.now().UnixNano()
	if remaining <= 0 {
		return
	}
	fx.extendJob(l.SupervisorID, &pb.ExtendJob{JobId: l.ID, Remaining: durationProto(remaining), EndsAt: tsProto(l.EndsAt)})
}

// adoptable reports whether a supervisor's live job may take over its board in the
// coordinator's records: the lease was offered to this supervisor for this board (its
// StartJob looked refused, and the supervisor runs it after all), the board is this
// supervisor's, holds no other lease, and matches the lease's request.
func (c *Coordinator) adoptable(sup string, lj *pb.LiveJob, l *leaseRow) bool {
	b := c.fleet.get(lj.GetBoard())
	if b == nil || b.SupervisorID != sup || b.lease != "" || !l.offered(sup, b.Name) {
		return false
	}
	m, err := leaseMatcher(l)
	return err == nil && m.matches(&b.boardRow)
}

// checkBoardInfo returns why an announced board is refused ("" if it is not).
func checkBoardInfo(bi *pb.BoardInfo) string {
	if !jobs.ValidName(bi.GetName()) {
		return fmt.Sprintf("name %q is not valid (want 1 to 64 of A-Z a-z 0-9 . _ -)", bi.GetName())
	}
	for k, v := range bi.GetLabels() {
		if !jobs.ValidLabelKey(k) {
			return fmt.Sprintf("%s has the invalid label key %q", bi.GetName(), k)
		}
		if err := jobs.CheckLabelValue(v); err != nil {
			return fmt.Sprintf("%s has the label %s=%q, which %v", bi.GetName(), k, v, err)
		}
	}
	if err := jobs.CheckText(bi.GetClientEndpoint(), 512); err != nil {
		return fmt.Sprintf("%s has a client endpoint that %v", bi.GetName(), err)
	}
	return ""
}

// adoptPhase takes the phase a supervisor reports for a live job.
func (c *Coordinator) adoptPhase(l *leaseRow, phase pb.LeasePhase, now int64) {
	if phase <= pb.LeasePhase_LEASE_PHASE_UNSPECIFIED || terminal(phase) {
		return
	}
	l.Phase = int32(phase)
	if phase >= pb.LeasePhase_LEASE_PHASE_READY && l.State == stateAssigned {
		l.State = stateActive
		if l.BeginsAt == 0 {
			l.BeginsAt = now
			l.EndsAt = l.BeginsAt + l.DurationNS + l.ExtraNS
		}
	}
}

func terminal(p pb.LeasePhase) bool {
	return p == pb.LeasePhase_LEASE_PHASE_DONE || p == pb.LeasePhase_LEASE_PHASE_FAILED
}

// endLease marks a lease ended in a terminal phase. The caller stores it with
// saveChanged, which also updates the in-memory state.
func endLease(l *leaseRow, phase pb.LeasePhase, at int64, msg string) {
	l.State, l.Phase, l.EndedAt = stateEnded, int32(phase), at
	if msg != "" {
		l.StatusMessage = msg
	}
}

// clearCurrentJob forgets an ended lease as its board's current job.
func (c *Coordinator) clearCurrentJob(l *leaseRow) {
	if l.Board == "" {
		return
	}
	if b := c.fleet.get(l.Board); b != nil && b.CurrentJob == l.ID {
		b.CurrentJob = ""
		c.markBoard(b)
	}
}

// startJobOf is the StartJob of an assigned lease. Its duration bounds the lease from
// its start on the supervisor: the start bound and the lease's duration, so that the
// supervisor never ends a lease before READY that the coordinator still waits for; at
// READY the coordinator moves that bound to the lease's ends_at (syncEnd).
func (c *Coordinator) startJobOf(l *leaseRow) *pb.StartJob {
	return &pb.StartJob{
		JobId:       l.ID,
		Board:       l.Board,
		ClientName:  l.Client,
		TokenSha256: l.TokenHash, // the token itself is not kept
		Duration:    durationProto(int64(c.opts.StartBound) + l.DurationNS + l.ExtraNS),
		Parameters:  l.Params,
		Image:       l.Image,
	}
}

// applyEvent applies one stored event of a supervisor: lease phases, board status, job
// errors. An event about a board the supervisor does not serve changes nothing (it is
// kept as evidence, and audited).
func (c *Coordinator) applyEvent(ctx context.Context, tx *sql.Tx, fx *effects, sup string, ev *pb.Event) error {
	kind, job, board := eventKind(ev)
	if board != "" {
		owner := ""
		if b := c.fleet.get(board); b != nil {
			owner = b.SupervisorID
		}
		if owner != sup {
			c.auditRefusal(sup, board, job, fmt.Sprintf("event %d (%s) about board %q, which supervisor %s did not announce (served by %q): not applied",
				ev.GetSeq(), kind, board, sup, owner))
			return nil
		}
	}
	at := ev.GetTime().AsTime().UnixNano()
	switch b := ev.GetBody().(type) {
	case *pb.Event_StateTransition:
		return c.applyTransition(ctx, tx, fx, sup, b.StateTransition, at)
	case *pb.Event_Error:
		return c.applyJobError(ctx, tx, fx, sup, b.Error, at)
	case *pb.Event_BoardStatus:
		bs := b.BoardStatus
		job := bs.GetCurrentJobId()
		if job != "" {
			// A replayed status may name a lease that has ended since: it is not the
			// board's current lease any more.
			if l, err := c.leaseOf(ctx, tx, job); err != nil {
				return err
			} else if l != nil && l.State == stateEnded {
				job = ""
			}
		}
		e := c.fleet.get(bs.GetBoard())
		e.Status, e.Health, e.CurrentJob = int32(bs.GetStatus()), int32(bs.GetHealth()), job
		c.refresh(e)
		c.markBoard(e)
		return nil
	}
	return nil
}

func (c *Coordinator) applyTransition(ctx context.Context, tx *sql.Tx, fx *effects, sup string, st *pb.StateTransition, at int64) error {
	to := st.GetTo()
	if st.GetExporterStatus() != jpb.ExporterStatus_EXPORTER_STATUS_UNSPECIFIED && st.GetBoard() != "" {
		if b := c.fleet.get(st.GetBoard()); b != nil && b.SupervisorID == sup {
			b.Status = int32(st.GetExporterStatus())
			c.refresh(b)
			c.markBoard(b)
		}
	}
	l, err := c.leaseOf(ctx, tx, st.GetJobId())
	if err != nil {
		return err
	}
	if l != nil && l.SupervisorID != sup && !(l.State == stateQueued && l.offered(sup, st.GetBoard())) {
		holder := l.SupervisorID
		if holder == "" {
			holder = "none (it is " + l.State + ")"
		}
		c.auditRefusal(sup, st.GetBoard(), l.ID, fmt.Sprintf("event about lease %s, whose supervisor is %s: not applied", l.ID, holder))
	}
	if l == nil || l.SupervisorID != sup || l.State == stateQueued {
		if !terminal(to) {
			c.log.Warn("a supervisor runs a job the coordinator did not give it: stopping it", "supervisor", sup, "job", st.GetJobId())
			fx.stopJob(sup, st.GetJobId(), "job unknown to the coordinator")
		}
		return nil
	}
	if l.State == stateEnded {
		c.clearCurrentJob(l)
		if !terminal(to) {
			fx.stopJob(sup, l.ID, "the lease has ended")
		} else if at < l.EndedAt {
			// A replayed end that happened before a reconciliation ended the lease:
			// the supervisor's account is the true one.
			l.Phase, l.EndedAt = int32(to), at
			if st.GetStatusMessage() != "" {
				l.StatusMessage = st.GetStatusMessage()
			}
			fx.leaseChanged(l)
			c.markLease(l)
		}
		return nil
	}
	l.Phase = int32(to)
	if st.GetExporterStatus() != jpb.ExporterStatus_EXPORTER_STATUS_UNSPECIFIED {
		l.ExporterStatus = int32(st.GetExporterStatus())
	}
	l.StatusMessage = st.GetStatusMessage()
	if l.StatusMessage == "" {
		l.StatusMessage = phaseName(to)
	}
	switch {
	case to == pb.LeasePhase_LEASE_PHASE_READY:
		l.State = stateActive
		// The earliest READY counts: a Hello may have shown the lease READY (at the time
		// of the reconnect) before this replayed event says when it really was; a lease
		// resumed after a supervisor restart does not start over.
		if l.BeginsAt == 0 || at < l.BeginsAt {
			l.BeginsAt = at
		}
		l.EndsAt = l.BeginsAt + l.DurationNS + l.ExtraNS
		c.syncEnd(fx, l)
	case terminal(to):
		endLease(l, to, at, "")
	case to > pb.LeasePhase_LEASE_PHASE_READY && l.State == stateAssigned:
		l.State = stateActive
	}
	return c.saveChanged(ctx, tx, fx, l)
}

func (c *Coordinator) applyJobError(ctx context.Context, tx *sql.Tx, fx *effects, sup string, je *pb.JobErrorEvent, at int64) error {
	l, err := c.leaseOf(ctx, tx, je.GetJobId())
	if err != nil {
		return err
	}
	kind := je.GetError().GetKind()
	kindName := jobs.JobErrorKind(kind).String()
	if l != nil && l.SupervisorID != "" && l.SupervisorID != sup {
		c.auditRefusal(sup, "", l.ID, fmt.Sprintf("job error about lease %s, whose supervisor is %s: not applied", l.ID, l.SupervisorID))
	}
	if l == nil || l.SupervisorID != sup || l.State == stateQueued || l.State == stateEnded {
		c.log.Debug("job error for a job not assigned to this supervisor: stored only", "supervisor", sup, "job", je.GetJobId(), "kind", kindName)
		return nil
	}
	desc := je.GetError().GetDescription()
	switch kind {
	case pb.JobErrorKind_JOB_ERROR_KIND_JOB_ALREADY_EXISTS, pb.JobErrorKind_JOB_ERROR_KIND_ALREADY_STOPPING:
		return nil // the supervisor holds the job already, or is already ending it
	case pb.JobErrorKind_JOB_ERROR_KIND_MAX_CONCURRENT_JOBS, pb.JobErrorKind_JOB_ERROR_KIND_ALREADY_RUNNING:
		if l.State != stateAssigned || l.Phase > int32(pb.LeasePhase_LEASE_PHASE_CREATED) {
			return nil // refers to a repeated StartJob of a job that runs
		}
		if l.StopAt != 0 {
			endLease(l, pb.LeasePhase_LEASE_PHASE_DONE, at, "ended: stopped before its board took it")
			break
		}
		c.log.Info("board refused the job as busy: lease queued again", "job", l.ID, "board", l.Board, "kind", kindName)
		hold := c.now().Add(c.opts.RefusalHold).UnixNano()
		if b := c.fleet.get(l.Board); b != nil {
			b.HoldUntil = hold
			c.markBoard(b)
			c.wakeFor(hold)
		}
		board := l.Board
		l.StatusMessage = fmt.Sprintf("queued again: board %s refused the job (%s: %s)", l.Board, kindName, desc)
		l.State, l.Board, l.SupervisorID, l.AssignedAt, l.EndsAt, l.Endpoint = stateQueued, "", "", 0, 0, ""
		c.requeued(l, board)
		fx.leaseChanged(l)
		c.markLease(l)
		return c.serveQueued(ctx, tx, fx, l)
	default:
		endLease(l, pb.LeasePhase_LEASE_PHASE_FAILED, at, fmt.Sprintf("failed on supervisor %s: %s: %s", sup, kindName, desc))
		fx.stopJob(sup, l.ID, "the job failed: "+kindName) // no-op for a job that is gone
	}
	return c.saveChanged(ctx, tx, fx, l)
}

func phaseName(p pb.LeasePhase) string {
	return strings.TrimPrefix(p.String(), "LEASE_PHASE_")
}

// Disconnected records that a supervisor's stream ended. Its leases stay as they are;
// its boards show OFFLINE once it has been gone longer than the grace period.
func (c *Coordinator) Disconnected(s *link.Session, err error) {
	dbErr := c.do(context.Background(), func(ctx context.Context, tx *sql.Tx, fx *effects) error {
		if c.sessions[s.ID] != s {
			return errNotCurrent // a newer session replaced it, or Connected refused it
		}
		delete(c.sessions, s.ID)
		for _, b := range c.fleet.boardsOf(s.ID) {
			c.refresh(b)
		}
		_, err := tx.ExecContext(ctx, `UPDATE supervisors SET connected = $1, last_contact = $2 WHERE id = $3`,
			false, c.now().UnixNano(), s.ID)
		return err
	})
	switch {
	case errors.Is(dbErr, errNotCurrent), errors.Is(dbErr, errClosed), isStandby(dbErr):
		return
	case dbErr != nil:
		c.log.Error("record supervisor disconnect", "supervisor", s.ID, "error", dbErr)
	}
	c.farm.notify() // farmwatch.go
	c.log.Info("supervisor gone; its leases stay", "supervisor", s.ID, "reason", errString(err))
}

// errNotCurrent is a status error (so the state loop's transaction goes on without it):
// the session is not the supervisor's current one.
var errNotCurrent = statusError("not the current session")

func errString(err error) string {
	if err == nil {
		return "stream closed"
	}
	return err.Error()
}

// reconcileAll is the periodic reconciliation with every connected supervisor, by its
// last known live set (the unended leases assigned to it): StopJob again for leases that
// should end, StartJob again for assigned jobs that never reported a phase.
func (c *Coordinator) reconcileAll(_ context.Context, _ *sql.Tx, fx *effects) error {
	fx.quiet = true
	now := c.now()
	for _, l := range c.live {
		if l.State == stateQueued || c.sessions[l.SupervisorID] == nil {
			continue
		}
		switch {
		case l.StopAt != 0:
			fx.stopJob(l.SupervisorID, l.ID, l.StopReason)
		case l.State == stateAssigned && l.Phase <= int32(pb.LeasePhase_LEASE_PHASE_CREATED) &&
			now.Sub(time.Unix(0, l.AssignedAt)) >= c.opts.ReconcileInterval:
			c.log.Debug("reconcile: job never reported a phase: StartJob sent again", "supervisor", l.SupervisorID, "job", l.ID)
			fx.startJob(l.SupervisorID, c.startJobOf(l))
		}
	}
	return nil
}

// checkGrace logs, once, each supervisor gone longer than the grace period.
func (c *Coordinator) checkGrace(ctx context.Context) {
	cutoff := c.now().Add(-c.opts.Grace).UnixNano()
	rows, err := c.db.QueryContext(ctx, `SELECT id FROM supervisors WHERE connected = $1 AND last_contact < $2`, false, cutoff)
	if err != nil {
		return
	}
	var gone []string
	for rows.Next() {
		var id string
		if rows.Scan(&id) == nil {
			gone = append(gone, id)
		}
	}
	_ = rows.Close()
	if len(gone) == 0 {
		return
	}
	_ = c.do(ctx, func(context.Context, *sql.Tx, *effects) error {
		for _, id := range gone {
			if !c.goneLogged[id] && c.sessions[id] == nil {
				c.goneLogged[id] = true
				c.farm.notify() // its boards show OFFLINE from now on (farmwatch.go)
				c.log.Warn("supervisor gone longer than the grace period: its boards show OFFLINE; its leases stay", "supervisor", id, "grace", c.opts.Grace)
			}
		}
		return nil
	})
}

// tick runs the timers that need no supervisor contact: lease expiry, and the end of
// refusal holds (the boards then serve the queue). It returns the next deadline.
func (c *Coordinator) tick(ctx context.Context, tx *sql.Tx, fx *effects) (int64, error) {
	fx.quiet = true
	now := c.now().UnixNano()
	due, next := c.due(now)
	for _, l := range due {
		if preReady(l) {
			l.StopAt, l.StopReason = now, fmt.Sprintf("not READY within %s of its assignment", c.opts.StartBound)
			l.StatusMessage = "ending: the board did not become READY within " + c.opts.StartBound.String()
		} else {
			l.StopAt, l.StopReason = now, "lease expired"
			l.StatusMessage = "ending: the lease's time is up"
		}
		c.markLease(l)
		c.log.Info("lease expired: stopping it", "job", l.ID, "board", l.Board, "supervisor", l.SupervisorID, "reason", l.StopReason)
		fx.stopJob(l.SupervisorID, l.ID, l.StopReason)
		fx.leaseChanged(l)
	}
	for b := range c.fleet.held {
		c.visits.Add(1)
		if b.HoldUntil <= now {
			c.refresh(b)
		} else if next == 0 || b.HoldUntil < next {
			next = b.HoldUntil
		}
	}
	return next, nil
}

// statusError is a gRPC status error for a request the state loop refuses before it
// changed anything.
func statusError(msg string) error { return status.Error(codes.Aborted, msg) }
