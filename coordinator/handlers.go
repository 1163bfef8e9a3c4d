package coordinator

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

func (s *Server) routes() {
	s.mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
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

	route("POST /v1/jobs/claim", s.auth(runnerOnly, s.handleClaim))
	route("POST /v1/jobs/{id}/heartbeat", s.auth(runnerOnly, s.handleHeartbeat))
	route("POST /v1/jobs/{id}/log", s.auth(runnerOnly, s.handleAppendLog))
	route("GET /v1/jobs/{id}/source", s.auth(runnerOnly, s.handleSource))
	route("POST /v1/jobs/{id}/egress", s.auth(runnerOnly, s.handlePostEgress))
	route("PUT /v1/jobs/{id}/artifacts/{name...}", s.auth(runnerOnly, s.handlePutArtifact))
	route("POST /v1/jobs/{id}/result", s.auth(runnerOnly, s.handleResult))
}

// --- helpers -----------------------------------------------------------------

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

// fence builds the lease of a runner request from the job id in the path and
// the token in LeaseHeader (or tok when the body carried it).
func fence(r *http.Request, tok int64) (store.Fence, error) {
	p := principalFrom(r.Context())
	f := store.Fence{JobID: r.PathValue("id"), RunnerID: p.runner.ID, Token: tok}
	if tok == 0 {
		v, err := strconv.ParseInt(r.Header.Get(api.LeaseHeader), 10, 64)
		if err != nil || v <= 0 {
			return f, api.FieldErrors{{Field: api.LeaseHeader, Message: "required: the lease's fencing token"}}
		}
		f.Token = v
	}
	return f, nil
}

func toAPIRunner(r store.Runner) api.Runner { return r.Runner }

// --- registration, tokens, runners -------------------------------------------

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request) error {
	var req api.RegisterRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	regID, regSecret, ok := splitToken(req.Token, PrefixRegistration)
	if !ok {
		return fmt.Errorf("reading registration token: %w", api.ErrUnauthorized)
	}
	secret := newSecret()
	rn := store.Runner{
		Runner: api.Runner{
			ID: newID("r-", 6), Name: req.Name, Labels: req.Labels,
			Concurrency: max(req.Concurrency, 1), CreatedAt: s.now().UTC(),
		},
		TokenHash: hashSecret(secret), PublicKey: req.PublicKey,
	}
	if err := s.store.RegisterRunner(r.Context(), regID, hashSecret(regSecret), rn, s.now()); err != nil {
		return err
	}
	s.log.Info("runner registered", "runner", rn.ID, "name", rn.Name, "labels", rn.Labels)
	writeJSON(w, http.StatusCreated, api.RegisterResponse{RunnerID: rn.ID, RunnerToken: PrefixRunner + rn.ID + "." + secret})
	return nil
}

