// Package recording records a board's console to files, always on: the board actor
// hands every chunk its console driver reads to Recorder.Write.
//
// # Files
//
// A board's recording lives in <stateDir>/console/<board>/, one file per stretch of
// console, named
//
//	<UTC date>.<sequence>.board.log          bytes outside any lease
//	<UTC date>.<sequence>.lease-<id>.log     bytes while lease <id> was current
//
// for instance 2024-05-01.000041.lease-5f0c….log. A new file starts when a lease starts
// or ends (StartLease, EndLease: the lease's file holds everything from the start of its
// before-lease hook to the end of its after-lease hook, as the board actor calls them),
// when the UTC date changes, when a file reaches a quarter of the size cap, and when the
// Recorder is reopened. The sequence number grows by one per file and per board, so the
// names sort in the order the bytes were written; ReadLease reads a lease's files in
// that order, across day boundaries and restarts.
//
// # Size cap and retention
//
// Before each write the Recorder deletes the board's oldest files (never the one it is
// writing) until the new bytes fit under Options.MaxBytes; files are cut at a quarter of
// the cap, so the recording stays within the cap but for the file being written. Files
// whose day ended more than Options.Retention ago are deleted when the Recorder opens,
// when it starts a new file, and on Prune. Deletion takes the oldest bytes first, so a
// long lease may lose its beginning; ReadLease returns what is left.
//
// # Full disk
//
// The recording is the first thing given up when the state directory runs out of space
// (docs/full-disk.md): while Options.Disk says the directory is low or full, and after a
// write fails with ENOSPC or EDQUOT, Write drops the bytes and counts them instead (the
// call succeeds: the loss is the written policy, not an error to log per chunk). Each
// stretch of dropped bytes is a Gap: the file and offset where they belong, the lease,
// how many bytes and when. When space returns the gaps are appended to the board's
// gaps.jsonl (GapsFile, one JSON object per line, fsynced) before anything else is
// written, and recording goes on where it stopped. Without a Monitor a write is tried
// again every ProbeEvery.
//
// # Durability
//
// Files are append-only. Write hands the bytes to the kernel at once (no buffering in
// the process), so a crash of the daemon loses nothing it had been given; there is no
// fsync per write (a console at 115200 baud writes a few hundred times a second). Each
// file is fsynced when it is closed (at a cut and on Close), so a power loss of the host
// loses at most the file being written since its last cut.
package recording

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/boardvisor/boardvisor/internal/diskspace"
)

// Defaults of the Options' zero fields.
const (
	DefaultMaxBytes  = 256 << 20 // 256 MiB per board
	DefaultRetention = 30 * 24 * time.Hour
	// ProbeEvery is how often a Recorder without a Monitor tries writing again after the
	// disk was full.
	ProbeEvery = 5 * time.Second
	// GapsFile is the name of a board's record of dropped bytes, in its directory.
	GapsFile = "gaps.jsonl"
)

// Options configure a Recorder.
type Options struct {
	// StateDir is the daemon's state directory; files go to StateDir/console/Board/.
	StateDir string
	// Board is the board's name: letters, digits, '.', '_' and '-', not starting with '.'.
	Board string
	// MaxBytes caps the size of the board's recording (default 256 MiB).
	MaxBytes int64
	// Retention is how long files are kept after their day ends (default 30 days).
	Retention time.Duration
	// Now is the clock (default time.Now); the date in file names is Now().UTC()'s.
	Now func() time.Time
	// Disk watches the state directory's space: while it is low or full, nothing is
	// written and the bytes are counted as gaps. Nil: only failed writes stop the
	// recording.
	Disk *diskspace.Monitor
	// Probe is how often writing is tried again after a full disk, without Disk
	// (default ProbeEvery).
	Probe time.Duration
}

// Gap is a stretch of console bytes the recording dropped because the disk was full.
type Gap struct {
	// File is the recording file the bytes belong in ("" if none was open, e.g. a lease
	// that started while the disk was full); Offset is where in it.
	File   string `json:"file"`
	Offset int64  `json:"offset"`
	// Lease is the lease that was current, "" outside leases.
	Lease string `json:"lease,omitempty"`
	// Bytes is how many bytes were dropped.
	Bytes int64 `json:"bytes"`
	// From and To are when the first and the last of them arrived.
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
}

