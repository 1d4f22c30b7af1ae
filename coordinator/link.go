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
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Connected records a supervisor that said Hello: the supervisor and its boards are
// upserted, its live jobs are reconciled with the coordinator's leases, and queued leases
// are assigned to its free boards. It returns the highest event seq stored from it.
func (c *Coordinator) Connected(ctx context.Context, s *link.Session, hello *pb.Hello) (uint64, error) {
	select {
	case <-c.done:
		return 0, errClosed
	default:
	}
	id := hello.GetSupervisorId()
	var lastSeen uint64
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.sessions[id]
	c.sessions[id] = s // before the commit's effects, so that they reach the new session
	err := c.updateLocked(ctx, func(tx *sql.Tx, fx *effects) error {
		now := c.now().UnixNano()
		var stored int64
		err := tx.QueryRowContext(ctx, `SELECT last_seq FROM supervisors WHERE id = $1`, id).Scan(&stored)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		lastSeen = uint64(max(stored, 0))
		if acked := hello.GetLastAckedSeq(); acked > lastSeen {
			// The supervisor forgot events this database does not hold (it was restored
			// from a backup or replaced): they cannot be replayed, so do not wait for them.
			c.log.Warn("supervisor says events were acknowledged that this database does not hold: skipping them",
				"supervisor", id, "stored_seq", lastSeen, "acked_seq", acked)
			lastSeen = acked
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO supervisors (id, last_seq, connected, last_contact, version)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, connected = excluded.connected,
				last_contact = excluded.last_contact, version = excluded.version`,
			id, int64(lastSeen), true, now, hello.GetVersion()); err != nil {
			return err
		}
		if err := c.upsertBoards(ctx, tx, id, hello); err != nil {
			return err
		}
		if err := c.reconcileHello(ctx, tx, fx, id, hello); err != nil {
			return err
		}
		return c.assignQueued(ctx, tx, fx)
	})
	if err != nil {
		if c.sessions[id] == s {
			if old != nil {
				c.sessions[id] = old
			} else {
				delete(c.sessions, id)
			}
		}
		c.log.Error("supervisor Hello not recorded", "supervisor", id, "error", err)
		return 0, fmt.Errorf("record Hello: %w", err)
	}
	delete(c.goneLogged, id)
	return lastSeen, nil
}

// upsertBoards records the boards of a Hello. A board name another supervisor still
// serves (connected, or holding an unended lease on it) is not taken over; boards the
// supervisor no longer announces are removed.
func (c *Coordinator) upsertBoards(ctx context.Context, tx *sql.Tx, sup string, hello *pb.Hello) error {
	current := map[string]string{}
	for _, lj := range hello.GetLiveJobs() {
		if !lj.GetEnded() && current[lj.GetBoard()] == "" {
			current[lj.GetBoard()] = lj.GetJobId()
		}
	}
	busy, err := busyBoards(ctx, tx)
	if err != nil {
		return err
	}
	announced := map[string]bool{}
	for _, b := range hello.GetBoards() {
		name := b.GetName()
		if name == "" {
			c.log.Warn("supervisor announced a board without a name: ignored", "supervisor", sup)
			continue
		}
		prev, err := getBoard(ctx, tx, name)
		if err != nil {
			return err
		}
		if prev != nil && prev.SupervisorID != sup {
			if c.sessions[prev.SupervisorID] != nil || busy[name] != "" {
				c.log.Error("board name already served by another supervisor: ignored", "board", name,
					"supervisor", sup, "served_by", prev.SupervisorID)
				continue
			}
			c.log.Info("board moved to another supervisor", "board", name, "from", prev.SupervisorID, "to", sup)
		}
		announced[name] = true
		if _, err := tx.ExecContext(ctx, `INSERT INTO boards (name, supervisor_id, labels, status, health, current_job, endpoint)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (name) DO UPDATE SET supervisor_id = excluded.supervisor_id, labels = excluded.labels,
				status = excluded.status, health = excluded.health, current_job = excluded.current_job,
				endpoint = excluded.endpoint`,
			name, sup, labelsJSON(b.GetLabels()), int32(b.GetStatus()), int32(b.GetHealth()), current[name],
			b.GetClientEndpoint()); err != nil {
			return err
		}
	}
	old, err := queryBoards(ctx, tx, `WHERE b.supervisor_id = $1`, sup)
	if err != nil {
		return err
	}
	for _, b := range old {
		if announced[b.Name] {
			continue
		}
		c.log.Info("board no longer announced by its supervisor: removed", "board", b.Name, "supervisor", sup)
		if _, err := tx.ExecContext(ctx, `DELETE FROM boards WHERE name = $1 AND supervisor_id = $2`, b.Name, sup); err != nil {
			return err
		}
	}
	return nil
}

// reconcileHello compares the leases assigned to a supervisor with the jobs its Hello
// reports live (DESIGN.md §8) and queues StartJob / StopJob where they differ.
func (c *Coordinator) reconcileHello(ctx context.Context, tx *sql.Tx, fx *effects, sup string, hello *pb.Hello) error {
	now := c.now().UnixNano()
	live := map[string]*pb.LiveJob{}
	for _, lj := range hello.GetLiveJobs() {
		live[lj.GetJobId()] = lj
	}
	leases, err := queryLeases(ctx, tx, `WHERE l.supervisor_id = $1 AND l.state IN ($2, $3)`, sup, stateAssigned, stateActive)
	if err != nil {
		return err
	}
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
			fx.startJob(sup, startJobOf(l))
			continue
		case lj.GetEnded():
			phase := lj.GetPhase()
			if !terminal(phase) {
				phase = pb.LeasePhase_LEASE_PHASE_FAILED
			}
			endLease(l, phase, now, "ended while the supervisor link was down")
		default:
			adoptPhase(l, lj.GetPhase(), now)
			if l.StopAt != 0 {
				fx.stopJob(sup, l.ID, l.StopReason)
			} else {
				c.syncEnd(fx, l) // an extension made while the link was down reaches it too
			}
		}
		if l.State == stateEnded {
			if err := clearCurrentJob(ctx, tx, l); err != nil {
				return err
			}
		}
		if err := saveLease(ctx, tx, l); err != nil {
			return err
		}
		fx.leaseChanged(l.ID)
	}
	for _, lj := range hello.GetLiveJobs() {
		if mine[lj.GetJobId()] || lj.GetEnded() {
			continue
		}
		l, err := getLease(ctx, tx, lj.GetJobId())
		if err != nil {
			return err
		}
		if l != nil && l.State == stateQueued && c.adoptable(ctx, tx, sup, lj) {
			// A lease put back in the queue (its StartJob looked refused) that the
			// supervisor runs after all: it keeps that board.
			c.log.Info("reconcile: queued lease found live on a supervisor: adopted", "supervisor", sup, "job", l.ID, "board", lj.GetBoard())
			l.State, l.Board, l.SupervisorID, l.AssignedAt = stateAssigned, lj.GetBoard(), sup, now
			l.EndsAt = now + l.DurationNS + l.ExtraNS
			adoptPhase(l, lj.GetPhase(), now)
			if err := saveLease(ctx, tx, l); err != nil {
				return err
			}
			fx.leaseChanged(l.ID)
			fx.wake = true
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

// syncEnd tells the supervisor of a READY lease when the lease ends by the coordinator's
// clock (ends_at = begins_at + duration + extensions), with an ExtendJob. The supervisor's
// own bound counts from the lease's start (StartJob.duration), so without this it would
// end the lease before its ends_at, by as long as the lease took to become READY (the
// beforeLease hook). A lease already asked to stop, or past its end (expire stops it),
// gets nothing.
func (c *Coordinator) syncEnd(fx *effects, l *leaseRow) {
	if l.StopAt != 0 || l.EndsAt == 0 || l.Phase != int32(pb.LeasePhase_LEASE_PHASE_READY) || l.SupervisorID == "" {
		return
	}
	remaining := l.EndsAt - c.now().UnixNano()
	if remaining <= 0 {
		return
	}
	fx.extendJob(l.SupervisorID, &pb.ExtendJob{JobId: l.ID, Remaining: durationProto(remaining)})
}

// adoptable reports whether a supervisor's live job may take over its board in the
// coordinator's records: the board is this supervisor's and holds no other lease.
func (c *Coordinator) adoptable(ctx context.Context, tx *sql.Tx, sup string, lj *pb.LiveJob) bool {
	b, err := getBoard(ctx, tx, lj.GetBoard())
	if err != nil || b == nil || b.SupervisorID != sup {
		return false
	}
	busy, err := busyBoards(ctx, tx)
	return err == nil && busy[b.Name] == ""
}

// adoptPhase takes the phase a supervisor reports for a live job.
func adoptPhase(l *leaseRow, phase pb.LeasePhase, now int64) {
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

// endLease marks a lease ended in a terminal phase.
func endLease(l *leaseRow, phase pb.LeasePhase, at int64, msg string) {
	l.State, l.Phase, l.EndedAt = stateEnded, int32(phase), at
	if msg != "" {
		l.StatusMessage = msg
	}
}

// clearCurrentJob forgets an ended lease as its board's current job.
func clearCurrentJob(ctx context.Context, tx *sql.Tx, l *leaseRow) error {
	if l.Board == "" {
		return nil
	}
	_, err := tx.ExecContext(ctx, `UPDATE boards SET current_job = $1 WHERE name = $2 AND current_job = $3`, "", l.Board, l.ID)
	return err
}

func startJobOf(l *leaseRow) *pb.StartJob {
	return &pb.StartJob{
		JobId:      l.ID,
		Board:      l.Board,
		ClientName: l.Client,
		Token:      l.Token,
		Duration:   durationProto(l.DurationNS + l.ExtraNS),
	}
}

// Events stores a batch of a supervisor's events and applies them, in one transaction:
// lease phases, board status, job errors. Then queued leases are assigned to boards that
// became free.
func (c *Coordinator) Events(ctx context.Context, s *link.Session, evs []*pb.Event) (err error) {
	sup := s.ID
	defer func() {
		if err == nil {
			c.logs.stored(evs) // wake the LeaseLog streams of these leases (leaselog.go)
		}
	}()
	return c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		var top int64
		reassign := false // only lease and board changes can free a board
		for _, ev := range evs {
			kind, job, board := eventKind(ev)
			payload, err := protojson.Marshal(eventBody(ev))
			if err != nil {
				return fmt.Errorf("event %d: encode: %w", ev.GetSeq(), err)
			}
			at := c.now()
			if ev.GetTime() != nil {
				at = ev.GetTime().AsTime()
			}
			seq := int64(ev.GetSeq())
			res, err := tx.ExecContext(ctx, `INSERT INTO events (supervisor_id, seq, at_ns, job_id, board, kind, payload)
				VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (supervisor_id, seq) DO NOTHING`,
				sup, seq, at.UnixNano(), job, board, kind, string(payload))
			if err != nil {
				return fmt.Errorf("event %d: store: %w", ev.GetSeq(), err)
			}
			top = max(top, seq)
			if n, err := res.RowsAffected(); err == nil && n == 0 {
				continue // stored before (a replay racing a newer session): applied then
			}
			if board != "" {
				// An event about a board this supervisor did not announce (or another
				// supervisor serves) is kept as evidence but changes nothing.
				owner, err := boardOwner(ctx, tx, board)
				if err != nil {
					return err
				}
				if owner != sup {
					reason := fmt.Sprintf("event %d (%s) about board %q, which supervisor %s did not announce", ev.GetSeq(), kind, board, sup)
					c.log.Warn("refused an event for a board the supervisor does not serve", "supervisor", sup, "seq", ev.GetSeq(), "kind", kind, "board", board, "served_by", owner)
					if c.opts.Audit != nil {
						c.opts.Audit.Refused(sup, board, job, reason)
					}
					continue
				}
			}
			if err := c.applyEvent(ctx, tx, fx, sup, ev, at.UnixNano()); err != nil {
				return fmt.Errorf("event %d (%s): %w", ev.GetSeq(), kind, err)
			}
			switch ev.GetBody().(type) {
			case *pb.Event_StateTransition, *pb.Event_Error, *pb.Event_BoardStatus:
				reassign = true
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE supervisors SET last_seq = CASE WHEN last_seq < $2 THEN $2 ELSE last_seq END,
			last_contact = $3 WHERE id = $1`, sup, top, c.now().UnixNano()); err != nil {
			return err
		}
		if !reassign {
			return nil
		}
		return c.assignQueued(ctx, tx, fx)
	})
}

