package gateway

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Serve starts the job's endpoint on ln (the host end of the job's veth)
// and returns at once; Close the JobServer to stop it. Entries Check would
// refuse are not served (their requests are denied with the refusal's
// rule).
func (g *Gateway) Serve(ln net.Listener, j Job) (*JobServer, error) {
	if ln == nil {
		return nil, errors.New("gateway: no listener")
	}
	ts, refused := g.resolveAll(j.Entries)
	s := &JobServer{
		g:       g,
		job:     j,
		url:     "http://" + ln.Addr().String() + "/",
		targets: ts,
		names:   map[string][]*target{},
		refused: map[string]Refusal{},
		done:    make(chan struct{}),
	}
	for _, t := range ts {
		s.names[t.entry.Name] = append(s.names[t.entry.Name], t)
	}
	for _, r := range refused {
		s.refused[r.Entry.Name+"@"+r.Entry.Version] = r
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      30 * time.Minute, // one large tarball on a slow sandbox
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          g.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("gateway endpoint stopped", "job", j.Job, "error", err)
		}
	}()
	return s, nil
}

// JobServer is one job's running endpoint.
type JobServer struct {
	g       *Gateway
	job     Job
	url     string
	srv     *http.Server
	targets map[string]*target   // by "<name>/-/<file>"
	names   map[string][]*target // by name
	refused map[string]Refusal   // by name@version

	mu      sync.Mutex
	failure error

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// URL is the registry URL the job's npmrc names.
func (s *JobServer) URL() string { return s.url }

// Failure is the first integrity mismatch or upstream failure served to
// the job (nil if none): the job fails with it, naming the package.
func (s *JobServer) Failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failure
}

func (s *JobServer) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failure == nil {
		s.failure = err
	}
}

// Close stops the endpoint and waits for its requests to end.
func (s *JobServer) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.closeErr = s.srv.Close()
		}
		<-s.done
	})
	return s.closeErr
}

// maxLoggedPath bounds a path in an event: a sandbox may send long ones.
const maxLoggedPath = 1024

// ServeHTTP answers one request of the sandbox and reports it as an event.
func (s *JobServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ev := api.EgressEvent{
		Time:    s.g.now().UTC(),
		Runner:  s.job.Runner,
		Job:     s.job.Job,
		Sandbox: s.job.Sandbox,
		Proto:   ProtoHTTP,
		Method:  r.Method,
		Path:    s.redact(r.URL.Path),
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		ev.Src = host
	}
	cw := &countingWriter{w: w}
	status := s.handle(cw, r, &ev)
	ev.Status, ev.Bytes = status, cw.n
	if ev.Verdict == "" {
		ev.Verdict = api.VerdictAllow
		if status >= 400 {
			ev.Verdict = api.VerdictDeny
		}
	}
	if s.job.OnEvent != nil {
		s.job.OnEvent(ev)
	}
}

func (s *JobServer) redact(p string) string {
	if len(p) > maxLoggedPath {
		p = p[:maxLoggedPath] + "…"
	}
	if s.job.Redact != nil {
		p = s.job.Redact(p)
	}
	return p
}

// handle routes a request and returns the status it answered.
func (s *JobServer) handle(w *countingWriter, r *http.Request, ev *api.EgressEvent) int {
	p := r.URL.Path
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return deny(w, ev, RuleRegistryWrite, "the registry is read-only from a sandbox: "+r.Method+" is refused")
	}
	if t, ok := s.tarball(p); ok {
		return s.serveTarball(w, r, ev, t)
	}
	if i := strings.LastIndex(p, "/-/"); i >= 0 && strings.HasSuffix(p, ".tgz") && i > 0 {
		name, _ := splitName(p[:i])
		ev.Package = name
		if name != "" {
			if v, ok := s.versionOf(name, p[i+3:]); ok {
				ev.Version = v
				if ref, ok := s.refused[name+"@"+v]; ok {
					return deny(w, ev, ref.Rule, ref.Entry.Name+"@"+ref.Entry.Version+": "+ref.Reason)
				}
			}
		}
		return deny(w, ev, RuleNotInLockfile, "this tarball is not pinned by the job's lockfile")
	}
	if p == "/" || strings.HasPrefix(p, "/-/") || strings.Contains(p, "/-/") {
		return deny(w, ev, RuleRegistryAPI, "only the lockfile's tarballs are served, no other registry endpoint")
	}
	name, rest := splitName(p)
	if name == "" || rest != "" {
		return deny(w, ev, RuleRegistryAPI, "only the lockfile's tarballs are served, no other registry endpoint")
	}
	ev.Package = name
	if len(s.names[name]) == 0 {
		return deny(w, ev, RuleNotInLockfile, "the job's lockfile does not pin "+name)
	}
	return s.servePackument(w, r, ev, name)
}

