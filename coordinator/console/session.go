package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// CookieName is the session cookie. Its value is a random session id; the
// token it stands for stays on the server.
const CookieName = "cleanroom_session"

// sessions maps session ids to the token signed in with, in memory: a
// coordinator restart signs everyone out. Ids are kept hashed, so the map
// (and a timing side channel on its lookups) never holds a usable id.
type sessions struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[[32]byte]session
}

type session struct {
	token   string
	expires time.Time
	created time.Time
}

func newSessions(ttl time.Duration, max int, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, max: max, now: now, m: map[[32]byte]session{}}
}

func sessionKey(id string) [32]byte { return sha256.Sum256([]byte(id)) }

// create stores a session for token and returns its id (32 random bytes).
func (s *sessions) create(token string) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("reading random bytes: " + err.Error())
	}
	id := base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if !now.Before(v.expires) {
			delete(s.m, k)
		}
	}
	for len(s.m) >= s.max {
		var oldest [32]byte
		var first = true
		var at time.Time
		for k, v := range s.m {
			if first || v.created.Before(at) {
				oldest, at, first = k, v.created, false
			}
		}
		delete(s.m, oldest)
	}
	s.m[sessionKey(id)] = session{token: token, expires: now.Add(s.ttl), created: now}
	return id
}

// get returns the token of a live session.
func (s *sessions) get(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := sessionKey(id)
	v, ok := s.m[k]
	if !ok {
		return "", false
	}
	if !s.now().Before(v.expires) {
		delete(s.m, k)
		return "", false
	}
	return v.token, true
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	delete(s.m, sessionKey(id))
	s.mu.Unlock()
}

// len is the number of sessions kept (tests).
func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// setCookie sends the session cookie: HttpOnly, SameSite=Strict, Secure
// when the request came over TLS, scoped to the console, gone with the
// session.
func setCookie(w http.ResponseWriter, r *http.Request, id string, ttl time.Duration) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: Prefix, MaxAge: int(ttl.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

func clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: Prefix, MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

func (c *Console) handleSignInForm(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "signin", Principal{}, map[string]any{})
}

// handleSignIn checks the posted token and starts a session. The token
// comes only in the form body, never in a URL.
func (c *Console) handleSignIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		c.render(w, r, http.StatusBadRequest, "signin", Principal{}, map[string]any{"Error": "The form could not be read."})
		return
	}
	token := strings.TrimSpace(r.PostForm.Get("token"))
	p, err := c.b.Authenticate(r.Context(), token)
	if err != nil {
		status := api.StatusOf(err)
		msg := "The token was refused: unknown, expired, revoked, or not an admin, submit or audit token."
		if status >= 500 {
			c.log.Error("console sign-in failed", "error", err)
			msg = "Internal error (logged by the coordinator)."
		} else {
			status = http.StatusUnauthorized
		}
		c.render(w, r, status, "signin", Principal{}, map[string]any{"Error": msg})
		return
	}
	if ck, err := r.Cookie(CookieName); err == nil {
		c.sessions.remove(ck.Value) // never reuse a session id across sign-ins
	}
	setCookie(w, r, c.sessions.create(token), c.opts.SessionTTL)
	c.log.Info("console sign-in", "kind", p.Kind, "token_id", p.TokenID)
	http.Redirect(w, r, "/ui/jobs", http.StatusSeeOther)
}

func (c *Console) handleSignOut(w http.ResponseWriter, r *http.Request) {
	if ck, err := r.Cookie(CookieName); err == nil {
		c.sessions.remove(ck.Value)
	}
	clearCookie(w, r)
	http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
}