func eventBody(ev *pb.Event) proto.Message {
	switch b := ev.GetBody().(type) {
	case *pb.Event_StateTransition:
		return b.StateTransition
	case *pb.Event_Error:
		return b.Error
	case *pb.Event_ConsoleLog:
		return b.ConsoleLog
	case *pb.Event_ConsoleGap:
		return b.ConsoleGap
	case *pb.Event_BoardStatus:
		return b.BoardStatus
	case *pb.Event_HookLog:
		return b.HookLog
	}
	return ev
}

// eventKind names an event's kind and the job and board it is about.
func eventKind(ev *pb.Event) (kind, job, board string) {
	switch b := ev.GetBody().(type) {
	case *pb.Event_StateTransition:
		return "state_transition", b.StateTransition.GetJobId(), b.StateTransition.GetBoard()
	case *pb.Event_Error:
		return "error", b.Error.GetJobId(), ""
	case *pb.Event_ConsoleLog:
		return "console_log", b.ConsoleLog.GetJobId(), b.ConsoleLog.GetBoard()
	case *pb.Event_ConsoleGap:
		return "console_gap", b.ConsoleGap.GetJobId(), b.ConsoleGap.GetBoard()
	case *pb.Event_BoardStatus:
		return "board_status", b.BoardStatus.GetCurrentJobId(), b.BoardStatus.GetBoard()
	case *pb.Event_HookLog:
		return "hook_log", b.HookLog.GetJobId(), b.HookLog.GetBoard()
	}
	return "unknown", "", ""
}

