package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/boardvisor/boardvisor/jobs"
)

func jobID(n int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", n) }

func openT(t testing.TB, path string, opts Options) *Journal {
	t.Helper()
	j, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := j.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return j
}

func dbPath(t testing.TB) string { return filepath.Join(t.TempDir(), "journal.db") }

// fullRecord has every field set to something other than its zero value.
func fullRecord(id string) jobs.Record {
	base := time.Date(2031, 5, 17, 10, 20, 30, 123456789, time.UTC)
	return jobs.Record{
		Spec: jobs.Spec{
			JobID: id, Board: "rpi-4 #3 «lab»", Client: "alice@example.com",
			Duration:  90 * time.Minute,
			Before:    &jobs.HookPolicy{Timeout: 2 * time.Minute, OnFailure: jobs.PolicyExit},
			After:     &jobs.HookPolicy{Timeout: 45 * time.Second, OnFailure: jobs.PolicyEndLease},
			TokenHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			Params:    map[string]string{"image": "rpi-os-2031.img", "kernel args": "console=ttyS0"},
			Image: &jobs.Image{Digest: "sha256:" + strings.Repeat("5e", 32), Locations: []jobs.ImageLocation{
				{Registry: "127.0.0.1:5000", Repository: "boards/rpi4"}, {Registry: "mirror.lab", Repository: "rpi4"}}},
			FetchTimeout: 3 * time.Minute, ProvisionTimeout: time.Minute,
		},
		State: jobs.State{
			Phase: jobs.PhaseAfterLease, EndRequested: true, EndReason: jobs.EndCoordinator,
			Acquired: true, HookRunning: jobs.HookAfter, AfterStarted: true, HookDraining: true,
			BeforeFailed: true, AfterFailed: true, Quarantined: true,
			Failure: "beforeLease hook exited with status 3",
			Stage:   jobs.StageProvisioning, ImageFetched: true, Provisioned: true, ImageFailed: true,
		},
		Deadlines: map[jobs.Timer]time.Time{
			jobs.TimerLease:      base,
			jobs.TimerBeforeHook: base.Add(time.Second),
			jobs.TimerAfterHook:  base.Add(-time.Hour).In(time.FixedZone("X", 3600)),
			jobs.TimerRelease:    base.Add(time.Nanosecond),
			jobs.TimerFetch:      base.Add(time.Minute),
			jobs.TimerProvision:  base.Add(2 * time.Minute),
		},
		Hook: &jobs.HookRun{Kind: jobs.HookAfter, Dir: "/var/lib/boardvisor/spool/" + id,
			Pid: 4242, StartTime: 1<<63 + 12345, Offset: 1 << 40},
		Reported: []jobs.Transition{
			{Step: 1, From: jobs.PhaseCreated, To: jobs.PhaseStarting, Status: jobs.StatusAvailable, Message: "waiting for the board"},
			{Step: 2, From: jobs.PhaseStarting, To: jobs.PhaseStarting, Status: jobs.StatusAvailable, Stage: jobs.StageAllocating},
			{Step: 3, From: jobs.PhaseStarting, To: jobs.PhaseBeforeLease, Status: jobs.StatusBeforeLeaseHook},
		},
	}
}

func save(t testing.TB, j *Journal, r jobs.Record) {
	t.Helper()
	if err := j.SaveLease(r.Spec, r.State, r.Deadlines, r.Reported...); err != nil {
		t.Fatalf("SaveLease: %v", err)
	}
	if r.Hook != nil {
		if err := j.SaveHook(r.Spec.JobID, r.Hook); err != nil {
			t.Fatalf("SaveHook: %v", err)
		}
	}
}

// sameRecord compares records, deadlines by instant.
func sameRecord(t testing.TB, got, want jobs.Record) {
	t.Helper()
	gd, wd := got.Deadlines, want.Deadlines
	got.Deadlines, want.Deadlines = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("record:\n got %s\nwant %s", show(got), show(want))
	}
	if gd == nil {
		t.Errorf("deadlines: got nil map")
	}
	if len(gd) != len(wd) {
		t.Errorf("deadlines: got %v, want %v", gd, wd)
	}
	for tm, w := range wd {
		if g, ok := gd[tm]; !ok || !g.Equal(w) {
			t.Errorf("deadline %s: got %v, want %v", tm, g, w)
		}
	}
}