// Recorder records one board's console. Its methods are safe for concurrent use.
type Recorder struct {
	opts Options
	dir  string

	mu    sync.Mutex
	files []File // the board's files, oldest first, with their sizes
	total int64  // sum of their sizes
	seq   int    // the next file's sequence number
	lease string // the current lease, "" outside leases
	cur   *os.File
	curI  int // index in files of cur, when cur != nil
	err   error

	gapping   bool  // bytes are being dropped: gap is the current stretch
	gap       Gap   //
	pending   []Gap // finished stretches not yet in GapsFile
	lastProbe time.Time
	dropped   int64
}

// File is one file of a board's recording.
type File struct {
	// Name is the file's name within the board's directory.
	Name string
	// Date is the UTC date the file was started ("2006-01-02").
	Date string
	// Seq is the file's sequence number.
	Seq int
	// Lease is the lease the file belongs to, "" for the board's own bytes.
	Lease string
	// Size is its size in bytes.
	Size int64
}

var (
	namePattern  = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]*$`)
	leasePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	filePattern  = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2})\.(\d{6,})\.(board|lease-([A-Za-z0-9][A-Za-z0-9._-]*))\.log$`)
)

const dateLayout = "2006-01-02"

// Dir returns the directory of board's recording under stateDir.
func Dir(stateDir, board string) string {
	return filepath.Join(stateDir, "console", board)
}

// New opens board's recording, creating its directory, and applies the retention.
func New(opts Options) (*Recorder, error) {
	if !namePattern.MatchString(opts.Board) {
		return nil, fmt.Errorf("console recording: invalid board name %q", opts.Board)
	}
	if opts.StateDir == "" {
		return nil, errors.New("console recording: no state directory")
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Probe <= 0 {
		opts.Probe = ProbeEvery
	}
	r := &Recorder{opts: opts, dir: Dir(opts.StateDir, opts.Board)}
	if err := os.MkdirAll(r.dir, 0o750); err != nil {
		return nil, fmt.Errorf("console recording for board %s: %w", opts.Board, err)
	}
	files, err := Files(opts.StateDir, opts.Board)
	if err != nil {
		return nil, err
	}
	r.files = files
	for _, f := range files {
		r.total += f.Size
		r.seq = max(r.seq, f.Seq+1)
	}
	r.pruneLocked()
	return r, nil
}

// Files lists the files of board's recording under stateDir, oldest first. Files that
// do not look like recording files are left out.
func Files(stateDir, board string) ([]File, error) {
	if !namePattern.MatchString(board) {
		return nil, fmt.Errorf("console recording: invalid board name %q", board)
	}
	entries, err := os.ReadDir(Dir(stateDir, board))
	if err != nil {
		return nil, fmt.Errorf("console recording for board %s: %w", board, err)
	}
	var files []File
	for _, e := range entries {
		m := filePattern.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // deleted meanwhile
		}
		seq, _ := strconv.Atoi(m[2])
		files = append(files, File{Name: e.Name(), Date: m[1], Seq: seq, Lease: m[4], Size: info.Size()})
	}
	slices.SortFunc(files, func(a, b File) int { return cmp.Compare(a.Seq, b.Seq) })
	return files, nil
}

// Write records p in the current file: the current lease's, or else the board's. A new
// file is started first if the date changed or the file is full, and old files are
// deleted to keep under the size cap. While the disk is full the bytes are dropped and
// counted (see Gap); Write then returns len(p) and no error, except for the write that
// found the disk full when there is no Monitor to say so.
func (r *Recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if r.pausedLocked() {
		r.dropLocked(int64(len(p)))
		return len(p), nil
	}
	if err := r.flushGapsLocked(); err != nil {
		r.dropLocked(int64(len(p)))
		return len(p), nil
	}
	if err := r.ensureFileLocked(int64(len(p))); err != nil {
		if diskspace.IsFull(err) {
			return len(p), r.fullLocked(err, int64(len(p)))
		}
		return 0, err
	}
	r.makeRoomLocked(int64(len(p)))
	n, err := r.cur.Write(p)
	r.files[r.curI].Size += int64(n)
	r.total += int64(n)
	if err != nil {
		if diskspace.IsFull(err) {
			return len(p), r.fullLocked(err, int64(len(p)-n))
		}
		return n, fmt.Errorf("console recording for board %s: %w", r.opts.Board, err)
	}
	return n, nil
}

// Dropped returns how many bytes the recording dropped for lack of space since New.
func (r *Recorder) Dropped() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped
}

// pausedLocked tells whether writing is given up for now: the disk is low or full.
func (r *Recorder) pausedLocked() bool {
	if r.opts.Disk != nil {
		return r.opts.Disk.Low()
	}
	return r.gapping && time.Since(r.lastProbe) < r.opts.Probe
}