func (s *Server) handleListRunners(w http.ResponseWriter, r *http.Request) error {
	rs, err := s.store.ListRunners(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.Runner, 0, len(rs))
	for _, rn := range rs {
		out = append(out, toAPIRunner(rn))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// runnerByIDOrName resolves a path value that is a runner id or name.
func (s *Server) runnerByIDOrName(r *http.Request, v string) (store.Runner, error) {
	rn, err := s.store.Runner(r.Context(), v)
	if errors.Is(err, store.ErrNotFound) {
		return s.store.RunnerByName(r.Context(), v)
	}
	return rn, err
}

func (s *Server) handleRemoveRunner(w http.ResponseWriter, r *http.Request) error {
	rn, err := s.runnerByIDOrName(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	rn, err = s.store.RevokeRunner(r.Context(), rn.ID, s.now())
	if err != nil {
		return err
	}
	s.log.Info("runner revoked", "runner", rn.ID, "name", rn.Name)
	writeJSON(w, http.StatusOK, toAPIRunner(rn))
	return nil
}

func toTokenInfo(t store.Token) api.TokenInfo {
	return api.TokenInfo{ID: t.ID, Kind: t.Kind, Note: t.Note, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt,
		UsesLeft: t.UsesLeft, RevokedAt: t.RevokedAt}
}

func (s *Server) handleListTokens(w http.ResponseWriter, r *http.Request) error {
	ts, err := s.store.ListTokens(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.TokenInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, toTokenInfo(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleRevokeToken(w http.ResponseWriter, r *http.Request) error {
	t, err := s.store.RevokeToken(r.Context(), r.PathValue("id"), s.now())
	if err != nil {
		return err
	}
	s.log.Info("token revoked", "token", t.ID, "kind", t.Kind, "note", t.Note)
	writeJSON(w, http.StatusOK, toTokenInfo(t))
	return nil
}

func (s *Server) handleRunnerKey(w http.ResponseWriter, r *http.Request) error {
	rn, err := s.store.Runner(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.RunnerKey{RunnerID: rn.ID, Name: rn.Name, Algorithm: "ed25519", PublicKey: rn.PublicKey, RevokedAt: rn.RevokedAt})
	return nil
}

// tokenPrefixes maps the kinds of token an admin creates to their prefixes.
var tokenPrefixes = map[string]string{
	api.TokenRegistration: PrefixRegistration,
	api.TokenSubmit:       PrefixSubmit,
	api.TokenAudit:        PrefixAudit,
}

func (s *Server) handleCreateToken(w http.ResponseWriter, r *http.Request) error {
	var req api.TokenRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	if req.Kind == "" {
		req.Kind = api.TokenRegistration
	}
	prefix := tokenPrefixes[req.Kind]
	now := s.now().UTC()
	t := store.Token{ID: newID("t-", 6), Kind: req.Kind, CreatedAt: now, Note: req.Note}
	secret := newSecret()
	t.Hash = hashSecret(secret)
	if req.Expires > 0 {
		e := now.Add(req.Expires.D())
		t.ExpiresAt = &e
	}
	if req.Uses > 0 {
		u := req.Uses
		t.UsesLeft = &u
	}
	if err := s.store.CreateToken(r.Context(), t); err != nil {
		return err
	}
	s.log.Info("token created", "id", t.ID, "kind", t.Kind, "expires", t.ExpiresAt, "uses", req.Uses)
	writeJSON(w, http.StatusCreated, api.TokenResponse{ID: t.ID, Kind: t.Kind, Token: prefix + t.ID + "." + secret, ExpiresAt: t.ExpiresAt, Uses: req.Uses})
	return nil
}

// --- jobs --------------------------------------------------------------------

func (s *Server) handleSubmit(w http.ResponseWriter, r *http.Request) error {
	var spec api.JobSpec
	var src api.Source
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "multipart/form-data":
		var err error
		spec, src, err = s.readUpload(w, r)
		if err != nil {
			return err
		}
	default:
		var req struct {
			Spec   json.RawMessage `json:"spec"`
			Source api.Source      `json:"source"`
		}
		if err := decodeJSON(w, r, 1<<20, &req); err != nil {
			return err
		}
		if len(req.Spec) == 0 {
			return api.FieldErrors{{Field: "spec", Message: "required"}}
		}
		if err := decodeStrict(bytes.NewReader(req.Spec), &spec); err != nil {
			return api.PrefixFields("spec.", err)
		}
		src = req.Source
		if src.Kind == api.SourceUpload {
			return api.FieldErrors{{Field: "source.kind", Message: "an upload must be sent as multipart/form-data with a source part"}}
		}
	}
	if err := (&api.SubmitRequest{Spec: spec, Source: src}).Validate(); err != nil {
		return err
	}
	if spec.MaxAttempts == 0 {
		spec.MaxAttempts = s.cfg.MaxAttempts
	}
	j := store.Job{Job: api.Job{ID: newID("j-", 8), State: api.StateQueued, Spec: spec, Source: src,
		MaxAttempts: spec.MaxAttempts, CreatedAt: s.now().UTC(), Submitter: principalFrom(r.Context()).submitter()}}
	if err := s.store.CreateJob(r.Context(), j); err != nil {
		return err
	}
	s.disp.kick()
	s.log.Info("job submitted", "job", j.ID, "source", src.Kind, "labels", spec.Labels)
	writeJSON(w, http.StatusCreated, j.Job)
	return nil
}

// readUpload streams a multipart submit: "spec" (JSON), optional "sha256",
// and "source" (tar.gz, capped at MaxUpload).
func (s *Server) readUpload(w http.ResponseWriter, r *http.Request) (api.JobSpec, api.Source, error) {
	var spec api.JobSpec
	src := api.Source{Kind: api.SourceUpload}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxUpload+2<<20)
	mr, err := r.MultipartReader()
	if err != nil {
		return spec, src, api.FieldErrors{{Field: "body", Message: "reading multipart: " + err.Error()}}
	}
	var fe api.FieldErrors
	var declared string
	var gotSpec, gotSource bool
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return spec, src, api.FieldErrors{{Field: "source", Message: fmt.Sprintf("upload larger than %d bytes", s.cfg.MaxUpload)}}
			}
			return spec, src, api.FieldErrors{{Field: "body", Message: "reading multipart: " + err.Error()}}
		}
		switch p.FormName() {
		case "spec":
			gotSpec = true
			if err := decodeStrict(io.LimitReader(p, 1<<20), &spec); err != nil {
				fe = append(fe, api.PrefixFields("spec.", err)...)
			}
		case "sha256":
			b, _ := io.ReadAll(io.LimitReader(p, 128))
			declared = strings.TrimSpace(string(b))
		case "source":
			gotSource = true
			digest, size, err := s.blobs.put(p, s.cfg.MaxUpload, declared)
			switch {
			case errors.Is(err, api.ErrTooLarge):
				return spec, src, api.FieldErrors{{Field: "source", Message: fmt.Sprintf("upload larger than %d bytes", s.cfg.MaxUpload)}}
			case errors.Is(err, errDigestMismatch):
				fe = append(fe, api.FieldError{Field: "sha256", Message: err.Error()})
			case err != nil:
				return spec, src, err
			default:
				src.SHA256, src.Size = digest, size
				if err := s.checkGzip(digest); err != nil {
					fe = append(fe, api.FieldError{Field: "source", Message: err.Error()})
				}
			}
		default:
			fe = append(fe, api.FieldError{Field: p.FormName(), Message: "unknown part"})
		}
		p.Close()
	}
	if !gotSpec {
		fe = append(fe, api.FieldError{Field: "spec", Message: "required part"})
	}
	if !gotSource {
		fe = append(fe, api.FieldError{Field: "source", Message: "required part (tar.gz)"})
	}
	if len(fe) > 0 {
		if err := spec.Validate(); err != nil {
			fe = append(fe, api.PrefixFields("spec.", err)...)
		}
		return spec, src, fe
	}
	return spec, src, nil
}

func (s *Server) checkGzip(digest string) error {
	f, err := s.blobs.open(digest)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil || magic != [2]byte{0x1f, 0x8b} {
		return errors.New("not a gzip-compressed tar archive")
	}
	return nil
}

func (s *Server) handleListJobs(w http.ResponseWriter, r *http.Request) error {
	f := store.JobFilter{State: r.URL.Query().Get("state"), Limit: 100}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return api.FieldErrors{{Field: "limit", Message: "must be 1-10000"}}
		}
		f.Limit = n
	}
	if p := principalFrom(r.Context()); p.kind == principalSubmit {
		f.Submitter = p.tokenID
	}
	js, err := s.store.ListJobs(r.Context(), f)
	if err != nil {
		return err
	}
	out := make([]api.Job, 0, len(js))
	for _, j := range js {
		out = append(out, j.Job)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// visibleJob returns the job the request names, if its principal may see
// it: a submit token sees only the jobs submitted with it, and gets 404 for
// any other (whether it exists is none of its business).
func (s *Server) visibleJob(r *http.Request, id string) (store.Job, error) {
	j, err := s.store.Job(r.Context(), id)
	if err != nil {
		return j, err
	}
	if p := principalFrom(r.Context()); p.kind == principalSubmit && j.Submitter != p.tokenID {
		return store.Job{}, fmt.Errorf("looking up job %s: %w", id, store.ErrNotFound)
	}
	return j, nil
}

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) error {
	j, err := s.visibleJob(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}

func (s *Server) handleCancel(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.visibleJob(r, r.PathValue("id")); err != nil {
		return err
	}
	j, err := s.store.RequestCancel(r.Context(), r.PathValue("id"), s.now())
	if err != nil {
		return err
	}
	s.hub.notify("job:" + j.ID)
	s.hub.notify("log:" + j.ID)
	s.log.Info("job cancel requested", "job", j.ID, "state", j.State)
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}

// --- claim and lease ---------------------------------------------------------

func (s *Server) lease(j store.Job) api.Lease {
	return api.Lease{Token: j.LeaseToken, Expires: j.LeaseExpires, TTL: api.Duration(s.cfg.LeaseTTL), LogOffset: j.LogOffset}
}

func (s *Server) handleClaim(w http.ResponseWriter, r *http.Request) error {
	var req api.ClaimRequest
	if err := decodeJSON(w, r, 4<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	p := principalFrom(r.Context())
	if err := s.store.TouchRunner(r.Context(), p.runner.ID, s.now()); err != nil {
		return err
	}
	wait := min(max(req.Wait.D(), 0), s.cfg.MaxClaimWait)
	wt := &waiter{ctx: r.Context(), runner: p.runner, slots: req.Slots, capacity: req.Capacity, ch: make(chan claimResult, 1)}
	s.disp.add(wt)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var res claimResult
	select {
	case res = <-wt.ch:
	case <-timer.C:
	case <-r.Context().Done():
	case <-s.stopCtx.Done():
	}
	if res.claims == nil && res.err == nil && !s.disp.remove(wt) {
		res = <-wt.ch // the dispatcher picked us meanwhile
	}
	if res.err != nil {
		return res.err
	}
	if r.Context().Err() != nil {
		s.release(res.claims)
		return nil
	}
	out := api.ClaimResponse{Claims: []api.Claim{}}
	for _, c := range res.claims {
		out.Claims = append(out.Claims, api.Claim{Job: c.Job.Job, Lease: s.lease(c.Job)})
		s.log.Info("job claimed", "job", c.Job.ID, "runner", p.runner.ID, "attempt", c.Job.Attempts, "token", c.Token)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request) error {
	var req api.HeartbeatRequest
	if err := decodeJSON(w, r, 4<<10, &req); err != nil {
		return err
	}
	f, err := fence(r, req.Token)
	if err != nil {
		return err
	}
	changed := s.hub.wait("job:" + f.JobID)
	j, err := s.store.Heartbeat(r.Context(), f, s.cfg.LeaseTTL, s.now())
	if err != nil {
		return err
	}
	if wait := min(req.Wait.D(), s.cfg.LeaseTTL/2); !j.Cancel && wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-changed:
			if j2, err := s.store.CheckLease(r.Context(), f); err == nil {
				j.Cancel = j2.Cancel
			} else if errors.Is(err, store.ErrStaleLease) {
				t.Stop()
				return err
			}
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
	}
	writeJSON(w, http.StatusOK, api.HeartbeatResponse{Cancel: j.Cancel, Lease: s.lease(j)})
	return nil
}

func (s *Server) handleResult(w http.ResponseWriter, r *http.Request) error {
	var req api.ResultRequest
	if err := decodeJSON(w, r, 64<<10, &req); err != nil {
		return err
	}
	if err := req.Validate(); err != nil {
		return err
	}
	if len(req.Reason) > 4096 || !utf8.ValidString(req.Reason) {
		req.Reason = strings.ToValidUTF8(req.Reason[:min(len(req.Reason), 4096)], "?")
	}
	f, err := fence(r, req.Token)
	if err != nil {
		return err
	}
	j, err := s.store.Finish(r.Context(), f, req.State, req.ExitCode, req.Reason, req.LogSize, s.now())
	if err != nil {
		return err
	}
	s.hub.notify("job:" + j.ID)
	s.hub.notify("log:" + j.ID)
	s.log.Info("job finished", "job", j.ID, "state", j.State, "exit_code", req.ExitCode, "runner", f.RunnerID)
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}

func (s *Server) handleSource(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	j, err := s.store.CheckLease(r.Context(), f)
	if err != nil {
		return err
	}
	if j.Source.Kind != api.SourceUpload {
		return fmt.Errorf("job %s has a %s source, nothing uploaded: %w", j.ID, j.Source.Kind, store.ErrNotFound)
	}
	return s.serveBlob(w, r, j.Source.SHA256, "application/gzip")
}

func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, digest, ctype string) error {
	fh, err := s.blobs.open(digest)
	if err != nil {
		return err
	}
	defer fh.Close()
	st, err := fh.Stat()
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.Header().Set("X-Cleanroom-SHA256", digest)
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, fh)
	return nil
}

