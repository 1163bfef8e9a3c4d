package coordinator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// Token prefixes say what a token is at a glance (and in a leaked-secret
// scanner). Every token but the admin one is "<prefix><id>.<secret>": the id
// finds the row, the secret's sha256 is compared in constant time, and only
// that hash is ever stored.
const (
	PrefixAdmin        = "cra_"
	PrefixSubmit       = "crs_"
	PrefixRegistration = "crg_"
	PrefixRunner       = "crr_"
	PrefixAudit        = "cru_"
)

// newSecret returns 32 random bytes, base64url without padding.
func newSecret() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// newID returns prefix plus n random bytes in hex.
func newID(prefix string, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("reading random bytes: %v", err))
	}
	return prefix + hex.EncodeToString(b)
}

func hashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// NewAdminToken returns a fresh admin token.
func NewAdminToken() string { return PrefixAdmin + newSecret() }

// splitToken parses "<prefix><id>.<secret>".
func splitToken(tok, prefix string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(tok, prefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, ".")
	if !ok || id == "" || secret == "" {
		return "", "", false
	}
	return id, secret, true
}

// EnsureAdminToken returns the admin token kept in file, creating the file
// (mode 0600, directory 0700) with a new token when it does not exist;
// created tells the caller to print the token once.
func EnsureAdminToken(file string) (token string, created bool, err error) {
	b, err := os.ReadFile(file)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if !strings.HasPrefix(tok, PrefixAdmin) || len(tok) < len(PrefixAdmin)+32 {
			return "", false, fmt.Errorf("reading admin token %s: not a cleanroom admin token", file)
		}
		return tok, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("reading admin token %s: %w", file, err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return "", false, fmt.Errorf("creating admin token directory: %w", err)
	}
	tok := NewAdminToken()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("creating admin token %s: %w", file, err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("writing admin token %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("writing admin token %s: %w", file, err)
	}
	return tok, true, nil
}

// Principal kinds.
const (
	principalAdmin  = "admin"
	principalSubmit = "submit"
	principalAudit  = "audit"
	principalRunner = "runner"
)

type principal struct {
	kind   string
	runner store.Runner
	// tokenID is the submit or audit token's id.
	tokenID string
	// team is the submit token's team ("" for none).
	team string
}

// submitter is what a job submitted by p records as its submitter.
func (p principal) submitter() string {
	if p.kind == principalSubmit {
		return p.tokenID
	}
	return p.kind
}

type principalKey struct{}

func principalFrom(ctx context.Context) principal {
	p, _ := ctx.Value(principalKey{}).(principal)
	return p
}

// authenticate resolves the bearer token of r.
func (s *Server) authenticate(r *http.Request) (principal, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return principal{}, fmt.Errorf("reading bearer token: %w", api.ErrUnauthorized)
	}
	return s.authenticateToken(r.Context(), strings.TrimSpace(tok))
}

// authenticateToken resolves a token (from a bearer header or the
// console's sign-in form).
func (s *Server) authenticateToken(ctx context.Context, tok string) (principal, error) {
	switch {
	case strings.HasPrefix(tok, PrefixAdmin):
		if subtle.ConstantTimeCompare(hashSecret(tok), s.adminHash) == 1 {
			return principal{kind: principalAdmin}, nil
		}
	case strings.HasPrefix(tok, PrefixRunner):
		id, secret, ok := splitToken(tok, PrefixRunner)
		if !ok {
			break
		}
		rn, err := s.store.Runner(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if err != nil {
			return principal{}, err
		}
		if subtle.ConstantTimeCompare(hashSecret(secret), rn.TokenHash) == 1 && rn.RevokedAt == nil {
			return principal{kind: principalRunner, runner: rn}, nil
		}
	case strings.HasPrefix(tok, PrefixSubmit), strings.HasPrefix(tok, PrefixAudit):
		prefix, kind := PrefixSubmit, principalSubmit
		if strings.HasPrefix(tok, PrefixAudit) {
			prefix, kind = PrefixAudit, principalAudit
		}
		id, secret, ok := splitToken(tok, prefix)
		if !ok {
			break
		}
		t, err := s.store.CheckToken(ctx, kind, id, hashSecret(secret), s.now())
		if err == nil {
			return principal{kind: kind, tokenID: id, team: t.Team}, nil
		}
		if !errors.Is(err, store.ErrTokenInvalid) {
			return principal{}, err
		}
	}
	return principal{}, fmt.Errorf("checking bearer token: %w", api.ErrUnauthorized)
}

// auth wraps h so only the given principal kinds reach it.
func (s *Server) auth(kinds []string, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		p, err := s.authenticate(r)
		if err != nil {
			return err
		}
		if !slices.Contains(kinds, p.kind) {
			return fmt.Errorf("a %s token may not call %s %s: %w", p.kind, r.Method, r.URL.Path, api.ErrForbidden)
		}
		return h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	}
}

var (
	adminOnly = []string{principalAdmin}
	// readers read jobs, logs, artifacts and egress events: a submit token
	// only those of its own jobs (see visibleJob).
	readers = []string{principalAdmin, principalSubmit, principalAudit}
	// submitters submit and cancel (a submit token only its own jobs).
	submitters = []string{principalAdmin, principalSubmit}
	runnerOnly = []string{principalRunner}
)
