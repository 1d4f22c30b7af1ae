// Package journal is boardvisor's write-ahead journal: a durable lease store (the actors.Store of the supervisor) in a bbolt
// file in the state directory (DESIGN.md §7). Before a lease actor performs an effect it
// writes the lease's new state here; after a restart, even after kill -9, LoadAll gives
// back every live lease so that the host actor can rebuild it in its phase.
//
// # Layout
//
// The file has three buckets: "meta" holds the format version (FormatVersion, as decimal
// text under "version"); "leases" maps a job ID to the lease part of its record (spec,
// state, timer deadlines); "hooks" maps a job ID to the hook run being watched (shim pid
// and start time, spool directory, output offset). The two parts are separate keys, so
// SaveLease never overwrites what SaveHook wrote and vice versa; SetHookOffset rewrites
// only the hook part, and Delete removes both. Each value is JSON with a version field
// ("v":1) and enums spelled as names; see codec.go for the exact encoding.
//
// # Group commit
//
// Writes (SaveLease, SaveHook, SetHookOffset, Delete) are encoded by the caller and queued
// to one writer goroutine owned by the Journal. The writer takes everything queued (at most
// Options.MaxBatch), applies it in one bbolt transaction, commits it (one fsync round), and
// then wakes every writer of the batch; while it commits, new writes queue up for the next
// transaction. There is no timer: a lone write is committed at once, and under load the
// batch grows by itself to the number of boards writing at the same time. Every write call,
// SetHookOffset included, returns only after its transaction committed, so what a lease
// actor wrote is durable before it performs the effect.
//
// # Failed commits
//
// A commit that fails (a full disk, an I/O error) is retried with back-off (RetryMin to
// RetryMax, sooner when Options.Disk says space returned) until it succeeds: the writers
// of its batch keep waiting, so a lease actor never acts on a write that is not durable
// ("journal before acting"), and later writes queue behind it. The first failure is
// logged, then once per RetryLogEvery while it lasts, and the recovery once; a full disk
// is also reported to Options.Disk, which releases the state directory's reserve. Only
// Close ends the retries, after CloseFlush: the waiting writers then get the error. An
// existing journal opens without writing, so a restart on a full disk works; a new one
// is created once the reserve is released.
//
// # Damage
//
// A file that cannot be read as a whole (not a bbolt file, truncated, inconsistent pages,
// unknown format version) makes Open return a *DamagedError naming the file and what was
// wrong. Open first reads the whole file through a read-only handle (its size against its
// pages, the freelist page bbolt will read, every key and value), with panics and memory
// faults turned into errors, so that a damaged file is found then, leaves nothing open or
// locked, and cannot crash the daemon later. The daemon moves such a
// file aside with Recover and opens a fresh journal; the leases that were in it cannot be
// named from an unreadable file, so they are not reported one by one: the coordinator
// sees that the restarted supervisor does not list them as resumed. A single record that
// cannot be decoded only costs that lease: LoadAll skips it and lists it as Damaged, so
// the daemon reports it as CannotResume and restores the others.
//
// A second daemon on the same state directory does not wait forever for the file lock:
// Open fails after Options.LockTimeout with "journal <path> is locked by another
// boardvisor process".
package journal