func show(r jobs.Record) string {
	return fmt.Sprintf("%+v before %+v after %+v %+v hook %+v", r.Spec, deref(r.Spec.Before), deref(r.Spec.After), r.State, deref(r.Hook))
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestRoundTripThroughReopen(t *testing.T) {
	path := dbPath(t)
	j := openT(t, path, Options{})
	full := fullRecord(jobID(1))
	bare := jobs.Record{Spec: jobs.Spec{JobID: jobID(2), Board: "b", Duration: time.Second},
		State: jobs.State{Phase: jobs.PhaseStarting}, Deadlines: map[jobs.Timer]time.Time{}}
	save(t, j, full)
	save(t, j, bare)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode: %v %v, want 0600", fi.Mode(), err)
	}

	j = openT(t, path, Options{})
	got, ok, err := j.Load(full.Spec.JobID)
	if err != nil || !ok {
		t.Fatalf("Load: %v %v", ok, err)
	}
	sameRecord(t, got, full)
	recs, damaged, err := j.LoadAll()
	if err != nil || len(damaged) != 0 {
		t.Fatalf("LoadAll: %v %v", damaged, err)
	}
	if len(recs) != 2 {
		t.Fatalf("LoadAll: %d records, want 2", len(recs))
	}
	sameRecord(t, recs[0], full)
	sameRecord(t, recs[1], bare)
	if _, ok, err := j.Load(jobID(3)); ok || err != nil {
		t.Errorf("Load of unknown job: %v %v", ok, err)
	}
}

