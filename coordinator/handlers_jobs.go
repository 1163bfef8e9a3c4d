package coordinator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

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
	// A job's team is its submit token's; an admin-submitted job has none
	// (an admin submits for a team with a submit token of that team).
	p := principalFrom(r.Context())
	id, err := submitID(p, r.Header.Get(api.IdempotencyKeyHeader))
	if err != nil {
		return err
	}
	j := store.Job{Job: api.Job{ID: id, State: api.StateQueued, Spec: spec, Source: src,
		MaxAttempts: spec.MaxAttempts, CreatedAt: s.now().UTC(), Submitter: p.submitter(), Team: p.team}}
	if err := s.store.CreateJob(r.Context(), j); errors.Is(err, store.ErrExists) && r.Header.Get(api.IdempotencyKeyHeader) != "" {
		return s.resubmitted(w, r, j)
	} else if err != nil {
		return err
	}
	s.changed(store.ChangeQueue)
	s.log.Info("job submitted", "job", j.ID, "source", src.Kind, "labels", spec.Labels, "team", j.Team)
	writeJSON(w, http.StatusCreated, j.Job)
	return nil
}

// submitID is a new job's id: random, or, when the client sent an
// idempotency key, derived from the key and the submitting principal, so a
// submit retried with its key (on this coordinator or another one on the
// store) names the job its first attempt may have created, and a key cannot
// name another principal's job.
func submitID(p principal, key string) (string, error) {
	if key == "" {
		return newID("j-", 8), nil
	}
	if err := api.CheckIdempotencyKey(key); err != nil {
		return "", api.FieldErrors{{Field: api.IdempotencyKeyHeader, Message: err.Error()}}
	}
	sum := sha256.Sum256([]byte("cleanroom submit\x00" + p.submitter() + "\x00" + key))
	return "j-" + hex.EncodeToString(sum[:8]), nil
}

// resubmitted answers a submit whose idempotency key already created a job:
// with that job (200) when the request is the same, 409 otherwise (a key
// reused for another build).
func (s *Server) resubmitted(w http.ResponseWriter, r *http.Request, want store.Job) error {
	got, err := s.store.Job(r.Context(), want.ID)
	if err != nil {
		return err
	}
	if got.Submitter != want.Submitter || !sameJSON(got.Spec, want.Spec) || !sameJSON(got.Source, want.Source) {
		return fmt.Errorf("%s %q was already used for a different submit: %w", api.IdempotencyKeyHeader,
			r.Header.Get(api.IdempotencyKeyHeader), store.ErrConflict)
	}
	s.log.Info("job submit repeated", "job", got.ID)
	writeJSON(w, http.StatusOK, got.Job)
	return nil
}

// sameJSON compares a and b as the store keeps them: encoded, decoded and
// encoded again (so nil and empty collections compare as stored).
func sameJSON[T any](a, b T) bool {
	norm := func(v T) string {
		raw, _ := json.Marshal(v)
		var back T
		_ = json.Unmarshal(raw, &back)
		out, _ := json.Marshal(back)
		return string(out)
	}
	return norm(a) == norm(b)
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
			digest, size, err := s.store.PutBlob(r.Context(), p, s.cfg.MaxUpload, declared)
			switch {
			case errors.Is(err, api.ErrTooLarge):
				return spec, src, api.FieldErrors{{Field: "source", Message: fmt.Sprintf("upload larger than %d bytes", s.cfg.MaxUpload)}}
			case errors.Is(err, store.ErrDigestMismatch):
				fe = append(fe, api.FieldError{Field: "sha256", Message: err.Error()})
			case err != nil:
				return spec, src, err
			default:
				src.SHA256, src.Size = digest, size
				if err := s.checkGzip(r.Context(), digest); err != nil {
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

func (s *Server) checkGzip(ctx context.Context, digest string) error {
	f, err := s.store.OpenBlob(ctx, digest)
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
	if err := api.CheckJobState(f.State); err != nil {
		return api.FieldErrors{{Field: "state", Message: err.Error()}}
	}
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
	return s.jobFor(r.Context(), principalFrom(r.Context()), id)
}

// jobFor is visibleJob for principal p (the console's sessions).
func (s *Server) jobFor(ctx context.Context, p principal, id string) (store.Job, error) {
	j, err := s.store.Job(ctx, id)
	if err != nil {
		return j, err
	}
	if p.kind == principalSubmit && j.Submitter != p.tokenID {
		return store.Job{}, fmt.Errorf("looking up job %s: %w", id, store.ErrNotFound)
	}
	return j, nil
}

func (s *Server) handleGetJob(w http.ResponseWriter, r *http.Request) error {
	j, err := s.visibleJob(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	out, err := s.withQueuedReason(r.Context(), j.Job)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
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
	s.changed(store.ChangeJob(j.ID), store.ChangeLog(j.ID))
	s.log.Info("job cancel requested", "job", j.ID, "state", j.State)
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}
