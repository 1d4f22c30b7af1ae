package main

// Errors as the user reads them: one sentence saying what happened (and to their lease)
// and what to do, and an exit status that scripts can tell apart. docs/operations.md
// lists the statuses; `boardvisor --help` does too.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit statuses.
const (
	exitOK          = 0   // done
	exitFailed      = 1   // the request failed (a lease ended before it was ready, a hook failed, a request was refused as invalid)
	exitUsage       = 2   // the command line is wrong
	exitUnreachable = 3   // the coordinator or supervisor could not be reached, or did not answer in time
	exitRefused     = 4   // the token was refused, or the user may not do this
	exitNotFound    = 5   // no such lease, board, supervisor or user
	exitInterrupted = 130 // interrupted (Ctrl+C or SIGTERM); what became of the lease was said
)

// exitHelp is the list of exit statuses, for --help.
const exitHelp = `Exit status:
  0    done
  1    the request failed (a lease ended before it was ready, a hook failed, an invalid request)
  2    the command line is wrong
  3    the coordinator or a supervisor could not be reached, or did not answer in time
  4    the token was refused, or you may not do this
  5    no such lease, board, supervisor or user
  130  interrupted (Ctrl+C or SIGTERM); what became of the lease is said before
  (boardvisor shell -- COMMAND exits with COMMAND's status)`

// cliError is an error already worded for the user, with its exit status.
type cliError struct {
	msg  string
	code int
}

func (e *cliError) Error() string { return e.msg }

func failf(code int, format string, args ...any) error {
	return &cliError{msg: fmt.Sprintf(format, args...), code: code}
}

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ error }

// exitError carries an exit status from a subcommand that already said what it had to.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// peer is a service the CLI talks to, for error messages: its role, its address and
// how the user sets it.
type peer struct {
	role, addr, hint string
	caFile           string // the CA file its certificate was checked against ("": the system's)
}

// rpcError words a failed call to p: what was being done, and the gRPC error, as one
// sentence with its exit status. An error already worded passes through.
func rpcError(p peer, what string, err error) error {
	if err == nil {
		return nil
	}
	var ce *cliError
	if errors.As(err, &ce) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return failf(exitInterrupted, "%s: interrupted", what)
	}
	st, ok := status.FromError(err)
	if !ok {
		return failf(exitFailed, "%s: %s", what, oneLine(err.Error()))
	}
	msg := oneLine(st.Message())
	switch st.Code() {
	case codes.Unavailable:
		if s := tlsSentence(p, msg); s != "" {
			return failf(exitUnreachable, "%s: %s", what, s)
		}
		if strings.Contains(msg, "is a standby") {
			// Every coordinator given answered as a standby: its sentence names the active one.
			return failf(exitUnreachable, "%s: the %s at %s: %s", what, p.role, p.addr, msg)
		}
		if strings.Contains(msg, "shutting down") {
			return failf(exitUnreachable, "%s: the %s at %s is shutting down; try again once it is back", what, p.role, p.addr)
		}
		return failf(exitUnreachable, "%s: cannot reach the %s at %s: %s; %s", what, p.role, p.addr, transportReason(msg), p.hint)
	case codes.DeadlineExceeded:
		return failf(exitUnreachable, "%s: the %s at %s did not answer in time; %s", what, p.role, p.addr, p.hint)
	case codes.Unauthenticated:
		if strings.Contains(msg, "client certificate") { // a supervisor's tls.clientCAFile: its message says what to do
			return failf(exitRefused, "%s: the %s at %s refused the connection: %s", what, p.role, p.addr, msg)
		}
		return failf(exitRefused, "%s: the %s at %s refused the token: %s", what, p.role, p.addr, msg)
	case codes.PermissionDenied:
		return failf(exitRefused, "%s: %s", what, msg)
	case codes.NotFound:
		return failf(exitNotFound, "%s: %s", what, msg)
	case codes.Canceled:
		return failf(exitInterrupted, "%s: interrupted", what)
	case codes.Unimplemented:
		return failf(exitFailed, "%s: the %s at %s does not know this request (it runs an older boardvisor): upgrade it", what, p.role, p.addr)
	case codes.ResourceExhausted:
		if strings.HasPrefix(msg, "grpc: ") { // gRPC's own: a message past the size allowed
			return failf(exitFailed, "%s: the %s at %s is overloaded or the request is too large: %s", what, p.role, p.addr, msg)
		}
		// The peer's own limit: its sentence says which, and what to do.
		return failf(exitFailed, "%s: the %s at %s refused it: %s", what, p.role, p.addr, msg)
	}
	return failf(exitFailed, "%s: %s", what, msg)
}