// --- logs --------------------------------------------------------------------

// MaxLogChunk caps one log append request.
const MaxLogChunk = 1 << 20

func (s *Server) handleAppendLog(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || off < 0 {
		return api.FieldErrors{{Field: "offset", Message: "required: a non-negative byte offset"}}
	}
	data, err := readBody(w, r, MaxLogChunk)
	if err != nil {
		return err
	}
	next, err := s.store.AppendLog(r.Context(), f, off, data)
	if err != nil {
		return err
	}
	s.hub.notify("log:" + f.JobID)
	writeJSON(w, http.StatusOK, api.LogAppendResponse{NextOffset: next})
	return nil
}

func (s *Server) handleReadLog(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	q := r.URL.Query()
	var off int64
	if v := q.Get("offset"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return api.FieldErrors{{Field: "offset", Message: "must be a non-negative byte offset"}}
		}
		off = n
	}
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	if _, err := s.visibleJob(r, id); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	ctx := r.Context()
	for {
		changed := s.hub.wait("log:" + id)
		data, err := s.store.ReadLog(ctx, id, off, 256<<10)
		if err != nil {
			return nil // headers are out; the client sees a short body
		}
		if len(data) > 0 {
			if _, err := w.Write(data); err != nil {
				return nil
			}
			off += int64(len(data))
			if fl != nil && follow {
				fl.Flush()
			}
			continue
		}
		if !follow {
			return nil
		}
		j, err := s.store.Job(ctx, id)
		if err != nil {
			return nil
		}
		if api.Terminal(j.State) && off >= j.LogSize {
			return nil
		}
		if api.Terminal(j.State) {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		case <-s.stopCtx.Done():
			return nil
		}
	}
}