func TestLeaseAndHookDoNotClobber(t *testing.T) {
	j := openT(t, dbPath(t), Options{NoSync: true})
	r := fullRecord(jobID(1))
	id := r.Spec.JobID
	save(t, j, r)

	// SaveLease keeps the hook run.
	r.State = jobs.State{Phase: jobs.PhaseReleasing, Acquired: true}
	r.Deadlines = map[jobs.Timer]time.Time{jobs.TimerRelease: time.Unix(1e9, 0)}
	if err := j.SaveLease(r.Spec, r.State, r.Deadlines, r.Reported...); err != nil {
		t.Fatal(err)
	}
	got, _, _ := j.Load(id)
	sameRecord(t, got, r)

	// SaveHook keeps the lease part.
	r.Hook = &jobs.HookRun{Kind: jobs.HookBefore, Dir: "/d", Pid: 7, StartTime: 8, Offset: 9}
	if err := j.SaveHook(id, r.Hook); err != nil {
		t.Fatal(err)
	}
	got, _, _ = j.Load(id)
	sameRecord(t, got, r)

	// SetHookOffset changes only the offset.
	if err := j.SetHookOffset(id, 12345); err != nil {
		t.Fatal(err)
	}
	r.Hook.Offset = 12345
	got, _, _ = j.Load(id)
	sameRecord(t, got, r)

	// SaveHook(nil) clears the hook run only; SetHookOffset without one does nothing.
	if err := j.SaveHook(id, nil); err != nil {
		t.Fatal(err)
	}
	if err := j.SetHookOffset(id, 99); err != nil {
		t.Fatal(err)
	}
	r.Hook = nil
	got, _, _ = j.Load(id)
	sameRecord(t, got, r)

	// Delete removes both parts.
	if err := j.SaveHook(id, &jobs.HookRun{Kind: jobs.HookAfter, Pid: 1}); err != nil {
		t.Fatal(err)
	}
	if err := j.Delete(id); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := j.Load(id); ok || err != nil {
		t.Errorf("Load after Delete: %v %v", ok, err)
	}
	recs, damaged, err := j.LoadAll()
	if len(recs)+len(damaged) != 0 || err != nil {
		t.Errorf("LoadAll after Delete: %v %v %v", recs, damaged, err)
	}
	if err := j.Delete(id); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	// A lease saved again after a hook-only write is whole.
	if err := j.SaveHook(jobID(5), &jobs.HookRun{Kind: jobs.HookBefore, Pid: 3}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := j.Load(jobID(5)); ok || err != nil {
		t.Errorf("Load of a hook without lease: %v %v", ok, err)
	}
}

func TestConcurrentWritersAreGroupCommitted(t *testing.T) {
	const goroutines, perG = 64, 50
	path := dbPath(t)
	j := openT(t, path, Options{}) // real fsync
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			id := jobID(g)
			spec := jobs.Spec{JobID: id, Board: "board-" + strconv.Itoa(g), Duration: time.Hour}
			for i := range perG {
				var err error
				switch i % 5 {
				case 1:
					err = j.SaveHook(id, &jobs.HookRun{Kind: jobs.HookBefore, Pid: g + 1, StartTime: uint64(i)})
				case 3:
					err = j.SetHookOffset(id, int64(i))
				default:
					err = j.SaveLease(spec, jobs.State{Phase: jobs.PhaseReady, Failure: strconv.Itoa(i)},
						map[jobs.Timer]time.Time{jobs.TimerLease: time.Unix(int64(i), 0)})
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := j.Stats()
	t.Logf("%d writes in %d commits (%.1f writes/commit)", st.Writes, st.Commits, float64(st.Writes)/float64(st.Commits))
	if st.Writes != goroutines*perG {
		t.Errorf("Stats.Writes = %d, want %d", st.Writes, goroutines*perG)
	}
	if st.Commits*4 > st.Writes {
		t.Errorf("Stats.Commits = %d for %d writes: writes are not grouped", st.Commits, st.Writes)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	j = openT(t, path, Options{})
	recs, damaged, err := j.LoadAll()
	if err != nil || len(damaged) != 0 || len(recs) != goroutines {
		t.Fatalf("LoadAll: %d records, damaged %v, %v", len(recs), damaged, err)
	}
	for g, r := range recs {
		if r.Spec.JobID != jobID(g) || r.State.Failure != strconv.Itoa(perG-1) ||
			r.Hook == nil || r.Hook.Pid != g+1 || r.Hook.StartTime != 46 || r.Hook.Offset != 48 {
			t.Errorf("record %d: %+v hook %+v", g, r, deref(r.Hook))
		}
	}
}

func TestMaxBatch(t *testing.T) {
	j := openT(t, dbPath(t), Options{NoSync: true, MaxBatch: 1})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 10 {
				if err := j.Delete(jobID(g)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if st := j.Stats(); st.Commits != st.Writes || st.Writes != 80 {
		t.Errorf("MaxBatch 1: %+v, want 80 commits of one write", st)
	}
}

func TestCloseCommitsQueuedWrites(t *testing.T) {
	path := dbPath(t)
	j, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	saved := map[string]bool{}
	for g := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				id := jobID(g*1000 + i)
				err := j.SaveLease(jobs.Spec{JobID: id, Board: "b"}, jobs.State{Phase: jobs.PhaseCreated}, nil)
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				saved[id] = true
				mu.Unlock()
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	// Every write that returned nil is there.
	j = openT(t, path, Options{})
	recs, _, err := j.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, r := range recs {
		have[r.Spec.JobID] = true
	}
	for id := range saved {
		if !have[id] {
			t.Errorf("write of %s returned nil but is not in the journal", id)
		}
	}
	t.Logf("%d writes acknowledged, %d records", len(saved), len(recs))
}

func TestCallsAfterClose(t *testing.T) {
	path := dbPath(t)
	j, err := Open(path, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	id := jobID(1)
	_, _, loadErr := j.Load(id)
	_, _, loadAllErr := j.LoadAll()
	for name, err := range map[string]error{
		"SaveLease":     j.SaveLease(jobs.Spec{JobID: id}, jobs.State{Phase: jobs.PhaseReady}, nil),
		"SaveHook":      j.SaveHook(id, nil),
		"SetHookOffset": j.SetHookOffset(id, 1),
		"Delete":        j.Delete(id),
		"Load":          loadErr,
		"LoadAll":       loadAllErr,
		"Close":         j.Close(),
	} {
		if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "journal "+path+": ") {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
}

func TestErrorsCarryContext(t *testing.T) {
	path := dbPath(t)
	j := openT(t, path, Options{NoSync: true})
	id := jobID(7)
	err := j.SaveLease(jobs.Spec{JobID: id}, jobs.State{Phase: 42}, nil)
	if want := "journal " + path + ": save lease " + id + ": unknown phase 42"; err == nil || err.Error() != want {
		t.Errorf("SaveLease with a bad phase: %v, want %q", err, want)
	}
	err = j.SaveHook(id, &jobs.HookRun{})
	if want := "journal " + path + ": save hook of " + id + ": hook run has no hook kind"; err == nil || err.Error() != want {
		t.Errorf("SaveHook without kind: %v, want %q", err, want)
	}
	if err := j.SaveLease(jobs.Spec{}, jobs.State{Phase: jobs.PhaseReady}, nil); err == nil {
		t.Error("SaveLease without job ID: no error")
	}
}

func TestSecondOpenFailsFastWhenLocked(t *testing.T) {
	path := dbPath(t)
	openT(t, path, Options{NoSync: true})
	start := time.Now()
	j2, err := Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if err == nil {
		j2.Close()
		t.Fatal("second Open succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Open took %s", d)
	}
	if want := "journal " + path + " is locked by another boardvisor process"; !strings.HasPrefix(err.Error(), want) || !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: %v, want %q (wrapping ErrLocked)", err, want)
	}
}

// rawUpdate changes a closed journal file behind the package's back.
func rawUpdate(t *testing.T, path string, fn func(tx *bbolt.Tx) error) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownVersion(t *testing.T) {
	path := dbPath(t)
	j := openT(t, path, Options{NoSync: true})
	save(t, j, fullRecord(jobID(1)))
	j.Close()
	rawUpdate(t, path, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyVersion, []byte("2"))
	})
	_, err := Open(path, Options{})
	var de *DamagedError
	if !errors.As(err, &de) || de.Path != path || !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("Open: %v, want a *DamagedError wrapping ErrUnknownVersion", err)
	}
	if want := `journal ` + path + `: format version "2" is unknown (this boardvisor reads version 1)`; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

func TestNotAJournal(t *testing.T) {
	path := dbPath(t)
	rawUpdate(t, path, func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("something else"))
		return err
	})
	_, err := Open(path, Options{})
	var de *DamagedError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "no format version") {
		t.Fatalf("Open of another bbolt file: %v", err)
	}
}

func TestDamagedFile(t *testing.T) {
	// A real journal with enough records for several pages.
	good := dbPath(t)
	j := openT(t, good, Options{NoSync: true})
	for i := range 300 {
		save(t, j, fullRecord(jobID(i)))
	}
	j.Close()
	content, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	zeroedData := append([]byte(nil), content...)
	clear(zeroedData[2*4096:])
	// The current meta page (the one with the higher txid) names the freelist page.
	meta := func(i int) (freelist, txid uint64) {
		m := content[i*4096+16:]
		return binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[48:])
	}
	fl0, tx0 := meta(0)
	fl1, tx1 := meta(1)
	if tx1 > tx0 {
		fl0 = fl1
	}
	badFreelist := append([]byte(nil), content...)
	clear(badFreelist[fl0*4096 : fl0*4096+16])
	scribbled := append([]byte(nil), content...)
	for i := 2 * 4096; i < len(scribbled); i += 97 {
		scribbled[i] = 0xff
	}

	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"garbage", garbage},
		{"tiny", []byte("not a database")},
		{"first page only", content[:4096]},
		{"half", content[:len(content)/2]},
		{"quarter", content[:len(content)/4]},
		{"zeroed data pages", zeroedData},
		{"scribbled data pages", scribbled},
		{"freelist page", badFreelist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := dbPath(t)
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			j, err := Open(path, Options{})
			if err == nil {
				// Damage that does not show in the file's structure must show in the records.
				recs, damaged, err := j.LoadAll()
				j.Close()
				if err == nil && len(damaged) == 0 && len(recs) == 300 {
					t.Fatalf("damaged file opened and loaded whole")
				}
				t.Logf("opened; LoadAll: %d records, %d damaged, %v", len(recs), len(damaged), err)
				return
			}
			var de *DamagedError
			if !errors.As(err, &de) || de.Path != path || !strings.HasPrefix(err.Error(), "journal "+path+": ") {
				t.Fatalf("Open: %v (%T), want a *DamagedError naming %s", err, err, path)
			}
			t.Logf("Open: %v", err)
			// A failed Open leaves no lock behind, even when bbolt panicked.
			if _, err := Open(path, Options{LockTimeout: 50 * time.Millisecond}); errors.Is(err, ErrLocked) || !errors.As(err, &de) {
				t.Errorf("second Open: %v", err)
			}
			moved, err := Recover(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(moved, path+".damaged-") {
				t.Errorf("moved to %s", moved)
			}
			if b, err := os.ReadFile(moved); err != nil || len(b) != len(tc.data) {
				t.Errorf("moved file: %d bytes, %v", len(b), err)
			}
			j = openT(t, path, Options{})
			recs, damaged, err := j.LoadAll()
			if err != nil || len(recs)+len(damaged) != 0 {
				t.Errorf("fresh journal: %v %v %v", recs, damaged, err)
			}
		})
	}
}