// splitName reads a package name from the start of a path: "/name…" or
// "/@scope/name…" (the slash possibly escaped); rest is what follows it.
func splitName(p string) (name, rest string) {
	p = strings.TrimPrefix(p, "/")
	segs := strings.SplitN(p, "/", 3)
	switch {
	case strings.HasPrefix(p, "@") && len(segs) >= 2:
		name = segs[0] + "/" + segs[1]
		rest = strings.TrimPrefix(p, name)
	default:
		name = segs[0]
		rest = strings.TrimPrefix(p, name)
	}
	if !validName(name) {
		return "", p
	}
	return name, rest
}

// tarball finds the target a request path names: its tail is
// "<name>/-/<file>" of a lockfile entry (a path prefix before the name is
// ignored: the lockfile's resolved URL may have one).
func (s *JobServer) tarball(p string) (*target, bool) {
	i := strings.LastIndex(p, "/-/")
	if i <= 0 {
		return nil, false
	}
	before, file := p[:i], p[i+3:]
	// The name is the last segment before "/-/", or the last two when the
	// first of them is a scope.
	j := strings.LastIndex(before, "/")
	if t, ok := s.targets[before[j+1:]+"/-/"+file]; ok && !strings.HasPrefix(before[j+1:], "@") {
		return t, true
	}
	if j > 0 {
		k := strings.LastIndex(before[:j], "/")
		if scope := before[k+1 : j]; strings.HasPrefix(scope, "@") {
			t, ok := s.targets[before[k+1:]+"/-/"+file]
			return t, ok
		}
	}
	return nil, false
}

// versionOf guesses the version a tarball file name of name carries, for
// events and refusals ("<base>-<version>.tgz").
func (s *JobServer) versionOf(name, file string) (string, bool) {
	base := name[strings.LastIndex(name, "/")+1:]
	v, ok := strings.CutPrefix(strings.TrimSuffix(file, ".tgz"), base+"-")
	return v, ok && v != ""
}

// deny answers 403 with a plain-text body naming the rule.
func deny(w *countingWriter, ev *api.EgressEvent, rule, why string) int {
	ev.Verdict, ev.Rule = api.VerdictDeny, rule
	return plain(w, http.StatusForbidden, "refused by the cleanroom registry gateway (rule "+rule+"): "+why+"\n")
}

// plain answers a plain-text message.
func plain(w *countingWriter, status int, msg string) int {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(msg)))
	w.WriteHeader(status)
	io.WriteString(w, msg)
	return status
}

// serveTarball answers a pinned tarball from the cache, fetching and
// verifying it first on a miss; the bytes sent are verified against the
// sha512 as they are read from the cache.
func (s *JobServer) serveTarball(w *countingWriter, r *http.Request, ev *api.EgressEvent, t *target) int {
	ev.Package, ev.Version, ev.Rule = t.entry.Name, t.entry.Version, RuleAllowed
	ev.Domain = t.up.base.Hostname()
	if t.weak() {
		ev.Rule = RuleAllowedSHA1
	}
	ctx := r.Context()
	sum, err := s.g.sha512Of(ctx, t)
	if err != nil {
		return s.upstreamFailed(w, ev, err)
	}
	key := hex.EncodeToString(sum)
	defer s.g.cache.pin(key)()
	ev.Cache = "hit"
	for attempt := 0; ; attempt++ {
		_, hit, err := s.g.ensure(ctx, t)
		if err != nil {
			return s.upstreamFailed(w, ev, err)
		}
		if !hit {
			ev.Cache, ev.Dst = "miss", t.up.base.Host
		}
		f, data, size, err := s.g.cache.open(key, sum)
		if errors.Is(err, errNotCached) && attempt == 0 {
			s.g.log.Warn("cached tarball failed verification, fetching it again", "package", t.spec())
			continue
		}
		if err != nil {
			s.g.log.Error("reading cached tarball", "package", t.spec(), "error", err)
			ev.Verdict, ev.Rule = api.VerdictDeny, RuleUpstream
			return plain(w, http.StatusInternalServerError, "the gateway could not read "+t.spec()+" from its cache\n")
		}
		defer f.Close()
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		h.Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return http.StatusOK
		}
		if data != nil {
			w.Write(data)
		} else {
			io.Copy(w, f)
		}
		return http.StatusOK
	}
}