var descQuoted = regexp.MustCompile(`desc = "(.*)"`)

// tlsSentence words a TLS handshake that failed on this side ("" if msg is not one):
// the peer's certificate is not trusted, not for the address dialled, or out of date.
func tlsSentence(p peer, msg string) string {
	who, _, _ := strings.Cut(p.role, " ") // "supervisor", "coordinator"
	low := strings.ToLower(msg)
	switch {
	case strings.Contains(low, "x509: certificate signed by unknown authority"), strings.Contains(low, "certificate is not trusted"):
		if p.caFile != "" {
			return fmt.Sprintf("the %s's certificate (at %s) is not signed by the CA in %s: give --ca-file FILE (or $%s, or caFile: in %s) with the CA that signed it",
				who, p.addr, p.caFile, envCAFile, clientConfigPath())
		}
		return fmt.Sprintf("the %s's certificate (at %s) is not signed by a CA you trust (no CA file given: the system's CAs were used): give --ca-file FILE (or $%s, or caFile: in %s) with the CA that signed it",
			who, p.addr, envCAFile, clientConfigPath())
	case strings.Contains(low, "x509: certificate is valid for"), strings.Contains(low, "x509: cannot validate certificate for"):
		return fmt.Sprintf("the %s's certificate does not name the address it is reached at (%s): %s; its operator must give it a certificate for that address",
			who, p.addr, tlsDetail(msg))
	case strings.Contains(low, "x509: certificate has expired or is not yet valid"):
		return fmt.Sprintf("the %s's certificate (at %s) has expired or is not valid yet: %s; its operator must renew it", who, p.addr, tlsDetail(msg))
	case strings.Contains(low, "not the one pinned"):
		return fmt.Sprintf("the %s at %s presents another certificate than the one it gave its hooks ($%s): has it been restarted with a new one?", who, p.addr, envExporterPin)
	}
	return ""
}

// tlsDetail is the x509 clause of a handshake error.
func tlsDetail(msg string) string {
	if i := strings.Index(msg, "x509: "); i >= 0 {
		msg = msg[i+len("x509: "):]
	}
	return strings.TrimSuffix(msg, `"`)
}

// transportReason reduces gRPC's transport error ("connection error: desc =
// \"transport: Error while dialing: dial tcp 127.0.0.1:7400: connect: connection
// refused\"") to what went wrong, in words.
func transportReason(msg string) string {
	if m := descQuoted.FindStringSubmatch(msg); m != nil {
		msg = m[1]
	}
	low := strings.ToLower(msg)
	switch {
	case strings.Contains(low, "connection refused"):
		return "connection refused (is it running, and listening there?)"
	case strings.Contains(low, "no such host"):
		return "no such host"
	case strings.Contains(low, "i/o timeout"), strings.Contains(low, "deadline exceeded"):
		return "no answer (a firewall, or the wrong address?)"
	case strings.Contains(low, "first record does not look like a tls handshake"):
		return "it does not speak TLS (leave out the CA file, or turn TLS on there)"
	case strings.Contains(low, "x509:"), strings.Contains(low, "tls:"), strings.Contains(low, "handshake"):
		return "the TLS handshake failed (" + lastPart(msg) + "; check the CA file)"
	case strings.Contains(low, "server preface"), strings.Contains(low, "eof"):
		return "it closed the connection (does it want TLS? then set a CA file)"
	case strings.Contains(low, "no route to host"), strings.Contains(low, "network is unreachable"):
		return "no route to it (is the network up?)"
	case strings.Contains(low, "missing port"), strings.Contains(low, "produced zero addresses"):
		return "the address is not host:port"
	}
	return lastPart(msg)
}

// lastPart is the last clause of a chain of "a: b: c" error texts, without gRPC's
// "transport:" boilerplate.
func lastPart(msg string) string {
	msg = strings.TrimPrefix(msg, "transport: ")
	if i := strings.LastIndex(msg, ": "); i >= 0 && i+2 < len(msg) {
		return msg[i+2:]
	}
	return msg
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}
