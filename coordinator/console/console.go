// Package console owns the coordinator's read-only web console under /ui/:
// the jobs list, a job's page (spec, status, log with live follow, egress
// events, artifacts with SBOM and provenance verification), the egress
// explorer with JSON lines and CSV export, and the runners page; sign-in
// with an admin, submit or audit token into a server-side session; and the
// security headers every answer carries. Pages are rendered on the server
// with html/template from embedded files and work without JavaScript; one
// small embedded script follows a running job's log.
//
// What a signed-in token sees is decided by the coordinator through
// Backend, with the same rules as the API (docs/console.md).
package console

import (
	"context"
	"crypto/ed25519"
	"embed"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// Principal kinds a console session can have (runner tokens cannot sign in).
const (
	KindAdmin  = "admin"
	KindSubmit = "submit"
	KindAudit  = "audit"
)

// Principal is who a session belongs to.
type Principal struct {
	// Kind is KindAdmin, KindSubmit or KindAudit.
	Kind string
	// TokenID is the submit or audit token's id ("" for admin).
	TokenID string
}

// Backend is what the console needs from the coordinator. Every method
// taking a Principal answers exactly what the API answers the same token:
// a job p may not read is store.ErrNotFound, lists and egress queries are
// narrowed to what p may read, a page p may not open is api.ErrForbidden.
type Backend interface {
	// Authenticate resolves an admin, submit or audit token; any other
	// token (including a runner's) is an api.ErrUnauthorized error.
	Authenticate(ctx context.Context, token string) (Principal, error)
	Jobs(ctx context.Context, p Principal, f store.JobFilter) ([]store.Job, error)
	Job(ctx context.Context, p Principal, id string) (store.Job, error)
	// DeniedCounts counts denied egress events of each of the jobs, which
	// must come from Jobs for the same p.
	DeniedCounts(ctx context.Context, p Principal, jobIDs []string) (map[string]int, error)
	ReadLog(ctx context.Context, p Principal, jobID string, offset int64, max int) ([]byte, error)
	// LogChanged returns a channel closed at the job's next log append or
	// state change; take it before reading, then wait on it.
	LogChanged(jobID string) <-chan struct{}
	Egress(ctx context.Context, p Principal, f store.EgressFilter, fn func(api.EgressEvent) error) error
	Artifacts(ctx context.Context, p Principal, jobID string) ([]api.Artifact, error)
	OpenArtifact(ctx context.Context, p Principal, jobID, name string) (io.ReadCloser, api.Artifact, error)
	Runners(ctx context.Context, p Principal) ([]store.Runner, error)
	// RunnerKey returns a runner's registered public key and when it was
	// revoked (public information, as GET /v1/runners/{id}/key).
	RunnerKey(ctx context.Context, runnerID string) (ed25519.PublicKey, *time.Time, error)
	// Done is closed when the coordinator shuts down (ends live follows).
	Done() <-chan struct{}
}

// Options configure a Console. Zero values take the defaults.
type Options struct {
	// SessionTTL is how long a sign-in lasts (default 8h).
	SessionTTL time.Duration
	// MaxSessions bounds the sessions kept in memory (default 10000); the
	// oldest is dropped to make room.
	MaxSessions int
	// Logger receives failures (default: discard).
	Logger hclog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// Prefix is the path the console is served under.
const Prefix = "/ui/"

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Console is the web console; it is an http.Handler for Prefix.
type Console struct {
	b        Backend
	opts     Options
	log      hclog.Logger
	sessions *sessions
	pages    map[string]*template.Template
	mux      *http.ServeMux
}

// New returns the console for b.
func New(b Backend, opts Options) *Console {
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 8 * time.Hour
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 10000
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Console{b: b, opts: opts, log: opts.Logger, sessions: newSessions(opts.SessionTTL, opts.MaxSessions, opts.Now),
		pages: parsePages(), mux: http.NewServeMux()}
	c.routes()
	return c
}

func (c *Console) routes() {
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	csrf := http.NewCrossOriginProtection()
	c.mux.HandleFunc("GET /ui/signin", c.handleSignInForm)
	c.mux.Handle("POST /ui/signin", csrf.Handler(http.HandlerFunc(c.handleSignIn)))
	c.mux.Handle("POST /ui/signout", csrf.Handler(http.HandlerFunc(c.handleSignOut)))

	page := func(pattern string, h pageFunc) { c.mux.HandleFunc(pattern, c.page(h)) }
	c.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/jobs", http.StatusSeeOther)
	})
	page("GET /ui/jobs", c.handleJobs)
	page("GET /ui/jobs/{id}", c.handleJob)
	page("GET /ui/egress", c.handleEgress)
	page("GET /ui/runners", c.handleRunners)

	data := func(pattern string, h dataFunc) { c.mux.HandleFunc(pattern, c.data(h)) }
	data("GET /ui/jobs/{id}/log.txt", c.handleLogText)
	data("GET /ui/jobs/{id}/log/events", c.handleLogEvents)
	data("GET /ui/jobs/{id}/artifacts/{name...}", c.handleArtifact)
	data("GET /ui/egress/export.jsonl", c.handleExportJSONL)
	data("GET /ui/egress/export.csv", c.handleExportCSV)
}