func TestRecoverPicksAFreeName(t *testing.T) {
	path := dbPath(t)
	var moved []string
	for range 3 {
		if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		m, err := Recover(path)
		if err != nil {
			t.Fatal(err)
		}
		moved = append(moved, m)
	}
	if moved[0] == moved[1] || moved[1] == moved[2] || moved[0] == moved[2] {
		t.Errorf("Recover reused a name: %v", moved)
	}
	if _, err := Recover(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Recover of a missing file: %v", err)
	}
}

func TestEmptyFileIsFresh(t *testing.T) {
	// A crash right after the file was created leaves it empty: that is a fresh journal.
	path := dbPath(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	j := openT(t, path, Options{NoSync: true})
	save(t, j, fullRecord(jobID(1)))
}

func TestDamagedRecords(t *testing.T) {
	path := dbPath(t)
	j := openT(t, path, Options{NoSync: true})
	for i := range 5 {
		save(t, j, fullRecord(jobID(i)))
	}
	j.Close()
	rawUpdate(t, path, func(tx *bbolt.Tx) error {
		leases, hooks := tx.Bucket(bucketLeases), tx.Bucket(bucketHooks)
		for _, kv := range []struct {
			b    *bbolt.Bucket
			k, v string
		}{
			{leases, jobID(1), `{"v":1,"spec":{"job":`},                 // truncated JSON
			{hooks, jobID(2), `{"v":1,"kind":"sideways"}`},              // unknown hook kind
			{leases, jobID(3), mustLease(t, jobID(9))},                  // another job's record
			{hooks, jobID(8), `{"v":1,"kind":"beforeLease","pid":1}`},   // hook without lease
			{leases, jobID(6), `{"v":2,"spec":{"job":"x","colour":1}}`}, // future record version
		} {
			if err := kv.b.Put([]byte(kv.k), []byte(kv.v)); err != nil {
				return err
			}
		}
		return nil
	})

	j = openT(t, path, Options{NoSync: true})
	recs, damaged, err := j.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range recs {
		ids = append(ids, r.Spec.JobID)
	}
	if want := []string{jobID(0), jobID(4)}; fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Errorf("restored %v, want %v", ids, want)
	}
	sameRecord(t, recs[0], fullRecord(jobID(0)))
	wantDamaged := []struct{ id, reason string }{
		{jobID(1), "lease record: unexpected EOF"},
		{jobID(2), `hook record: unknown hook kind "sideways"`},
		{jobID(3), `lease record is for job "` + jobID(9) + `"`},
		{jobID(6), "lease record: record version 2 is unknown (this boardvisor reads version 1)"},
		{jobID(8), "hook run recorded without a lease record"},
	}
	if len(damaged) != len(wantDamaged) {
		t.Fatalf("damaged: %v", damaged)
	}
	for i, w := range wantDamaged {
		if damaged[i].JobID != w.id || damaged[i].Reason != w.reason {
			t.Errorf("damaged[%d] = %+v, want %s: %s", i, damaged[i], w.id, w.reason)
		}
	}
	if _, _, err := j.Load(jobID(1)); err == nil || !strings.Contains(err.Error(), "journal "+path+": load "+jobID(1)+": lease record") {
		t.Errorf("Load of a damaged record: %v", err)
	}
	// A damaged hook record fails SetHookOffset for that lease only; SaveHook repairs it.
	if err := j.SetHookOffset(jobID(2), 5); err == nil {
		t.Error("SetHookOffset on a damaged hook record: no error")
	}
	if err := j.SetHookOffset(jobID(0), 5); err != nil {
		t.Error(err)
	}
	if err := j.SaveHook(jobID(2), &jobs.HookRun{Kind: jobs.HookBefore, Pid: 2}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := j.Load(jobID(2)); !ok || err != nil {
		t.Errorf("Load after repair: %v %v", ok, err)
	}
}

func mustLease(t *testing.T, id string) string {
	t.Helper()
	r := fullRecord(id)
	b, err := encodeLease(r.Spec, r.State, r.Deadlines, r.Reported)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
