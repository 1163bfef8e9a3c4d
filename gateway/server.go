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
	"sync/atomic"
	"time"
	"unicode/utf8"

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

		packuments:    map[string]*packumentFlight{},
		failedTargets: map[*target]error{},
		packumentSem:  make(chan struct{}, packumentConcurrency),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
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
		// "OPTIONS *" reaches the handler (refused and audited) instead of
		// being answered by net/http without an event.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     g.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	s.trackConns()
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(newLimitListener(ln, maxJobConns)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("gateway endpoint stopped", "job", j.Job, "error", err)
		}
	}()
	return s, nil
}

// maxJobConns bounds the connections one job's sandbox holds open to its
// endpoint (npm opens at most maxsockets, 15 by default): beyond it new
// connections wait in the listen backlog until one closes, so a sandbox
// cannot make the agent hold thousands of connections, goroutines and
// buffers.
var maxJobConns = 64

// limitListener accepts at most cap(slots) connections at a time; the
// next Accept waits for one of them to close.
type limitListener struct {
	net.Listener
	slots     chan struct{}
	closed    chan struct{}
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), closed: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// limitedConn gives its slot back when it is closed.
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
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

	mu         sync.Mutex
	failure    error
	packuments map[string]*packumentFlight // by accept and name
	// failedTargets are the tarballs that failed (integrity, upstream).
	failedTargets map[*target]error

	packumentSem chan struct{}

	// ctx ends when the server is closed: it bounds work that outlives a
	// request (packument fetches).
	ctx    context.Context
	cancel context.CancelFunc

	conns     sync.WaitGroup // connections not yet closed
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
		defer s.cancel()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			s.closeErr = s.srv.Close()
		}
		<-s.done
		// The connections' goroutines end (and send their last events)
		// after Shutdown stopped tracking them.
		waited := make(chan struct{})
		go func() { s.conns.Wait(); close(waited) }()
		select {
		case <-waited:
		case <-ctx.Done():
		}
	})
	return s.closeErr
}

// maxLoggedPath bounds a path in an event: a sandbox may send long ones.
const maxLoggedPath = 1024

// ServeHTTP answers one request of the sandbox and reports it as an event.
func (s *JobServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if st, ok := r.Context().Value(connKey{}).(*connStat); ok {
		st.handled.Add(1)
	}
	ev := s.event(r.RemoteAddr)
	ev.Method, ev.Path = s.logged(r.Method), s.logged(r.URL.Path)
	cw := &countingWriter{w: w}
	status := s.handle(cw, r, &ev)
	ev.Status, ev.Bytes = status, cw.n
	if ev.Verdict == "" {
		ev.Verdict = api.VerdictAllow
		if status >= 400 {
			ev.Verdict = api.VerdictDeny
		}
	}
	s.emit(ev)
}

// event is an event of the job for a request from remote.
func (s *JobServer) event(remote string) api.EgressEvent {
	ev := api.EgressEvent{
		Time:    s.g.now().UTC(),
		Runner:  s.job.Runner,
		Job:     s.job.Job,
		Sandbox: s.job.Sandbox,
		Proto:   ProtoHTTP,
	}
	if host, _, err := net.SplitHostPort(remote); err == nil {
		ev.Src = host
	}
	return ev
}

func (s *JobServer) emit(ev api.EgressEvent) {
	if s.job.OnEvent != nil {
		s.job.OnEvent(ev)
	}
}

// connKey keys a connection's connStat in its requests' contexts.
type connKey struct{}

// connStat counts a connection's requests: started (net/http read bytes
// of one) and handled (it reached ServeHTTP).
type connStat struct {
	started, handled atomic.Int64
}

