// Package jobs holds what a job is, with no I/O: the lease lifecycle state machine
// (phases, one transition table, decisions and effects), job specs, Treadmill's
// JobError kinds, the derivation of a board's ExporterStatus from a lease phase, and
// the parser for hook output lines (JMP_ prefixes).
//
// The state machine is written in the style of etcd's raft package: the caller feeds a
// Lease an Input and receives a Decision, an ordered list of Effects to perform (run a
// hook, report a transition, arm a timer, release the board). The package never
// sleeps, reads a clock, starts a process or touches a file; actors carry the effects
// out. It imports nothing of boardvisor's.
package jobs
