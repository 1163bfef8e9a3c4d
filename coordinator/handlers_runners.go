package coordinator

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

func toAPIRunner(r store.Runner) api.Runner { return r.Runner }

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

func (s *Server) handleRunnerKey(w http.ResponseWriter, r *http.Request) error {
	rn, err := s.store.Runner(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.RunnerKey{RunnerID: rn.ID, Name: rn.Name, Algorithm: "ed25519", PublicKey: rn.PublicKey, RevokedAt: rn.RevokedAt})
	return nil
}
