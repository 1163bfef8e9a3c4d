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

// Is maps the HTTP status onto the package sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrForbidden:
		return e.Status == http.StatusForbidden
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrInvalid:
		return e.Status == http.StatusBadRequest
	case ErrTooLarge:
		return e.Status == http.StatusRequestEntityTooLarge
	}
	return false
}

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