// fullLocked starts dropping bytes after err (the disk is full), n of them already. It
// returns the error to report: none when a Monitor reports it.
func (r *Recorder) fullLocked(err error, n int64) error {
	first := !r.gapping
	r.dropLocked(n)
	r.lastProbe = time.Now()
	if r.opts.Disk != nil {
		r.opts.Disk.Failed(err)
		return nil
	}
	if first {
		return fmt.Errorf("console recording for board %s stopped, the disk is full (bytes dropped are counted in %s): %w", r.opts.Board, GapsFile, err)
	}
	return nil
}

// dropLocked counts n dropped bytes in the current gap, starting one if needed.
func (r *Recorder) dropLocked(n int64) {
	now := r.opts.Now()
	if !r.gapping {
		r.gapping = true
		r.gap = Gap{Lease: r.lease, From: now}
		if r.cur != nil {
			r.gap.File, r.gap.Offset = r.files[r.curI].Name, r.files[r.curI].Size
		}
	}
	r.gap.Bytes += n
	r.gap.To = now
	r.dropped += n
}

// endGapLocked finishes the current gap (it goes to GapsFile when space allows).
func (r *Recorder) endGapLocked() {
	if r.gapping {
		r.pending = append(r.pending, r.gap)
		r.gapping = false
	}
}

// flushGapsLocked ends the current gap and appends the finished ones to GapsFile.
func (r *Recorder) flushGapsLocked() error {
	r.endGapLocked()
	if len(r.pending) == 0 {
		return nil
	}
	var b []byte
	for _, g := range r.pending {
		line, _ := json.Marshal(g)
		b = append(append(b, line...), '\n')
	}
	f, err := os.OpenFile(filepath.Join(r.dir, GapsFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err == nil {
		var st os.FileInfo
		if st, err = f.Stat(); err == nil {
			if _, err = f.Write(b); err == nil {
				err = f.Sync()
			} else {
				_ = f.Truncate(st.Size()) // no half line
			}
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		r.lastProbe = time.Now()
		if r.opts.Disk != nil {
			r.opts.Disk.Failed(err)
		}
		return err
	}
	r.pending = nil
	return nil
}

// Gaps returns the gaps recorded for board under stateDir (in GapsFile), oldest first.
func Gaps(stateDir, board string) ([]Gap, error) {
	if !namePattern.MatchString(board) {
		return nil, fmt.Errorf("console recording: invalid board name %q", board)
	}
	b, err := os.ReadFile(filepath.Join(Dir(stateDir, board), GapsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("console recording gaps of board %s: %w", board, err)
	}
	var gaps []Gap
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var g Gap
		if err := json.Unmarshal(line, &g); err != nil {
			return gaps, fmt.Errorf("console recording gaps of board %s: %w", board, err)
		}
		gaps = append(gaps, g)
	}
	return gaps, nil
}

// StartLease makes lease id current: what is written from now on goes to its files,
// until EndLease(id). Starting a lease while another one is current ends that one first.
// The lease's first file is created at once, so that ReadLease finds a lease that has
// written nothing yet.
func (r *Recorder) StartLease(id string) error {
	if !leasePattern.MatchString(id) {
		return fmt.Errorf("console recording for board %s: invalid lease ID %q", r.opts.Board, id)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if r.lease == id && r.cur != nil {
		return nil
	}
	if err := r.cutLocked(); err != nil {
		return err
	}
	r.lease = id
	if r.gapping || r.pausedLocked() {
		return nil // the lease's first file is made when there is space again
	}
	if err := r.ensureFileLocked(0); err != nil {
		if diskspace.IsFull(err) {
			r.lastProbe = time.Now()
			r.gapping = true
			r.gap = Gap{Lease: id, From: r.opts.Now(), To: r.opts.Now()}
			if r.opts.Disk != nil {
				r.opts.Disk.Failed(err)
				return nil
			}
		}
		return err
	}
	return nil
}

// EndLease ends lease id: what is written from now on goes to the board's files. Ending
// a lease that is not current is a no-op.
func (r *Recorder) EndLease(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if r.lease != id {
		return nil
	}
	err := r.cutLocked()
	r.lease = ""
	return err
}

// Lease returns the current lease, "" if none.
func (r *Recorder) Lease() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease
}

// Prune applies the retention now (the Recorder also does it when it opens and at every
// new file; a board that stays quiet for days needs a periodic Prune). A file that
// cannot be deleted is kept and tried again next time.
func (r *Recorder) Prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pruneLocked()
}

// Close closes the current file (fsynced) and records the gaps not yet recorded. Later
// calls fail.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil
	}
	err := r.cutLocked()
	if gerr := r.flushGapsLocked(); gerr != nil && err == nil {
		var n int64
		for _, g := range r.pending {
			n += g.Bytes
		}
		err = fmt.Errorf("console recording for board %s: %d dropped bytes could not be recorded in %s: %w", r.opts.Board, n, GapsFile, gerr)
	}
	r.err = fmt.Errorf("console recording for board %s: closed", r.opts.Board)
	return err
}