// upstreamFailed answers 502 for a tarball the gateway could not fetch or
// verify, and records the job's failure.
func (s *JobServer) upstreamFailed(w *countingWriter, ev *api.EgressEvent, err error) int {
	ev.Verdict, ev.Rule = api.VerdictDeny, RuleUpstream
	var ref *RefusedError
	switch {
	case isIntegrity(err):
		ev.Rule = RuleIntegrityMismatch
	case errors.As(err, &ref) && len(ref.Refusals) > 0:
		ev.Rule = ref.Refusals[0].Rule
	case errors.Is(err, context.Canceled):
		return 499 // the sandbox went away; nothing was answered
	}
	s.fail(err)
	s.g.log.Error("gateway could not serve a tarball", "job", s.job.Job, "package", ev.Package+"@"+ev.Version, "error", err)
	return plain(w, http.StatusBadGateway, "the cleanroom registry gateway could not serve "+ev.Package+"@"+ev.Version+
		" (rule "+ev.Rule+"): "+err.Error()+"\n")
}

// servePackument answers the packument of a lockfile name filtered to the
// versions the lockfile pins (npm asks for it only for entries without a
// resolved URL), with tarball URLs on the gateway.
func (s *JobServer) servePackument(w *countingWriter, r *http.Request, ev *api.EgressEvent, name string) int {
	ev.Rule = RuleAllowed
	up := s.g.forName(name)
	ev.Domain, ev.Dst = up.base.Hostname(), up.base.Host
	accept := r.Header.Get("Accept")
	if accept == "" || len(accept) > 256 {
		accept = "application/json"
	}
	body, err := s.g.packumentBody(r.Context(), up, name, accept)
	if err != nil {
		return s.upstreamFailed(w, ev, err)
	}
	defer body.Close()
	b, err := s.filterPackument(io.LimitReader(body, maxPackumentBytes), name)
	if err != nil {
		return s.upstreamFailed(w, ev, &UpstreamError{Upstream: up.String(), What: "the packument of " + name, Err: err})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(b)
	}
	return http.StatusOK
}

// filterPackument keeps of a packument only the pinned versions (their
// dist.tarball on the gateway) and the dist-tags naming them ("latest"
// becomes the highest pinned version when it names another).
func (s *JobServer) filterPackument(r io.Reader, name string) ([]byte, error) {
	var in struct {
		Versions map[string]map[string]json.RawMessage `json:"versions"`
		DistTags map[string]string                     `json:"dist-tags"`
		Time     map[string]string                     `json:"time"`
		Modified string                                `json:"modified"`
	}
	if err := json.NewDecoder(r).Decode(&in); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	out := map[string]any{"name": name}
	versions := map[string]any{}
	times := map[string]string{}
	var pinned []string
	for _, t := range s.names[name] {
		v := t.entry.Version
		m, ok := in.Versions[v]
		if !ok {
			continue
		}
		var dist map[string]any
		if err := json.Unmarshal(m["dist"], &dist); err != nil || dist == nil {
			dist = map[string]any{}
		}
		dist["tarball"] = s.url + t.tail
		raw, _ := json.Marshal(dist)
		m["dist"] = raw
		versions[v] = m
		if tm, ok := in.Time[v]; ok {
			times[v] = tm
		}
		pinned = append(pinned, v)
	}
	if len(pinned) == 0 {
		return nil, errors.New("the registry has none of the pinned versions")
	}
	sort.Strings(pinned)
	tags := map[string]string{}
	for tag, v := range in.DistTags {
		if _, ok := versions[v]; ok {
			tags[tag] = v
		}
	}
	if _, ok := tags["latest"]; !ok {
		tags["latest"] = pinned[len(pinned)-1]
	}
	out["versions"], out["dist-tags"] = versions, tags
	if len(times) > 0 {
		out["time"] = times
	}
	if in.Modified != "" {
		out["modified"] = in.Modified
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// countingWriter counts the body bytes sent to the sandbox.
type countingWriter struct {
	w http.ResponseWriter
	n int64
}

func (c *countingWriter) Header() http.Header { return c.w.Header() }
func (c *countingWriter) WriteHeader(s int)   { c.w.WriteHeader(s) }
func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// ReadFrom keeps io.Copy from a file on the sendfile path.
func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	var err error
	if rf, ok := c.w.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(c.w, r)
	}
	c.n += n
	return n, err
}
