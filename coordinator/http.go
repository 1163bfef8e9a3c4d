package coordinator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/console"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// routes registers the API of docs/api.md: one handler a route, each behind
// auth (but registration and the public runner key) and adapt.
func (s *Server) routes() {
	alive := func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
	s.mux.HandleFunc("GET /v1/healthz", alive)
	s.mux.HandleFunc("GET /healthz", alive)
	s.mux.HandleFunc("GET /readyz", s.handleReady)
	if !s.cfg.DisableMetrics {
		s.mux.HandleFunc("GET /metrics", s.handleMetrics())
	}
	route := func(pattern string, h handlerFunc) { s.mux.HandleFunc(pattern, s.adapt(h)) }
	route("POST /v1/runners/register", s.handleRegister)
	route("GET /v1/runners", s.auth(adminOnly, s.handleListRunners))
	route("DELETE /v1/runners/{id}", s.auth(adminOnly, s.handleRemoveRunner))
	route("GET /v1/runners/{id}/key", s.handleRunnerKey)
	route("POST /v1/tokens", s.auth(adminOnly, s.handleCreateToken))
	route("GET /v1/tokens", s.auth(adminOnly, s.handleListTokens))
	route("DELETE /v1/tokens/{id}", s.auth(adminOnly, s.handleRevokeToken))

	route("POST /v1/jobs", s.auth(submitters, s.handleSubmit))
	route("GET /v1/jobs", s.auth(readers, s.handleListJobs))
	route("GET /v1/jobs/{id}", s.auth(readers, s.handleGetJob))
	route("POST /v1/jobs/{id}/cancel", s.auth(submitters, s.handleCancel))
	route("GET /v1/jobs/{id}/log", s.auth(readers, s.handleReadLog))
	route("GET /v1/jobs/{id}/artifacts", s.auth(readers, s.handleListArtifacts))
	route("GET /v1/jobs/{id}/artifacts/{name...}", s.auth(readers, s.handleGetArtifact))
	route("GET /v1/egress", s.auth(readers, s.handleQueryEgress))
	route("GET /v1/policy", s.auth(readers, s.handlePolicy))

	route("POST /v1/jobs/claim", s.auth(runnerOnly, s.handleClaim))
	route("POST /v1/jobs/{id}/heartbeat", s.auth(runnerOnly, s.handleHeartbeat))
	route("POST /v1/jobs/{id}/log", s.auth(runnerOnly, s.handleAppendLog))
	route("GET /v1/jobs/{id}/source", s.auth(runnerOnly, s.handleSource))
	route("POST /v1/jobs/{id}/egress", s.auth(runnerOnly, s.handlePostEgress))
	route("PUT /v1/jobs/{id}/artifacts/{name...}", s.auth(runnerOnly, s.handlePutArtifact))
	route("POST /v1/jobs/{id}/result", s.auth(runnerOnly, s.handleResult))

	s.mux.Handle(console.Prefix, s.newConsole())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// handlerFunc is an API handler: it writes its answer, or returns an error
// and writes nothing; adapt answers the error.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// adapt turns h into an http.HandlerFunc whose errors writeError answers.
func (s *Server) adapt(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}
}

// writeError answers err with the status of its class (api.StatusOf) and the
// api.Error body: field errors for an invalid request, the expected offset
// for a log gap, no detail for a refused token or an internal failure
// (logged, like a refused token).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	ae := &api.Error{Status: api.StatusOf(err), Message: err.Error()}
	var fe api.FieldErrors
	var oe *store.OffsetError
	switch {
	case errors.As(err, &fe):
		ae.Message, ae.Fields = "invalid request", fe
	case errors.As(err, &oe):
		ae.ExpectedOffset = &oe.Expected
	}
	switch {
	case ae.Status == http.StatusUnauthorized:
		ae.Message = "unauthorized: missing, invalid, expired or revoked token"
		s.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "reason", err)
	case ae.Status >= http.StatusInternalServerError:
		if r.Context().Err() != nil {
			return // client gone; nothing to answer
		}
		ae.Message = "internal error"
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	writeJSON(w, ae.Status, ae)
}

// readBody reads a request body of at most limit bytes; a longer one is
// api.ErrTooLarge.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = api.WithClass(err, api.ErrTooLarge)
	}
	return b, err
}

// decodeJSON decodes a JSON request body of at most limit bytes into v with
// decodeStrict.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	return decodeStrict(http.MaxBytesReader(w, r.Body, limit), v)
}

// decodeStrict decodes the one JSON value rd holds into v, refusing unknown
// fields (a typo in a spec must not be silently ignored) and anything but
// white space after the value. Its errors are field errors, or
// api.ErrTooLarge for a body over its limit.
func decodeStrict(rd io.Reader, v any) error {
	dec := json.NewDecoder(rd)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonFieldError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return jsonFieldError(err)
		}
		return api.FieldErrors{{Field: "body", Message: "unexpected data after the JSON value"}}
	}
	return nil
}

// jsonFieldError turns a decoding error into field errors where it can.
func jsonFieldError(err error) error {
	var ute *json.UnmarshalTypeError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return fmt.Errorf("decoding request body: %w", api.WithClass(err, api.ErrTooLarge))
	case errors.As(err, &ute):
		return api.FieldErrors{{Field: ute.Field, Message: "wrong type: want " + ute.Type.String()}}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return api.FieldErrors{{Field: f, Message: "unknown field"}}
	}
	return api.FieldErrors{{Field: "body", Message: err.Error()}}
}

// serveBlob answers with the blob digest as a download (api.SetDownloadHeaders)
// named filename.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, digest, ctype, filename string) error {
	fh, err := s.store.OpenBlob(r.Context(), digest)
	if err != nil {
		return err
	}
	defer fh.Close()
	api.SetDownloadHeaders(w.Header(), filename)
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.FormatInt(fh.Size(), 10))
	w.Header().Set("X-Cleanroom-SHA256", digest)
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, fh)
	return nil
}
