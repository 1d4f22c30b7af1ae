// Package tests holds the end-to-end and fault tests: they build the boardvisor binary
// and run it as users and operators do — coordinator, supervisors, clients — with real
// hook processes, pseudo-terminals and kill -9.
package tests
