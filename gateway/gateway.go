// Package gateway owns the registry gateway: the only thing a job's sandbox
// can reach. Per job it serves GET/HEAD for exactly the tarballs of the
// job's lockfile (every other method, path and package gets a 403 naming
// the rule), fetches them from the internal registry with the agent's
// credentials (the sandbox holds none), verifies each against the
// lockfile's integrity before a byte reaches the sandbox, and keeps the
// verified bytes in an agent-wide content-addressed cache. Every request is
// an egress event (proto "http").
//
// It is a leaf: it imports none of sandbox, netpolicy, secrets or
// supplychain; the agent (agent/buildexec) composes it with them.
package gateway

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Rules named by denied gateway events and 403 bodies.
const (
	RuleNotInLockfile     = "not-in-lockfile"    // a tarball or packument of a package the lockfile does not pin
	RuleRegistryWrite     = "registry-write"     // publish, unpublish, dist-tag, adduser/login, tokens (any method but GET/HEAD)
	RuleRegistryAPI       = "registry-api"       // search, whoami, audit, ping and any other registry endpoint
	RuleIntegrityMismatch = "integrity-mismatch" // upstream bytes differ from the lockfile's integrity
	RuleReleaseTooNew     = "release-too-new"    // published less than min_release_age ago
	RuleSHA1Only          = "sha1-only"          // a sha1-only entry without the allow_sha1 opt-in
	RuleUpstream          = "upstream-error"     // the registry could not be reached or answered an error
	RuleAllowed           = "lockfile"           // an allowed request: pinned by the lockfile
)

// ProtoHTTP is the proto of gateway events.
const ProtoHTTP = "http"

// Entry is one tarball a job may fetch: a lockfile entry.
type Entry struct {
	// Name is the package's real name, e.g. "@scope/pkg".
	Name    string
	Version string
	// Resolved is the lockfile's resolved URL (on the internal registry or
	// on an alias host); empty when the lockfile has none.
	Resolved string
	// Integrity is the lockfile's SRI string ("sha512-…", possibly several
	// space-separated hashes, or a sha1 one in old lockfiles).
	Integrity string
}

// Upstream is a registry the gateway fetches from, with the agent's
// credential for it. Only the agent holds it; it never reaches a sandbox.
type Upstream struct {
	// URL is the registry's base URL, e.g. "http://registry.cleanroom.test:4873/".
	URL string
	// Token is sent upstream as "Authorization: Bearer" ("" = anonymous).
	Token string
	// Scopes ("@acme") whose packages come from this upstream; the
	// default upstream (the first without scopes) serves every other name.
	Scopes []string
}

// Config is the agent-wide gateway configuration.
type Config struct {
	Upstreams []Upstream
	// Aliases are hosts the internal registry mirrors (default
	// "registry.npmjs.org"): lockfile entries resolved there are fetched
	// from the upstream serving their name, integrity-checked as any.
	Aliases []string
	// Cache is the shared verified-tarball cache (required).
	Cache *Cache
	// Client fetches from upstreams (default: a client with timeouts that
	// ignores proxy settings from the environment).
	Client *http.Client
	// AllowSHA1 accepts sha1-only lockfile entries when the tarball
	// matches both the sha1 and the sha512 the registry publishes.
	AllowSHA1 bool
	// MinReleaseAge refuses versions published less than this long ago
	// (0: off). A job may make it stricter, never looser.
	MinReleaseAge time.Duration
	Now           func() time.Time
	Logger        hclog.Logger
}

// Gateway is the agent-wide part: upstreams, the cache, the HTTP client.
// Safe for concurrent use by every job of the agent.
type Gateway struct {
	cfg Config
}

// New checks cfg (fail closed: no upstream or a malformed URL is an error).
func New(cfg Config) (*Gateway, error) {
	return nil, errors.New("gateway: not implemented")
}

// Job is one job's view of the gateway.
type Job struct {
	// Job, Runner and Sandbox attribute the job's events.
	Job, Runner, Sandbox string
	// Entries are the lockfile's tarballs, the only ones served.
	Entries []Entry
	// MinReleaseAge is the job's own cooldown; the stricter of it and the
	// agent's applies.
	MinReleaseAge time.Duration
	// OnEvent receives every request's event, allowed or denied (it must
	// not block).
	OnEvent func(api.EgressEvent)
	// Redact removes secrets from paths before they are logged.
	Redact func(string) string
}

// RefusedError says why a job may not run: each entry refused and the
// rule (e.g. release-too-new with its age, sha1-only).
type RefusedError struct {
	Refusals []Refusal
}

// Refusal is one refused entry.
type Refusal struct {
	Entry  Entry
	Rule   string
	Reason string
}

func (e *RefusedError) Error() string { return "gateway refused the lockfile" }

// Check runs before any sandbox exists: every upstream answers (with its
// credential accepted), sha1-only entries are allowed, and no version is
// younger than the release-age policy. A refusal is a *RefusedError; an
// upstream that cannot be reached is another error saying which.
func (g *Gateway) Check(ctx context.Context, j Job) error {
	return errors.New("gateway: not implemented")
}

// Prefetch fetches and verifies every entry into the cache (a cached one
// costs a stat), so an altered tarball fails the job before install.
// progress, if set, is called after each entry. An integrity mismatch is
// an error naming the package.
func (g *Gateway) Prefetch(ctx context.Context, j Job, progress func(done, total int)) error {
	return errors.New("gateway: not implemented")
}

// Serve starts the job's endpoint on ln (the host end of the job's veth)
// and returns at once; Close the JobServer to stop it.
func (g *Gateway) Serve(ln net.Listener, j Job) (*JobServer, error) {
	return nil, errors.New("gateway: not implemented")
}

// JobServer is one job's running endpoint.
type JobServer struct{}

// URL is the registry URL the job's npmrc names.
func (s *JobServer) URL() string { return "" }

// Failure is the first integrity mismatch or upstream failure served to
// the job (nil if none): the job fails with it, naming the package.
func (s *JobServer) Failure() error { return nil }

// Close stops the endpoint and waits for its requests to end.
func (s *JobServer) Close() error { return nil }

// Cache is the agent-wide content-addressed cache of verified tarballs,
// keyed by sha512. Writes are atomic, concurrent fetches of one tarball
// make one upstream request, and the size cap evicts the least recently
// used. No sandbox mounts it; bytes leave it only through the gateway,
// verified again on the way out.
type Cache struct{}

// OpenCache opens (creating) the cache in dir with a size cap in bytes.
func OpenCache(dir string, maxBytes int64) (*Cache, error) {
	return nil, errors.New("gateway: not implemented")
}

// GCReport says what GC removed.
type GCReport struct {
	Removed int
	Bytes   int64
	Kept    int
	Size    int64
}

// GC removes partial writes and evicts least recently used entries down to
// the cap (cleanroom gc).
func (c *Cache) GC(ctx context.Context) (GCReport, error) {
	return GCReport{}, errors.New("gateway: not implemented")
}
