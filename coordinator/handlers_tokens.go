package coordinator

import (
	"net/http"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

func toTokenInfo(t store.Token) api.TokenInfo {
	return api.TokenInfo{ID: t.ID, Kind: t.Kind, Note: t.Note, Team: t.Team, CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt,
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
	t := store.Token{ID: newID("t-", 6), Kind: req.Kind, CreatedAt: now, Note: req.Note, Team: req.Team}
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
	s.log.Info("token created", "id", t.ID, "kind", t.Kind, "expires", t.ExpiresAt, "uses", req.Uses, "team", t.Team)
	writeJSON(w, http.StatusCreated, api.TokenResponse{ID: t.ID, Kind: t.Kind, Token: prefix + t.ID + "." + secret, ExpiresAt: t.ExpiresAt, Uses: req.Uses, Team: t.Team})
	return nil
}
