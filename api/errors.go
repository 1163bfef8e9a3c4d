package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinels for the classes of coordinator answers a caller reacts to. An
// *Error from the client matches one of them with errors.Is.
var (
	// ErrNotFound: the job, runner, artifact or token does not exist.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: no token, a wrong token, or a revoked runner.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrForbidden: a valid token that may not do this.
	ErrForbidden = errors.New("forbidden")
	// ErrConflict: a stale fencing token, a log gap, or a job in the wrong
	// state. The agent stops working on a job whose lease answers this.
	ErrConflict = errors.New("conflict")
	// ErrInvalid: a malformed request; FieldErrors say which fields.
	ErrInvalid = errors.New("invalid request")
	// ErrTooLarge: an upload over the coordinator's cap.
	ErrTooLarge = errors.New("too large")
	// ErrUnreachable: the client got no answer (connection refused, DNS,
	// TLS, a dropped connection). Not an HTTP status: the client marks its
	// transport failures with it, so callers can say "unreachable".
	ErrUnreachable = errors.New("coordinator unreachable")
)

// Error is a non-2xx answer of the coordinator. Its JSON form is the body of
// every error response: {"error": "...", "errors": [...], "expected_offset": N}.
type Error struct {
	Status         int         `json:"-"`
	Message        string      `json:"error"`
	Fields         FieldErrors `json:"errors,omitempty"`
	ExpectedOffset *int64      `json:"expected_offset,omitempty"`
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if len(e.Fields) > 0 {
		msg += ": " + e.Fields.Error()
	}
	return fmt.Sprintf("coordinator: %s (HTTP %d)", msg, e.Status)
}

// Is maps the HTTP status onto the package sentinels (ErrorFrom).
func (e *Error) Is(target error) bool {
	class := ErrorFrom(e.Status)
	return class != nil && class == target
}

// classes is the one table between the error classes and the HTTP statuses
// that carry them: StatusOf reads it one way (the coordinator answering),
// ErrorFrom the other (a client reading the answer). Earlier rows win when
// an error is of two classes.
var classes = []struct {
	class  error
	status int
}{
	{ErrInvalid, http.StatusBadRequest},
	{ErrTooLarge, http.StatusRequestEntityTooLarge},
	{ErrNotFound, http.StatusNotFound},
	{ErrConflict, http.StatusConflict},
	{ErrUnauthorized, http.StatusUnauthorized},
	{ErrForbidden, http.StatusForbidden},
}

// StatusOf returns the HTTP status that answers err: the status of its
// class, the status of a coordinator answer (*Error) it wraps, 200 for nil,
// and 500 for an error of no class (a failure of the coordinator itself).
func StatusOf(err error) int {
	if err == nil {
		return http.StatusOK
	}
	for _, c := range classes {
		if errors.Is(err, c.class) {
			return c.status
		}
	}
	var ae *Error
	if errors.As(err, &ae) && ae.Status >= 400 {
		return ae.Status
	}
	return http.StatusInternalServerError
}

// ErrorFrom returns the class of an HTTP status (ErrNotFound for 404), or
// nil for a status no class stands for (2xx, 429, 5xx).
func ErrorFrom(status int) error {
	for _, c := range classes {
		if c.status == status {
			return c.class
		}
	}
	return nil
}

// WithClass marks err as one of the classes above without changing its
// message: errors.Is matches err and class. Packages define their own
// sentinels with it (a stale lease is a conflict) so the HTTP layer needs
// no list of them.
func WithClass(err, class error) error { return &classed{err: err, class: class} }

type classed struct{ err, class error }

func (c *classed) Error() string   { return c.err.Error() }
func (c *classed) Unwrap() []error { return []error{c.err, c.class} }

// Retryable reports whether a failed call may succeed if repeated: transport
// errors, 5xx and 429. A 4xx answer is final.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Status >= 500 || ae.Status == http.StatusTooManyRequests
	}
	return true
}