func (c *Coordinator) applyEvent(ctx context.Context, tx *sql.Tx, fx *effects, sup string, ev *pb.Event, at int64) error {
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
			if l, err := getLease(ctx, tx, job); err != nil {
				return err
			} else if l != nil && l.State == stateEnded {
				job = ""
			}
		}
		_, err := tx.ExecContext(ctx, `UPDATE boards SET status = $1, health = $2, current_job = $3
			WHERE name = $4 AND supervisor_id = $5`,
			int32(bs.GetStatus()), int32(bs.GetHealth()), job, bs.GetBoard(), sup)
		return err
	}
	return nil // console bytes, gaps and hook lines are only stored
}

func (c *Coordinator) applyTransition(ctx context.Context, tx *sql.Tx, fx *effects, sup string, st *pb.StateTransition, at int64) error {
	to := st.GetTo()
	if st.GetExporterStatus() != jpb.ExporterStatus_EXPORTER_STATUS_UNSPECIFIED && st.GetBoard() != "" {
		if _, err := tx.ExecContext(ctx, `UPDATE boards SET status = $1 WHERE name = $2 AND supervisor_id = $3`,
			int32(st.GetExporterStatus()), st.GetBoard(), sup); err != nil {
			return err
		}
	}
	l, err := getLease(ctx, tx, st.GetJobId())
	if err != nil {
		return err
	}
	if l == nil || l.SupervisorID != sup || l.State == stateQueued {
		if !terminal(to) {
			c.log.Warn("a supervisor runs a job the coordinator did not give it: stopping it", "supervisor", sup, "job", st.GetJobId())
			fx.stopJob(sup, st.GetJobId(), "job unknown to the coordinator")
		}
		return nil
	}
	if l.State == stateEnded {
		if err := clearCurrentJob(ctx, tx, l); err != nil {
			return err
		}
		if !terminal(to) {
			fx.stopJob(sup, l.ID, "the lease has ended")
		} else if at < l.EndedAt {
			// A replayed end that happened before a reconciliation ended the lease:
			// the supervisor's account is the true one.
			l.Phase, l.EndedAt = int32(to), at
			if st.GetStatusMessage() != "" {
				l.StatusMessage = st.GetStatusMessage()
			}
			fx.leaseChanged(l.ID)
			return saveLease(ctx, tx, l)
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
		fx.wake = true
	case terminal(to):
		endLease(l, to, at, "")
		if err := clearCurrentJob(ctx, tx, l); err != nil {
			return err
		}
	case to > pb.LeasePhase_LEASE_PHASE_READY && l.State == stateAssigned:
		l.State = stateActive
	}
	fx.leaseChanged(l.ID)
	return saveLease(ctx, tx, l)
}

func (c *Coordinator) applyJobError(ctx context.Context, tx *sql.Tx, fx *effects, sup string, je *pb.JobErrorEvent, at int64) error {
	l, err := getLease(ctx, tx, je.GetJobId())
	if err != nil {
		return err
	}
	kind := je.GetError().GetKind()
	kindName := jobs.JobErrorKind(kind).String()
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
		} else {
			c.log.Info("board refused the job as busy: lease queued again", "job", l.ID, "board", l.Board, "kind", kindName)
			hold := c.now().Add(c.opts.RefusalHold).UnixNano()
			if _, err := tx.ExecContext(ctx, `UPDATE boards SET hold_until = $1 WHERE name = $2 AND supervisor_id = $3`, hold, l.Board, sup); err != nil {
				return err
			}
			l.StatusMessage = fmt.Sprintf("queued again: board %s refused the job (%s: %s)", l.Board, kindName, desc)
			l.State, l.Board, l.SupervisorID, l.AssignedAt, l.EndsAt = stateQueued, "", "", 0, 0
			fx.wake = true
		}
	default:
		endLease(l, pb.LeasePhase_LEASE_PHASE_FAILED, at, fmt.Sprintf("failed on supervisor %s: %s: %s", sup, kindName, desc))
		if err := clearCurrentJob(ctx, tx, l); err != nil {
			return err
		}
		fx.stopJob(sup, l.ID, "the job failed: "+kindName) // no-op for a job that is gone
	}
	fx.leaseChanged(l.ID)
	return saveLease(ctx, tx, l)
}

