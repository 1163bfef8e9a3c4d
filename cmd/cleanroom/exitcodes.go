package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// Exit codes of cleanroom's own failures. A build's exit code passes through
// unchanged only when the build failed; everything cleanroom itself fails
// at exits with one of these. They sit in the sysexits(3) range, which
// npm, node, tsc, eslint and jest never use (they exit 1 or 2), below the
// shells' 126/127 and the 128+N of a signal; where sysexits has a code of
// the same meaning it is that code. docs/cli.md lists them.
const (
	exitUsage   = 64 // EX_USAGE: wrong command line, invalid job spec or CLI config
	exitRefused = 65 // EX_DATAERR: refused by policy (lockfile gate, coordinator 400/413, the runner's policy)
	// exitPolicy: the runner's policy ended a running job (an egress
	// violation with on_violation kill, or its egress audit stopped). Not
	// a sysexits meaning (none fits); next to 65 because both are policy,
	// and kept apart from it because the build did run: its log and
	// egress events say what it tried.
	exitPolicy      = 66
	exitUnreachable = 69 // EX_UNAVAILABLE: coordinator unreachable or failing, gave up
	exitInternal    = 70 // EX_SOFTWARE: any other failure of cleanroom (on a runner too: network, sandbox, artifacts)
	exitCanceled    = 71 // the job was canceled
	exitLost        = 72 // the job was lost (its runner vanished, no attempts left)
	exitTimeout     = 75 // EX_TEMPFAIL: --wait-timeout passed, or the job ran past its spec's timeout
	exitAuth        = 77 // EX_NOPERM: token missing, wrong, revoked or not allowed (401/403)
)

// exitCodeHelp is the table printed in --help.
const exitCodeHelp = `Exit codes:
  0      success (with --wait: the build succeeded)
  1-255  with --wait or logs -f: the build failed with this exit code
  64     usage: wrong command line, invalid cleanroom.yaml or CLI config
  65     refused by policy: lockfile gate, the coordinator refused the job,
         or the runner refused it before it ran (gate, secrets, resources,
         network policy)
  66     policy ended the running job: egress violation (on_violation:
         kill) or its egress audit stopped
  69     unreachable: the coordinator could not be reached (gave up after --retry-for)
  70     internal: any other failure of cleanroom, on a runner too (network
         or sandbox setup, source, artifacts, the agent shutting down)
  71     the job was canceled
  72     the job was lost
  75     timeout: --wait-timeout passed, or the job ran past its timeout
  77     auth: token missing, wrong, revoked, or not allowed to do this
A build's own code passes through even when it is one of the numbers
above; with --json the result's "failure_class" ("build") tells them apart.
Details: docs/cli.md.`

// exitError ends the process with code after printing msg ("" prints
// nothing): a build's exit code, or one of cleanroom's own above.
type exitError struct {
	code int
	msg  string
	err  error // the cause, for errors.Is/As
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) Unwrap() error { return e.err }

// withExit marks err with one of cleanroom's exit codes.
func withExit(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, msg: err.Error(), err: err}
}

// exitCode is the one mapping from an error to the process exit code.
func exitCode(err error) int {
	var ee *exitError
	var ge *supplychain.GateError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case isUsage(err):
		return exitUsage
	case errors.Is(err, api.ErrUnauthorized), errors.Is(err, api.ErrForbidden):
		return exitAuth
	case errors.Is(err, api.ErrInvalid), errors.Is(err, api.ErrTooLarge), errors.As(err, &ge),
		errors.Is(err, supplychain.ErrNoLockfile), errors.Is(err, supplychain.ErrLockfileRejected),
		errors.Is(err, supplychain.ErrUnsupportedLockfile), errors.Is(err, supplychain.ErrMalformedLockfile),
		errors.Is(err, supplychain.ErrPackageJSON), errors.Is(err, supplychain.ErrLockfileTooLarge):
		return exitRefused
	case errors.Is(err, api.ErrNotFound):
		return exitUsage // a job, token or runner the command named does not exist
	case errors.Is(err, context.DeadlineExceeded):
		return exitTimeout
	case unreachable(err):
		return exitUnreachable
	}
	return exitInternal
}

// unreachable: no answer from the coordinator, or a failing one (5xx,
// 429): what api.Retryable retries.
func unreachable(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	}
	return errors.Is(err, api.ErrUnreachable)
}

// usageError marks a mistake in how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func isUsage(err error) bool {
	var ue usageError
	if errors.As(err, &ue) {
		return true
	}
	// cobra's own: an unknown command or flag of the root.
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command") || strings.HasPrefix(msg, "unknown flag") ||
		strings.HasPrefix(msg, "unknown shorthand flag")
}

// markUsageErrors makes cobra's argument and flag errors of every command
// usage errors.
func markUsageErrors(c *cobra.Command) {
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	if args := c.Args; args != nil {
		c.Args = func(cmd *cobra.Command, a []string) error {
			if err := args(cmd, a); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		markUsageErrors(sub)
	}
}
