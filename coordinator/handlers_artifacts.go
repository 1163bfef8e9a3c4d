package coordinator

import (
	"errors"
	"net/http"
	"path"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

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
	digest, size, err := s.store.PutBlob(r.Context(), http.MaxBytesReader(w, r.Body, s.cfg.MaxArtifact+1), s.cfg.MaxArtifact, a.SHA256)
	if errors.Is(err, store.ErrDigestMismatch) {
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
	return s.serveBlob(w, r, a.SHA256, "application/octet-stream", path.Base(a.Name))
}
