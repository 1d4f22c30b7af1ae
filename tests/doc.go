// Package tests holds the end-to-end and fault tests: they build the boardvisor binary
// and run it as users and operators do — coordinator, supervisors, clients — with real
// hook processes, pseudo-terminals and kill -9. Every test starts, waits on and reads
// those processes through the one kit in kit_test.go (processes, ports, log lines,
// configs, the coordinator's API and database); add helpers there, not in a test file.
package tests
