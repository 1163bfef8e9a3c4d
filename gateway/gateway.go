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
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
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
	RuleAllowedSHA1       = "lockfile-sha1"      // an allowed sha1-only tarball (allow_sha1): matched the lockfile's sha1 and the registry's sha512
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
	cfg     Config
	ups     []*upstream
	deflt   *upstream
	aliases map[string]bool // lowercase host names
	client  *http.Client
	cache   *Cache
	log     hclog.Logger
	now     func() time.Time

	// published remembers the sha512 the registry publishes for sha1-only
	// entries (AllowSHA1), by name@version.
	publishedMu sync.Mutex
	published   map[string][]byte
}

// upstream is a parsed Upstream.
type upstream struct {
	base   *url.URL // path ends with "/"
	token  string
	scopes []string
}

// String names the upstream in errors and logs: its URL, never its token.
func (u *upstream) String() string { return u.base.String() }

// DefaultAliases are the registry_aliases when the agent sets none.
var DefaultAliases = []string{"registry.npmjs.org"}

// New checks cfg (fail closed: no upstream or a malformed URL is an error).
func New(cfg Config) (*Gateway, error) {
	if cfg.Cache == nil {
		return nil, errors.New("gateway: no cache configured")
	}
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("gateway: no upstream registry configured")
	}
	g := &Gateway{cfg: cfg, cache: cfg.Cache, log: cfg.Logger, now: cfg.Now, aliases: map[string]bool{},
		published: map[string][]byte{}}
	if g.log == nil {
		g.log = hclog.NewNullLogger()
	}
	if g.now == nil {
		g.now = time.Now
	}
	for _, u := range cfg.Upstreams {
		base, err := url.Parse(u.URL)
		if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" ||
			base.User != nil || base.RawQuery != "" || base.Fragment != "" {
			return nil, fmt.Errorf("gateway: upstream URL %q is not an http(s) base URL without credentials", u.URL)
		}
		if !strings.HasSuffix(base.Path, "/") {
			base.Path += "/"
		}
		base.RawPath = ""
		up := &upstream{base: base, token: u.Token}
		for _, sc := range u.Scopes {
			if !strings.HasPrefix(sc, "@") || strings.Contains(sc, "/") || len(sc) < 2 {
				return nil, fmt.Errorf("gateway: scope %q of upstream %s is not of the form @scope", sc, up)
			}
			up.scopes = append(up.scopes, sc)
		}
		if len(up.scopes) == 0 && g.deflt == nil {
			g.deflt = up
		}
		g.ups = append(g.ups, up)
	}
	if g.deflt == nil {
		return nil, errors.New("gateway: no default upstream (one without scopes) configured")
	}
	aliases := cfg.Aliases
	if aliases == nil {
		aliases = DefaultAliases
	}
	for _, a := range aliases {
		g.aliases[strings.ToLower(a)] = true
	}
	g.client = g.upstreamClient(cfg.Client)
	return g, nil
}

// upstreamClient is c (or the default client) refusing redirects to any
// host that is not an upstream: a registry may redirect tarballs to its
// own storage, never elsewhere with the agent's credential.
func (g *Gateway) upstreamClient(c *http.Client) *http.Client {
	var cc http.Client
	if c != nil {
		cc = *c
	} else {
		cc = http.Client{Transport: &http.Transport{
			Proxy:                 nil, // never HTTP_PROXY from the agent's environment
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: time.Minute,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   32,
			ForceAttemptHTTP2:     true,
		}}
	}
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		for _, u := range g.ups {
			if strings.EqualFold(hostPort(req.URL), hostPort(u.base)) {
				return nil
			}
		}
		return fmt.Errorf("redirect to %s refused: not an upstream registry", req.URL.Host)
	}
	return &cc
}

// hostPort is u's host with its port made explicit.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