// --- egress ------------------------------------------------------------------

// MaxEgressBatch caps the events in one POST.
const MaxEgressBatch = 10000

func (s *Server) handlePostEgress(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	seq, err := strconv.ParseInt(r.URL.Query().Get("seq"), 10, 64)
	if err != nil || seq < 0 {
		return api.FieldErrors{{Field: "seq", Message: "required: the job-wide number of the first event"}}
	}
	body, err := readBody(w, r, 8<<20)
	if err != nil {
		return err
	}
	events, err := parseEvents(body)
	if err != nil {
		return err
	}
	if err := s.store.AddEgress(r.Context(), f, seq, events); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]int{"stored": len(events)})
	return nil
}

// parseEvents accepts a JSON array or JSON lines and validates each event.
func parseEvents(body []byte) ([]api.EgressEvent, error) {
	var events []api.EgressEvent
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		if err := json.Unmarshal(trimmed, &events); err != nil {
			return nil, api.FieldErrors{{Field: "body", Message: "decoding event array: " + err.Error()}}
		}
	} else {
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for i := 0; sc.Scan(); i++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			var e api.EgressEvent
			if err := json.Unmarshal(line, &e); err != nil {
				return nil, api.FieldErrors{{Field: fmt.Sprintf("events[%d]", len(events)), Message: err.Error()}}
			}
			events = append(events, e)
		}
		if err := sc.Err(); err != nil {
			return nil, api.FieldErrors{{Field: "body", Message: err.Error()}}
		}
	}
	if len(events) > MaxEgressBatch {
		return nil, api.FieldErrors{{Field: "body", Message: fmt.Sprintf("at most %d events per request", MaxEgressBatch)}}
	}
	var fe api.FieldErrors
	for i, e := range events {
		if e.Verdict != api.VerdictAllow && e.Verdict != api.VerdictDeny {
			fe = append(fe, api.FieldError{Field: fmt.Sprintf("events[%d].verdict", i), Message: "must be allow or deny"})
		}
		if e.Proto == "" {
			fe = append(fe, api.FieldError{Field: fmt.Sprintf("events[%d].proto", i), Message: "required"})
		}
	}
	if len(fe) > 0 {
		return nil, fe
	}
	return events, nil
}