// trackConns makes every request net/http answers by itself — malformed,
// headers too large, an unknown transfer coding or Expect, an HTTP/2
// preface, cut off by the header timeout — an event too (rule
// bad-request), when its connection closes: none goes unaudited. Close
// waits for the connections' last events.
func (s *JobServer) trackConns() {
	var conns sync.Map // net.Conn → *connStat
	s.srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		st := &connStat{}
		conns.Store(c, st)
		return context.WithValue(ctx, connKey{}, st)
	}
	s.srv.ConnState = func(c net.Conn, state http.ConnState) {
		v, ok := conns.Load(c)
		if !ok {
			return
		}
		st := v.(*connStat)
		switch state {
		case http.StateNew:
			s.conns.Add(1)
		case http.StateActive:
			st.started.Add(1)
		case http.StateClosed, http.StateHijacked:
			conns.Delete(c)
			if n := st.started.Load() - st.handled.Load(); n > 0 {
				ev := s.event(c.RemoteAddr().String())
				ev.Verdict, ev.Rule = api.VerdictDeny, RuleBadRequest
				s.emit(ev)
			}
			s.conns.Done()
		}
	}
}

// logged makes text taken from a request fit for an event: secrets
// redacted first (so that cutting it short cannot leave part of one), then
// every control, format or invalid byte in its visible form (a newline
// cannot break a log line, an escape sequence cannot reach a terminal),
// then cut to maxLoggedPath bytes at a rune boundary.
func (s *JobServer) logged(p string) string {
	if s.job.Redact != nil {
		p = s.job.Redact(p)
	}
	p = api.Printable(p)
	if len(p) > maxLoggedPath {
		cut := maxLoggedPath
		for cut > 0 && !utf8.RuneStart(p[cut]) {
			cut--
		}
		p = p[:cut] + "…"
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
	if name, file, ok := tarballName(p); ok && strings.HasSuffix(p, ".tgz") {
		if !validName(name) {
			name = ""
		}
		ev.Package = s.logged(name)
		if name != "" {
			if v, ok := s.versionOf(name, file); ok {
				ev.Version = s.logged(v)
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
	ev.Package = s.logged(name)
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

// tarballName splits a tarball request path into the package name it
// names and the file: the name is the segment before "/-/", or the two
// before it when the first of them is a scope ("@scope/name"); a path
// prefix before the name is ignored (the lockfile's resolved URL may have
// one). ok is false when p has no "/-/" or no name before it.
func tarballName(p string) (name, file string, ok bool) {
	i := strings.LastIndex(p, "/-/")
	if i <= 0 {
		return "", "", false
	}
	before, file := p[:i], p[i+3:]
	j := strings.LastIndex(before, "/")
	name = before[j+1:]
	if j > 0 {
		k := strings.LastIndex(before[:j], "/")
		if scope := before[k+1 : j]; strings.HasPrefix(scope, "@") {
			name = scope + "/" + name
		}
	}
	if name == "" || strings.HasPrefix(name, "@") && !strings.Contains(name, "/") {
		return "", "", false
	}
	return name, file, true
}

// tarball finds the target a request path names: its "<name>/-/<file>"
// (tarballName) is a lockfile entry's. A scoped path names only the scoped
// package: "/@a/x/-/x-1.0.0.tgz" is never the unscoped x's tarball.
func (s *JobServer) tarball(p string) (*target, bool) {
	name, file, ok := tarballName(p)
	if !ok {
		return nil, false
	}
	t, ok := s.targets[name+"/-/"+file]
	return t, ok
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
	if err := s.failedTarget(t); err != nil {
		return s.upstreamFailed(w, ev, err)
	}
	ctx := r.Context()
	sum, err := s.g.sha512Of(ctx, t)
	if err != nil {
		return s.targetFailed(w, ev, t, err)
	}
	key := hex.EncodeToString(sum)
	defer s.g.cache.pin(key)()
	ev.Cache = "hit"
	for attempt := 0; ; attempt++ {
		_, hit, err := s.g.ensure(ctx, t)
		if err != nil {
			return s.targetFailed(w, ev, t, err)
		}
		if !hit {
			ev.Cache, ev.Dst = "miss", t.up.base.Host
		}
		f, data, size, release, err := s.g.cache.open(key, sum)
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
		defer release()
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

// failedTarget is the error t's tarball already failed with in this job:
// the job fails anyway, and a sandbox asking again must not make the
// agent download (up to maxTarballBytes) again and again.
func (s *JobServer) failedTarget(t *target) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failedTargets[t]
}

// targetFailed answers as upstreamFailed and remembers err for t (not a
// cancellation: nothing failed).
func (s *JobServer) targetFailed(w *countingWriter, ev *api.EgressEvent, t *target, err error) int {
	if !errors.Is(err, context.Canceled) {
		s.mu.Lock()
		s.failedTargets[t] = err
		s.mu.Unlock()
	}
	return s.upstreamFailed(w, ev, err)
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
		" (rule "+ev.Rule+"): "+sandboxReason(err)+"\n")
}

// sandboxReason is what a sandbox is told of err: the hashes of an
// integrity mismatch, the refusal, the upstream and status, but not the
// transport error's own words (they may carry an upstream's redirect URL
// with its signature, or internal addresses); the job's Failure and the
// agent's log keep them.
func sandboxReason(err error) string {
	var ue *UpstreamError
	switch {
	case isIntegrity(err), errors.As(err, new(*RefusedError)):
		return err.Error()
	case errors.As(err, &ue) && ue.Status != 0:
		return ue.Error()
	case ue != nil:
		return fmt.Sprintf("registry %s unreachable fetching %s (the job's failure says why)", ue.Upstream, ue.What)
	}
	return "internal error (the job's failure says why)"
}

// servePackument answers the packument of a lockfile name filtered to the
// versions the lockfile pins (npm asks for it only for entries without a
// resolved URL), with tarball URLs on the gateway.
func (s *JobServer) servePackument(w *countingWriter, r *http.Request, ev *api.EgressEvent, name string) int {
	ev.Rule = RuleAllowed
	up := s.g.forName(name)
	ev.Domain = up.base.Hostname()
	b, fetched, err := s.packument(r.Context(), up, name, upstreamAccept(r.Header.Get("Accept")))
	if fetched {
		ev.Dst = up.base.Host
	}
	if err != nil {
		return s.upstreamFailed(w, ev, err)
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

// Media types a packument is asked for upstream: npm's abbreviated
// ("corgi") document or the full one. Nothing of the sandbox's own Accept
// header is sent upstream, where it would carry the sandbox's data.
const (
	acceptAbbreviated = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
	acceptFull        = "application/json"
)

// upstreamAccept is the fixed Accept header sent upstream for a packument
// the sandbox asked for with accept.
func upstreamAccept(accept string) string {
	if strings.Contains(accept, "application/vnd.npm.install-v1+json") {
		return acceptAbbreviated
	}
	return acceptFull
}

// packumentFlight is one filtered packument of a job: fetched once, then
// answered from memory for the rest of the job.
type packumentFlight struct {
	done chan struct{}
	body []byte
	err  error
}

// packumentConcurrency bounds the packuments one job fetches and filters at
// a time (each may be large in memory while it is decoded).
const packumentConcurrency = 4

// packument is name's packument filtered to the job's pinned versions:
// fetched upstream once per job and media type, however often and however
// concurrently the sandbox asks (its requests cannot make the agent fetch
// or decode more), at most packumentConcurrency at a time.
// fetched says this call started the fetch.
func (s *JobServer) packument(ctx context.Context, up *upstream, name, accept string) (body []byte, fetched bool, err error) {
	key := accept + " " + name
	s.mu.Lock()
	fl, ok := s.packuments[key]
	if !ok {
		fl = &packumentFlight{done: make(chan struct{})}
		s.packuments[key] = fl
		go func() {
			defer close(fl.done)
			fctx, cancel := context.WithTimeout(s.ctx, fetchTimeout)
			defer cancel()
			s.packumentSem <- struct{}{}
			defer func() { <-s.packumentSem }()
			body, err := s.g.packumentBody(fctx, up, name, accept)
			if err != nil {
				fl.err = err
				return
			}
			defer body.Close()
			fl.body, fl.err = s.filterPackument(io.LimitReader(body, maxPackumentBytes), name)
			if fl.err != nil {
				fl.err = &UpstreamError{Upstream: up.String(), What: "the packument of " + name, Err: fl.err}
			}
		}()
	}
	s.mu.Unlock()
	select {
	case <-fl.done:
		return fl.body, !ok, fl.err
	case <-ctx.Done():
		return nil, !ok, ctx.Err()
	}
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