// ensureFileLocked makes r.cur the right file for writing n more bytes now.
func (r *Recorder) ensureFileLocked(n int64) error {
	today := r.opts.Now().UTC().Format(dateLayout)
	if r.cur != nil {
		f := r.files[r.curI]
		if f.Date == today && (f.Size == 0 || f.Size+n <= r.partSize()) {
			return nil
		}
		if err := r.cutLocked(); err != nil {
			return err
		}
	}
	kind := "board"
	if r.lease != "" {
		kind = "lease-" + r.lease
	}
	name := fmt.Sprintf("%s.%06d.%s.log", today, r.seq, kind)
	f, err := os.OpenFile(filepath.Join(r.dir, name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("console recording for board %s: %w", r.opts.Board, err)
	}
	r.seq++
	r.cur = f
	r.files = append(r.files, File{Name: name, Date: today, Seq: r.seq - 1, Lease: r.lease})
	r.curI = len(r.files) - 1
	r.pruneLocked()
	return nil
}

// partSize is the size at which a file is cut, so that old parts can be deleted.
func (r *Recorder) partSize() int64 { return max(r.opts.MaxBytes/4, 1) }

// cutLocked closes the current file, if any, and ends the current gap (it belongs to
// that file).
func (r *Recorder) cutLocked() error {
	r.endGapLocked()
	if r.cur == nil {
		return nil
	}
	f := r.cur
	r.cur = nil
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("console recording for board %s: %w", r.opts.Board, err)
	}
	return nil
}

// makeRoomLocked deletes the oldest files (not the current one) until n more bytes fit
// under the cap, or nothing else is left to delete.
func (r *Recorder) makeRoomLocked(n int64) {
	for r.total+n > r.opts.MaxBytes {
		if !r.deleteLocked(0) {
			return
		}
	}
}

// pruneLocked deletes files whose day ended more than Retention ago, and files over the
// cap.
func (r *Recorder) pruneLocked() {
	cutoff := r.opts.Now().Add(-r.opts.Retention)
	for i := 0; i < len(r.files); {
		day, err := time.Parse(dateLayout, r.files[i].Date)
		if err != nil || !day.Add(24*time.Hour).Before(cutoff) {
			i++
			continue
		}
		if !r.deleteLocked(i) {
			i++
		}
	}
	r.makeRoomLocked(0)
}

// deleteLocked deletes files[i] unless it is the current file, and reports whether it
// did (a file already gone counts as deleted).
func (r *Recorder) deleteLocked(i int) bool {
	if i >= len(r.files) || (r.cur != nil && i == r.curI) {
		return false
	}
	f := r.files[i]
	if err := os.Remove(filepath.Join(r.dir, f.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false
	}
	r.total -= f.Size
	r.files = slices.Delete(r.files, i, i+1)
	if r.cur != nil && r.curI > i {
		r.curI--
	}
	return true
}

// ReadLease returns lease id's console as recorded for board under stateDir: its files
// in the order they were written. The files are opened at once, so a deletion by the
// retention while reading does not cut the read short. The error wraps fs.ErrNotExist if
// no file of the lease is left.
func ReadLease(stateDir, board, id string) (io.ReadCloser, error) {
	files, err := Files(stateDir, board)
	if err != nil {
		return nil, err
	}
	var opened []*os.File
	closeAll := func() {
		for _, f := range opened {
			f.Close()
		}
	}
	for _, f := range files {
		if f.Lease != id {
			continue
		}
		fh, err := os.Open(filepath.Join(Dir(stateDir, board), f.Name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("console of lease %s on board %s: %w", id, board, err)
		}
		opened = append(opened, fh)
	}
	if len(opened) == 0 {
		return nil, fmt.Errorf("console of lease %s on board %s: %w", id, board, fs.ErrNotExist)
	}
	readers := make([]io.Reader, len(opened))
	for i, f := range opened {
		readers[i] = f
	}
	return &multiReadCloser{Reader: io.MultiReader(readers...), files: opened}, nil
}

type multiReadCloser struct {
	io.Reader
	files []*os.File
}

// Close closes every file.
func (m *multiReadCloser) Close() error {
	var err error
	for _, f := range m.files {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}