func (s *Server) handleQueryEgress(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := api.EgressFilter{Job: q.Get("job"), Runner: q.Get("runner"), Verdict: q.Get("verdict")}
	var fe api.FieldErrors
	for _, tf := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := q.Get(tf.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				fe = append(fe, api.FieldError{Field: tf.name, Message: "must be an RFC 3339 time"})
			}
			*tf.dst = t
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fe = append(fe, api.FieldError{Field: "limit", Message: "must be a positive number"})
		}
		f.Limit = n
	}
	if err := f.Validate(); err != nil {
		fe = append(fe, api.PrefixFields("", err)...)
	}
	if len(fe) > 0 {
		return fe
	}
	sf := store.EgressFilter{EgressFilter: f}
	if p := principalFrom(r.Context()); p.kind == principalSubmit {
		sf.Submitter = p.tokenID
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	started := false
	err := s.store.QueryEgress(r.Context(), sf, func(e api.EgressEvent) error {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		return enc.Encode(e)
	})
	if err != nil && !started {
		return err
	}
	if !started {
		w.WriteHeader(http.StatusOK)
	}
	return nil
}

// --- artifacts ---------------------------------------------------------------

func (s *Server) handlePutArtifact(w http.ResponseWriter, r *http.Request) error {
	f, err := fence(r, 0)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	a := api.Artifact{Name: r.PathValue("name"), Kind: q.Get("kind"), SHA256: q.Get("sha256")}
	if a.Kind == "" {
		a.Kind = api.KindFile
	}
	if err := a.Validate(); err != nil {
		return err
	}
	if _, err := s.store.CheckLease(r.Context(), f); err != nil {
		return err
	}
	digest, size, err := s.blobs.put(http.MaxBytesReader(w, r.Body, s.cfg.MaxArtifact+1), s.cfg.MaxArtifact, a.SHA256)
	if errors.Is(err, errDigestMismatch) {
		return api.FieldErrors{{Field: "sha256", Message: err.Error()}}
	}
	if err != nil {
		return err
	}
	a.SHA256, a.Size, a.CreatedAt = digest, size, s.now().UTC()
	if err := s.store.AddArtifact(r.Context(), f, a); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, a)
	return nil
}

func (s *Server) handleListArtifacts(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if _, err := s.visibleJob(r, id); err != nil {
		return err
	}
	as, err := s.store.ListArtifacts(r.Context(), id)
	if err != nil {
		return err
	}
	if as == nil {
		as = []api.Artifact{}
	}
	writeJSON(w, http.StatusOK, as)
	return nil
}

func (s *Server) handleGetArtifact(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.visibleJob(r, r.PathValue("id")); err != nil {
		return err
	}
	a, err := s.store.Artifact(r.Context(), r.PathValue("id"), r.PathValue("name"))
	if err != nil {
		return err
	}
	return s.serveBlob(w, r, a.SHA256, "application/octet-stream")
}
