package gateway

import (
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// fakeTarball is one version a fakeRegistry serves.
type fakeTarball struct {
	name, version string
	data          []byte
	published     time.Time
	// served, when set, are the bytes actually served (a registry that
	// alters a tarball after the lockfile was made).
	served []byte
	// publishedSHA512, when set, is the dist.integrity of its packument
	// instead of the sha512 of data.
	publishedSHA512 string
}

func (f *fakeTarball) file() string {
	return f.name[strings.LastIndex(f.name, "/")+1:] + "-" + f.version + ".tgz"
}

// fakeRegistry is an httptest upstream serving tarballs and packuments
// under prefix, counting requests and checking the agent's token.
type fakeRegistry struct {
	srv    *httptest.Server
	prefix string // "/" or e.g. "/npm/"
	token  string // required when set: 401 otherwise

	mu       sync.Mutex
	pkgs     []*fakeTarball
	requests map[string]int // by "METHOD path"
	auth     []string       // Authorization headers seen
	delay    time.Duration
	truncate bool // announce the full length, send half
}

func newFakeRegistry(t testing.TB, prefix, token string, pkgs ...*fakeTarball) *fakeRegistry {
	f := &fakeRegistry{prefix: prefix, token: token, pkgs: pkgs, requests: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRegistry) URL() string { return f.srv.URL + f.prefix }

func (f *fakeRegistry) count(method, path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[method+" "+path]
}

func (f *fakeRegistry) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.requests {
		n += c
	}
	return n
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests[r.Method+" "+r.URL.Path]++
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	delay, truncate := f.delay, f.truncate
	f.mu.Unlock()
	time.Sleep(delay)
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	p, ok := strings.CutPrefix(r.URL.Path, f.prefix)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if p == "-/ping" {
		w.Write([]byte("{}"))
		return
	}
	name := strings.Replace(p, "%2f", "/", 1)
	doc := map[string]any{"name": name}
	versions, times, found := map[string]any{}, map[string]string{}, false
	for _, pkg := range f.pkgs {
		if p == pkg.name+"/-/"+pkg.file() {
			b := pkg.data
			if pkg.served != nil {
				b = pkg.served
			}
			w.Header().Set("Content-Length", itoa(len(b)))
			if truncate {
				b = b[:len(b)/2]
			}
			if r.Method == http.MethodGet {
				w.Write(b)
			}
			return
		}
		if pkg.name == name {
			found = true
			integ := pkg.publishedSHA512
			if integ == "" {
				integ = sri512(pkg.data)
			}
			versions[pkg.version] = map[string]any{"name": name, "version": pkg.version, "dist": map[string]any{
				"integrity": integ, "tarball": f.URL() + pkg.name + "/-/" + pkg.file()}}
			times[pkg.version] = pkg.published.UTC().Format(time.RFC3339)
			doc["dist-tags"] = map[string]string{"latest": pkg.version}
		}
	}
	if !found {
		http.NotFound(w, r)
		return
	}
	doc["versions"], doc["time"] = versions, times
	json.NewEncoder(w).Encode(doc)
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func sri512(b []byte) string {
	s := sha512.Sum512(b)
	return "sha512-" + base64.StdEncoding.EncodeToString(s[:])
}

func sri1(b []byte) string {
	s := sha1.Sum(b)
	return "sha1-" + base64.StdEncoding.EncodeToString(s[:])
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func newTarball(t testing.TB, name, version string, size int) *fakeTarball {
	return &fakeTarball{name: name, version: version, data: randomBytes(t, size), published: time.Now().Add(-30 * 24 * time.Hour)}
}

// entry is the lockfile entry of tb resolved on the registry at base.
func (tb *fakeTarball) entry(base string) Entry {
	return Entry{Name: tb.name, Version: tb.version, Resolved: base + tb.name + "/-/" + tb.file(), Integrity: sri512(tb.data)}
}

// events collects a job's events.
type events struct {
	mu sync.Mutex
	l  []api.EgressEvent
}

func (e *events) add(ev api.EgressEvent) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.l = append(e.l, ev)
}

func (e *events) all() []api.EgressEvent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]api.EgressEvent(nil), e.l...)
}

func (e *events) last(t testing.TB) api.EgressEvent {
	t.Helper()
	l := e.all()
	if len(l) == 0 {
		t.Fatal("no event")
	}
	return l[len(l)-1]
}

// newGateway is a gateway over the fake upstream with a fresh cache.
func newGateway(t testing.TB, cfg Config, dir string, ups ...*fakeRegistry) *Gateway {
	t.Helper()
	if cfg.Cache == nil {
		if dir == "" {
			dir = t.TempDir()
		}
		c, err := OpenCache(dir, 0)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Cache = c
	}
	for _, u := range ups {
		cfg.Upstreams = append(cfg.Upstreams, Upstream{URL: u.URL(), Token: u.token})
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// serve starts a job's endpoint on loopback and stops it when the test ends.
func serve(t testing.TB, g *Gateway, j Job) (*JobServer, *events) {
	t.Helper()
	evs := &events{}
	if j.OnEvent == nil {
		j.OnEvent = evs.add
	}
	if j.Job == "" {
		j.Job, j.Runner, j.Sandbox = "job-1", "runner-1", "sandbox-1"
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := g.Serve(ln, j)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, evs
}

// get sends a request to the gateway and returns status, body and headers.
func request(t testing.TB, method, url string, body io.Reader) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

// wait returns the events once there are n of them (events are sent
// after the response, which the client may have read already).
func (e *events) wait(t testing.TB, n int) []api.EgressEvent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := e.all()
		if len(l) >= n || time.Now().After(deadline) {
			if len(l) != n {
				t.Fatalf("got %d events, want %d: %+v", len(l), n, l)
			}
			return l
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func hexKey(sum []byte) string { return hex.EncodeToString(sum) }