func phaseName(p pb.LeasePhase) string {
	return strings.TrimPrefix(p.String(), "LEASE_PHASE_")
}

// Disconnected records that a supervisor's stream ended. Its leases stay as they are;
// its boards show OFFLINE once it has been gone longer than the grace period.
func (c *Coordinator) Disconnected(s *link.Session, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sessions[s.ID] != s {
		return // a newer session replaced it, or Connected refused it
	}
	delete(c.sessions, s.ID)
	select {
	case <-c.done:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, dbErr := c.db.ExecContext(ctx, `UPDATE supervisors SET connected = $1, last_contact = $2 WHERE id = $3`,
		false, c.now().UnixNano(), s.ID); dbErr != nil {
		c.log.Error("record supervisor disconnect", "supervisor", s.ID, "error", dbErr)
	}
	c.farm.notify() // farmwatch.go
	c.log.Info("supervisor gone; its leases stay", "supervisor", s.ID, "reason", errString(err))
}

func errString(err error) string {
	if err == nil {
		return "stream closed"
	}
	return err.Error()
}

// reconcileAll is the periodic reconciliation with every connected supervisor, by its
// last known live set (the unended leases assigned to it): StopJob again for leases that
// should end, StartJob again for assigned jobs that never reported a phase.
func (c *Coordinator) reconcileAll(ctx context.Context) error {
	return c.update(ctx, func(tx *sql.Tx, fx *effects) error {
		fx.quiet = true
		now := c.now()
		leases, err := queryLeases(ctx, tx, `WHERE l.state IN ($1, $2)`, stateAssigned, stateActive)
		if err != nil {
			return err
		}
		for _, l := range leases {
			if c.sessions[l.SupervisorID] == nil {
				continue
			}
			switch {
			case l.StopAt != 0:
				fx.stopJob(l.SupervisorID, l.ID, l.StopReason)
			case l.State == stateAssigned && l.Phase <= int32(pb.LeasePhase_LEASE_PHASE_CREATED) &&
				now.Sub(time.Unix(0, l.AssignedAt)) >= c.opts.ReconcileInterval:
				c.log.Debug("reconcile: job never reported a phase: StartJob sent again", "supervisor", l.SupervisorID, "job", l.ID)
				fx.startJob(l.SupervisorID, startJobOf(l))
			}
		}
		return nil
	})
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
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range gone {
		if !c.goneLogged[id] && c.sessions[id] == nil {
			c.goneLogged[id] = true
			c.farm.notify() // its boards show OFFLINE from now on (farmwatch.go)
			c.log.Warn("supervisor gone longer than the grace period: its boards show OFFLINE; its leases stay", "supervisor", id, "grace", c.opts.Grace)
		}
	}
}

// boardOwner returns the supervisor serving board ("" if none announced it).
func boardOwner(ctx context.Context, tx *sql.Tx, board string) (string, error) {
	var owner string
	err := tx.QueryRowContext(ctx, `SELECT supervisor_id FROM boards WHERE name = $1`, board).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return owner, err
}