// forName is the upstream serving a package name: by scope, else the default.
func (g *Gateway) forName(name string) *upstream {
	if scope, _, ok := strings.Cut(name, "/"); ok && strings.HasPrefix(scope, "@") {
		for _, u := range g.ups {
			if slices.Contains(u.scopes, scope) {
				return u
			}
		}
	}
	return g.deflt
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

func (r Refusal) String() string {
	return r.Entry.Name + "@" + r.Entry.Version + ": " + r.Reason + " (" + r.Rule + ")"
}

func (e *RefusedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gateway refused the lockfile: %d ", len(e.Refusals))
	if len(e.Refusals) == 1 {
		b.WriteString("entry")
	} else {
		b.WriteString("entries")
	}
	for i, r := range e.Refusals {
		if i == 10 {
			fmt.Fprintf(&b, "; and %d more", len(e.Refusals)-i)
			break
		}
		b.WriteString("; ")
		b.WriteString(r.String())
	}
	return b.String()
}

// IntegrityError is a tarball whose bytes differ from the lockfile's
// integrity (or, for an accepted sha1-only entry, from the sha512 the
// registry publishes): the job fails with it.
type IntegrityError struct {
	Entry Entry
	// Want is the hash expected, Got what the registry's bytes hash to.
	Want, Got string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("integrity mismatch for %s@%s: the lockfile pins %s, the registry served bytes with %s",
		e.Entry.Name, e.Entry.Version, e.Want, e.Got)
}

// UpstreamError is an upstream registry that could not be reached or
// answered an error; Status 401 or 403 means it rejected the agent's
// credential.
type UpstreamError struct {
	Upstream string
	// What was being fetched ("picocolors@1.1.1", "the packument of x").
	What   string
	Status int
	Err    error
}

func (e *UpstreamError) Error() string {
	switch {
	case e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden:
		return fmt.Sprintf("credentials for %s rejected (status %d fetching %s)", e.Upstream, e.Status, e.What)
	case e.Status != 0:
		return fmt.Sprintf("registry %s answered status %d fetching %s", e.Upstream, e.Status, e.What)
	default:
		return fmt.Sprintf("registry %s unreachable fetching %s: %v", e.Upstream, e.What, e.Err)
	}
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// target is an entry resolved: where its tarball comes from, how its
// request looks and what it must hash to.
type target struct {
	entry Entry
	up    *upstream
	url   string // fetched upstream
	tail  string // "<name>/-/<file>": how the sandbox asks for it
	want  digest // the lockfile's strongest hash
}

func (t *target) spec() string { return t.entry.Name + "@" + t.entry.Version }

// weak is a sha1-only (or otherwise sha512-less) entry.
func (t *target) weak() bool { return t.want.alg != "sha512" }

// resolve maps an entry to its target, or says why it is refused.
func (g *Gateway) resolve(e Entry) (*target, *Refusal) {
	refuse := func(rule, format string, args ...any) (*target, *Refusal) {
		return nil, &Refusal{Entry: e, Rule: rule, Reason: fmt.Sprintf(format, args...)}
	}
	if !validName(e.Name) || e.Version == "" || strings.ContainsAny(e.Version, "/\\ ") {
		return refuse(RuleNotInLockfile, "not a valid package name and version")
	}
	want, err := parseIntegrity(e.Integrity)
	if err != nil {
		return refuse(RuleIntegrityMismatch, "%v", err)
	}
	if want.alg != "sha512" && !g.cfg.AllowSHA1 {
		return refuse(RuleSHA1Only, "the lockfile pins only a %s hash; sha512 is required unless allow_sha1 is set", want.alg)
	}
	t := &target{entry: e, want: want, up: g.forName(e.Name)}
	if e.Resolved == "" {
		base := e.Name[strings.LastIndex(e.Name, "/")+1:]
		t.tail = e.Name + "/-/" + base + "-" + e.Version + ".tgz"
		t.url = t.up.base.String() + t.tail
		return t, nil
	}
	u, err := url.Parse(e.Resolved)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return refuse(RuleNotInLockfile, "resolved URL %q is not an http(s) URL", e.Resolved)
	}
	i := strings.LastIndex(u.Path, "/"+e.Name+"/-/")
	file := ""
	if i >= 0 {
		file = u.Path[i+len(e.Name)+4:]
	}
	if i < 0 || file == "" || strings.Contains(file, "/") || !strings.HasSuffix(file, ".tgz") {
		return refuse(RuleNotInLockfile, "resolved URL %s is not a registry tarball of %s", e.Resolved, e.Name)
	}
	t.tail = e.Name + "/-/" + file
	if g.aliases[strings.ToLower(u.Hostname())] {
		t.url = t.up.base.String() + t.tail
		return t, nil
	}
	// On an upstream itself: fetched as the lockfile says, with the
	// credential of the upstream whose base URL it is under (the longest).
	var best *upstream
	for _, up := range g.ups {
		if strings.EqualFold(hostPort(u), hostPort(up.base)) && u.Scheme == up.base.Scheme &&
			strings.HasPrefix(u.Path, up.base.Path) && (best == nil || len(up.base.Path) > len(best.base.Path)) {
			best = up
		}
	}
	if best == nil {
		return refuse(RuleNotInLockfile, "resolved host %s is neither an upstream registry nor one of its aliases", u.Host)
	}
	t.up = best
	t.url = (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
	return t, nil
}

// validName is an npm package name as it may appear in a URL path:
// "name" or "@scope/name", no empty, dot or dot-dot segments.
func validName(n string) bool {
	parts := strings.Split(n, "/")
	if len(parts) > 2 || (len(parts) == 2) != strings.HasPrefix(n, "@") {
		return false
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." || p == "@" || strings.ContainsAny(p, "\\?#% ") {
			return false
		}
	}
	return true
}

// resolveAll resolves a job's entries, deduplicated by tail.
func (g *Gateway) resolveAll(entries []Entry) (map[string]*target, []Refusal) {
	ts := map[string]*target{}
	var refused []Refusal
	for _, e := range entries {
		t, r := g.resolve(e)
		if r != nil {
			refused = append(refused, *r)
			continue
		}
		if _, ok := ts[t.tail]; !ok {
			ts[t.tail] = t
		}
	}
	return ts, refused
}

// minAge is the stricter of the agent's and the job's release age.
func (g *Gateway) minAge(j Job) time.Duration {
	return max(g.cfg.MinReleaseAge, j.MinReleaseAge)
}

// SHA1Accepted lists the job's entries that pin no sha512 (sha1-only, from
// old lockfiles) and that the gateway accepts because AllowSHA1 is set:
// each is served only when its tarball matches both the lockfile's hash
// and the sha512 the registry publishes for it. The agent logs them and
// notes them in the SBOM. Empty without AllowSHA1 (they are refused).
func (g *Gateway) SHA1Accepted(j Job) []Entry {
	if !g.cfg.AllowSHA1 {
		return nil
	}
	var out []Entry
	ts, _ := g.resolveAll(j.Entries)
	for _, t := range ts {
		if t.weak() {
			out = append(out, t.entry)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return strings.Compare(a.Name+"@"+a.Version, b.Name+"@"+b.Version)
	})
	return out
}

// checkConcurrency bounds Check's packument fetches; prefetchConcurrency
// Prefetch's tarball fetches.
const (
	checkConcurrency    = 8
	prefetchConcurrency = 16
)

// Check runs before any sandbox exists: every upstream answers (with its
// credential accepted), sha1-only entries are allowed, and no version is
// younger than the release-age policy. A refusal is a *RefusedError; an
// upstream that cannot be reached is another error saying which.
func (g *Gateway) Check(ctx context.Context, j Job) error {
	ts, refused := g.resolveAll(j.Entries)
	if err := g.probe(ctx, ts); err != nil {
		return err
	}
	age := g.minAge(j)
	// Packuments are needed for the release age of every name, and for the
	// published sha512 of sha1-only entries.
	byName := map[string][]*target{}
	for _, t := range ts {
		if age > 0 || t.weak() {
			byName[t.entry.Name] = append(byName[t.entry.Name], t)
		}
	}
	var mu sync.Mutex
	var errs []error
	forEach(ctx, slices.Sorted(maps.Keys(byName)), checkConcurrency, func(ctx context.Context, name string) {
		p, err := g.packument(ctx, g.forName(name), name)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			return
		}
		for _, t := range byName[name] {
			if r := g.checkPublished(t, p, age); r != nil {
				refused = append(refused, *r)
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(refused) > 0 {
		slices.SortFunc(refused, func(a, b Refusal) int { return strings.Compare(a.String(), b.String()) })
		return &RefusedError{Refusals: refused}
	}
	return nil
}

// checkPublished applies the release age to t and records the sha512
// published for a sha1-only t.
func (g *Gateway) checkPublished(t *target, p *packument, age time.Duration) *Refusal {
	v := t.entry.Version
	if age > 0 {
		published, err := time.Parse(time.RFC3339, p.Time[v])
		if err != nil {
			return &Refusal{Entry: t.entry, Rule: RuleReleaseTooNew,
				Reason: fmt.Sprintf("the registry gives no publication time for %s (min_release_age %s)", v, age)}
		}
		if since := g.now().Sub(published); since < age {
			return &Refusal{Entry: t.entry, Rule: RuleReleaseTooNew,
				Reason: fmt.Sprintf("published %s ago (%s), younger than min_release_age %s",
					since.Round(time.Second), published.UTC().Format(time.RFC3339), age)}
		}
	}
	if t.weak() {
		d, err := parseIntegrity(p.Versions[v].Dist.Integrity)
		if err != nil || d.alg != "sha512" {
			return &Refusal{Entry: t.entry, Rule: RuleSHA1Only,
				Reason: "the lockfile pins only a " + t.want.alg + " hash and the registry publishes no sha512 for this version"}
		}
		g.publishedMu.Lock()
		g.published[t.spec()] = d.sum
		g.publishedMu.Unlock()
	}
	return nil
}

// probe checks that every upstream the job's entries come from answers and
// accepts the agent's credential: a HEAD of one of its tarballs.
func (g *Gateway) probe(ctx context.Context, ts map[string]*target) error {
	first := map[*upstream]*target{}
	for _, tail := range slices.Sorted(maps.Keys(ts)) {
		if t := ts[tail]; first[t.up] == nil {
			first[t.up] = t
		}
	}
	if len(first) == 0 {
		first[g.deflt] = nil
	}
	for up, t := range first {
		u, what := up.base.String()+"-/ping", "its ping endpoint"
		if t != nil {
			u, what = t.url, t.spec()
		}
		resp, err := g.do(ctx, up, http.MethodHead, u, "")
		if err != nil {
			return &UpstreamError{Upstream: up.String(), What: what, Err: err}
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &UpstreamError{Upstream: up.String(), What: what, Status: resp.StatusCode}
		}
	}
	return nil
}

// do sends one request upstream with the agent's credential.
func (g *Gateway) do(ctx context.Context, up *upstream, method, u, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if up.token != "" {
		req.Header.Set("Authorization", "Bearer "+up.token)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	req.Header.Set("User-Agent", "cleanroom-gateway")
	return g.client.Do(req)
}

// forEach runs fn for every item, at most n at a time, until ctx ends.
func forEach[T any](ctx context.Context, items []T, n int, fn func(context.Context, T)) {
	sem := make(chan struct{}, n)
	var wg sync.WaitGroup
	for _, it := range items {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(ctx, it)
		}()
	}
	wg.Wait()
}

// Prefetch fetches and verifies every entry into the cache (a cached one
// costs a stat), so an altered tarball fails the job before install.
// progress, if set, is called after each entry. An integrity mismatch is
// an error naming the package.
func (g *Gateway) Prefetch(ctx context.Context, j Job, progress func(done, total int)) error {
	ts, refused := g.resolveAll(j.Entries)
	if len(refused) > 0 {
		return &RefusedError{Refusals: refused}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var errs []error
	done := 0
	forEach(ctx, slices.Sorted(maps.Keys(ts)), prefetchConcurrency, func(ctx context.Context, tail string) {
		_, _, err := g.ensure(ctx, ts[tail])
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err)
			cancel() // fail fast: the job fails anyway
			return
		}
		done++
		if progress != nil {
			progress(done, len(ts))
		}
	})
	if len(errs) > 0 {
		// The first real cause, not the cancellations it caused.
		for _, err := range errs {
			if !errors.Is(err, context.Canceled) {
				return err
			}
		}
		return errs[0]
	}
	return ctx.Err()
}