// ContentSecurityPolicy is sent with every answer: only the console's own
// script and stylesheet run, no inline script or style, no plugins, no
// <base>, no framing, forms post only to the console.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"

// ServeHTTP sets the security headers and serves the console.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// pageFunc renders an HTML page for a signed-in principal.
type pageFunc func(w http.ResponseWriter, r *http.Request, p Principal) error

// dataFunc answers a non-HTML resource (log, export, artifact, event
// stream) for a signed-in principal.
type dataFunc func(w http.ResponseWriter, r *http.Request, p Principal) error

// page resolves the session (sending the browser to sign in without one)
// and renders h's error as an error page.
func (c *Console) page(h pageFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := c.principal(w, r)
		if !ok {
			http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
			return
		}
		if err := h(w, r, p); err != nil {
			c.errorPage(w, r, p, err)
		}
	}
}

// data resolves the session (401 without one) and answers h's error as
// plain text.
func (c *Console) data(h dataFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := c.principal(w, r)
		if !ok {
			http.Error(w, "sign in at /ui/signin", http.StatusUnauthorized)
			return
		}
		if err := h(w, r, p); err != nil {
			status := api.StatusOf(err)
			if status >= 500 {
				if r.Context().Err() != nil {
					return
				}
				c.log.Error("console request failed", "path", r.URL.Path, "error", err)
			}
			http.Error(w, http.StatusText(status), status)
		}
	}
}

// principal returns the session's principal, re-checking its token so a
// revoked or expired token ends the session at once.
func (c *Console) principal(w http.ResponseWriter, r *http.Request) (Principal, bool) {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return Principal{}, false
	}
	token, ok := c.sessions.get(ck.Value)
	if !ok {
		return Principal{}, false
	}
	p, err := c.b.Authenticate(r.Context(), token)
	if err != nil {
		if errors.Is(err, api.ErrUnauthorized) {
			c.sessions.remove(ck.Value)
			clearCookie(w, r)
		} else {
			c.log.Error("console: checking a session's token", "error", err)
		}
		return Principal{}, false
	}
	return p, true
}

func (c *Console) errorPage(w http.ResponseWriter, r *http.Request, p Principal, err error) {
	status := api.StatusOf(err)
	msg := http.StatusText(status)
	switch {
	case status == http.StatusNotFound:
		msg = "Not found, or not visible to this token."
	case status == http.StatusForbidden:
		msg = "This token may not open this page."
	case status == http.StatusBadRequest:
		msg = err.Error()
	case status >= 500:
		if r.Context().Err() != nil {
			return
		}
		c.log.Error("console request failed", "path", r.URL.Path, "error", err)
		msg = "Internal error (logged by the coordinator)."
	}
	c.render(w, r, status, "error", p, map[string]any{"Status": status, "Message": msg})
}
