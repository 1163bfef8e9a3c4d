package gateway

import (
	"bufio"
	"context"
	"errors"
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

// Tests of what code in a sandbox might try against its gateway.

func TestScopedTarballPathNeverServesTheUnscopedPackage(t *testing.T) {
	plain := newTarball(t, "x", "1.0.0", 100)
	scoped := newTarball(t, "@a/x", "1.0.0", 200)
	up := newFakeRegistry(t, "/", "", plain, scoped)
	g := newGateway(t, Config{}, "", up)
	for _, entries := range [][]Entry{{plain.entry(up.URL()), scoped.entry(up.URL())}, {plain.entry(up.URL())}} {
		s, _ := serve(t, g, Job{Entries: entries})
		status, body, _ := request(t, "GET", s.URL()+"@a/x/-/x-1.0.0.tgz", nil)
		if len(entries) == 2 && (status != 200 || string(body) != string(scoped.data)) {
			t.Errorf("both pinned: GET @a/x: status %d, %d bytes, want @a/x's %d", status, len(body), len(scoped.data))
		}
		if len(entries) == 1 && status != 403 {
			t.Errorf("only x pinned: GET @a/x: status %d, want 403", status)
		}
		status, body, _ = request(t, "GET", s.URL()+"x/-/x-1.0.0.tgz", nil)
		if status != 200 || string(body) != string(plain.data) {
			t.Errorf("GET x: status %d, %d bytes", status, len(body))
		}
	}
}

// rawRequest writes req on a new connection to the gateway and returns
// what it answers (until it closes the connection or a second passes).
func rawRequest(t *testing.T, s *JobServer, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimSuffix(strings.TrimPrefix(s.URL(), "http://"), "/"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String()
		}
	}
}

func TestEventFieldsFromTheRequestAreRedactedAndPrintable(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/", "", pkg)
	g := newGateway(t, Config{}, "", up)
	const secret = "hunter2hunter2"
	s, evs := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())},
		Redact: func(p string) string { return strings.ReplaceAll(p, secret, "[REDACTED]") }})
	long := strings.Repeat("a", maxLoggedPath-5) + secret
	requests := []string{
		"GET /x%0a%1b[31mfake%0d%0aevent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /" + secret + "/-/" + secret + "-1.0.0.tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /pkg/-/pkg-1.0.0%0a" + secret + ".tgz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /" + secret + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /" + long + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		secret + " /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
	}
	for _, req := range requests {
		rawRequest(t, s, req)
	}
	for _, ev := range evs.wait(t, len(requests)) {
		for _, f := range []string{ev.Method, ev.Path, ev.Package, ev.Version} {
			if strings.Contains(f, "hunter2") || strings.ContainsAny(f, "\n\r\x1b") || len(f) > maxLoggedPath+len("…") {
				t.Errorf("event field %q (event %+v)", f, ev)
			}
		}
		if ev.Verdict != api.VerdictDeny {
			t.Errorf("event %+v, want deny", ev)
		}
	}
}

func TestOptionsStarIsRefusedAndAudited(t *testing.T) {
	g := newGateway(t, Config{}, "", newFakeRegistry(t, "/", ""))
	s, evs := serve(t, g, Job{})
	resp := rawRequest(t, s, "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 403") {
		t.Errorf("OPTIONS *: %q", resp)
	}
	if ev := evs.wait(t, 1)[0]; ev.Method != "OPTIONS" || ev.Rule != RuleRegistryWrite {
		t.Errorf("event %+v", ev)
	}
}

var _ = http.StatusOK

func TestPackumentRequestsCarryNothingUpstreamAndAreFetchedOncePerJob(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/", "", pkg)
	up.delay = 50 * time.Millisecond
	g := newGateway(t, Config{}, "", up)
	e := pkg.entry(up.URL())
	e.Resolved = ""
	s, evs := serve(t, g, Job{Entries: []Entry{e}})
	accepts := []string{
		"application/json; exfil=c2VjcmV0IGRhdGE",
		"application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*; exfil=c2VjcmV0IGRhdGE",
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", s.URL()+"pkg", nil)
			req.Header.Set("Accept", accepts[i%2])
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if c := up.count("GET", "/pkg"); c != 2 {
		t.Errorf("upstream packument fetches %d, want 2 (one per media type)", c)
	}
	up.mu.Lock()
	for _, h := range up.headers {
		for k, v := range h {
			if strings.Contains(strings.Join(v, ","), "exfil") {
				t.Errorf("upstream saw the sandbox's %s: %q", k, v)
			}
		}
	}
	up.mu.Unlock()
	dsts := 0
	for _, ev := range evs.wait(t, 20) {
		if ev.Dst != "" {
			dsts++
		}
	}
	if dsts != 2 {
		t.Errorf("%d events name the upstream as fetched, want 2", dsts)
	}
}

func TestSHA1OnlyEntryCannotPullAnotherCachedTarball(t *testing.T) {
	victim := newTarball(t, "victim", "1.0.0", 300) // cached by another job
	old := newTarball(t, "old", "0.1.0", 200)
	// The registry publishes the victim's sha512 for old@0.1.0.
	old.publishedSHA512 = sri512(victim.data)
	up := newFakeRegistry(t, "/", "", victim, old)
	g := newGateway(t, Config{AllowSHA1: true}, "", up)
	if err := g.Prefetch(context.Background(), Job{Entries: []Entry{victim.entry(up.URL())}}, nil); err != nil {
		t.Fatal(err)
	}
	e := old.entry(up.URL())
	e.Integrity = sri1(old.data)
	j := Job{Entries: []Entry{e}}
	if err := g.Check(context.Background(), j); err != nil {
		t.Fatalf("Check: %v", err)
	}
	s, evs := serve(t, g, j)
	status, body, _ := request(t, "GET", s.URL()+"old/-/old-0.1.0.tgz", nil)
	if status != 502 || string(body) == string(victim.data) {
		t.Errorf("status %d, %d bytes: want 502, not the victim's bytes", status, len(body))
	}
	if ev := evs.wait(t, 1)[0]; ev.Rule != RuleIntegrityMismatch {
		t.Errorf("event %+v", ev)
	}
	var ie *IntegrityError
	if err := s.Failure(); !errors.As(err, &ie) || ie.Entry.Name != "old" {
		t.Errorf("Failure = %v", err)
	}
	if err := g.Prefetch(context.Background(), j, nil); !errors.As(err, &ie) {
		t.Errorf("Prefetch = %v, want an integrity error", err)
	}
}

func TestAnotherJobsFailingFetchOfTheSameBytesDoesNotFailThisOne(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 1000)
	release, asked := make(chan struct{}), make(chan struct{})
	var once sync.Once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/evil/-/evil-1.0.0.tgz": // another job's entry pinning pkg's bytes
			once.Do(func() { close(asked) })
			<-release
			http.NotFound(w, r)
		case "/pkg/-/pkg-1.0.0.tgz":
			w.Write(pkg.data)
		default:
			http.NotFound(w, r)
		}
	}))
	defer up.Close()
	defer close(release)
	g := newGateway(t, Config{Upstreams: []Upstream{{URL: up.URL}}}, "")
	evil := Entry{Name: "evil", Version: "1.0.0", Resolved: up.URL + "/evil/-/evil-1.0.0.tgz", Integrity: sri512(pkg.data)}
	sA, _ := serve(t, g, Job{Job: "job-a", Entries: []Entry{evil}})
	sB, _ := serve(t, g, Job{Job: "job-b", Entries: []Entry{{Name: "pkg", Version: "1.0.0",
		Resolved: up.URL + "/pkg/-/pkg-1.0.0.tgz", Integrity: sri512(pkg.data)}}})
	go func() {
		resp, err := http.Get(sA.URL() + "evil/-/evil-1.0.0.tgz")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-asked
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(sB.URL() + "pkg/-/pkg-1.0.0.tgz")
	if err != nil {
		t.Fatalf("job b waits for job a's fetch: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("job b: status %d", resp.StatusCode)
	}
	if err := sB.Failure(); err != nil {
		t.Errorf("job b failed with job a's fetch: %v", err)
	}
}

func TestConnectionsPerJobAreCapped(t *testing.T) {
	defer func(n int) { maxJobConns = n }(maxJobConns)
	maxJobConns = 2
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/", "", pkg)
	g := newGateway(t, Config{}, "", up)
	s, _ := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())}})
	addr := strings.TrimSuffix(strings.TrimPrefix(s.URL(), "http://"), "/")
	var held []net.Conn
	for range maxJobConns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET /pkg/-/pkg-1.0.0.tgz HTTP/1.1\r\n")) // slowloris: never ends its headers
		held = append(held, c)
	}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /pkg/-/pkg-1.0.0.tgz HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a connection over the cap was served: %q", line)
	}
	held[0].Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Errorf("once a slot is free: %q, %v", line, err)
	}
}

func TestTarballsHeldInMemoryAreBounded(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 1000)
	up := newFakeRegistry(t, "/", "", pkg)
	g := newGateway(t, Config{}, "", up)
	j := Job{Entries: []Entry{pkg.entry(up.URL())}}
	if err := g.Prefetch(context.Background(), j, nil); err != nil {
		t.Fatal(err)
	}
	g.cache.heldCap = 1500 // room for one copy
	d, _ := parseIntegrity(sri512(pkg.data))
	key := hexKey(d.sum)
	f1, data1, _, release1, err := g.cache.open(key, d.sum)
	if err != nil || data1 == nil {
		t.Fatalf("first open: %v, held %v", err, data1 != nil)
	}
	defer f1.Close()
	f2, data2, size, release2, err := g.cache.open(key, d.sum)
	if err != nil || data2 != nil || size != 1000 {
		t.Fatalf("second open: %v, held %v, want it from disk", err, data2 != nil)
	}
	b, _ := io.ReadAll(f2)
	if string(b) != string(pkg.data) {
		t.Error("the file is not at its start after the verifying pass")
	}
	f2.Close()
	release2()
	release1()
	release1()
	if g.cache.held != 0 {
		t.Errorf("held %d bytes after release", g.cache.held)
	}
	// Served either way.
	s, _ := serve(t, g, j)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if status, body, _ := request(t, "GET", s.URL()+"pkg/-/pkg-1.0.0.tgz", nil); status != 200 || string(body) != string(pkg.data) {
				t.Errorf("status %d, %d bytes", status, len(body))
			}
		}()
	}
	wg.Wait()
}

func TestRequestsNetHTTPRefusesItselfAreAudited(t *testing.T) {
	up := newFakeRegistry(t, "/", "")
	g := newGateway(t, Config{}, "", up)
	s, evs := serve(t, g, Job{})
	payloads := map[string]string{
		"malformed":          "GARBAGE\r\n\r\n",
		"headers too large":  "GET /x HTTP/1.1\r\nHost: x\r\nX-Exfil: " + strings.Repeat("A", 32<<10) + "\r\n\r\n",
		"unknown expect":     "GET /x HTTP/1.1\r\nHost: x\r\nExpect: exfil\r\n\r\n",
		"unknown coding":     "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
		"h2c preface":        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"bad host":           "GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
		"incomplete":         "GET /x HTTP/1.1\r\nHost: x\r\n",
		"no host in 1.1":     "GET /x HTTP/1.1\r\n\r\n",
		"absolute-form":      "GET http://evil.example/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
		"connect":            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
		"smuggled after get": "GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPUT /pkg HTTP/1.1\r\nHost: x\r\n\r\n",
	}
	n := 0
	for what, p := range payloads {
		resp := rawRequest(t, s, p)
		if strings.HasPrefix(resp, "HTTP/1.1 2") {
			t.Errorf("%s: answered %q", what, resp)
		}
		// Each connection yields at least one event once it closes.
		deadline := time.Now().Add(5 * time.Second)
		for len(evs.all()) <= n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if len(evs.all()) <= n {
			t.Errorf("%s: no event", what)
		}
		n = len(evs.all())
	}
	for _, ev := range evs.all() {
		if ev.Verdict != api.VerdictDeny || ev.Job != "job-1" {
			t.Errorf("event %+v", ev)
		}
	}
	if up.total() != 0 {
		t.Errorf("%d requests reached the upstream", up.total())
	}
}

func TestErrorBodiesCarryNoUpstreamURLs(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://storage.invalid/pkg.tgz?X-Amz-Signature=s3cr3tSignature", http.StatusFound)
	}))
	defer redirector.Close()
	g := newGateway(t, Config{Upstreams: []Upstream{{URL: redirector.URL, Token: "tok"}}}, "")
	s, _ := serve(t, g, Job{Entries: []Entry{pkg.entry(redirector.URL + "/")}})
	status, body, _ := request(t, "GET", s.URL()+"pkg/-/pkg-1.0.0.tgz", nil)
	if status != 502 || strings.Contains(string(body), "s3cr3t") || strings.Contains(string(body), "storage.invalid") ||
		!strings.Contains(string(body), "pkg@1.0.0") {
		t.Errorf("status %d, body %q", status, body)
	}
	if err := s.Failure(); err == nil || !strings.Contains(err.Error(), "storage.invalid") {
		t.Errorf("Failure = %v, want the whole cause", err)
	}
}

func TestResolvedURLsWithDotSegmentsAreRefused(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/npm/", "tok", pkg)
	g := newGateway(t, Config{}, "", up)
	for _, resolved := range []string{
		up.srv.URL + "/npm/../admin/pkg/-/pkg-1.0.0.tgz",
		up.srv.URL + "/npm/./pkg/-/pkg-1.0.0.tgz",
		up.srv.URL + "/npm//pkg/-/pkg-1.0.0.tgz",
		up.srv.URL + "/npm/%2e%2e/pkg/-/pkg-1.0.0.tgz",
	} {
		e := pkg.entry(up.URL())
		e.Resolved = resolved
		var re *RefusedError
		if err := g.Check(context.Background(), Job{Entries: []Entry{e}}); !errors.As(err, &re) || re.Refusals[0].Rule != RuleNotInLockfile {
			t.Errorf("%s: Check = %v, want a refusal", resolved, err)
		}
	}
	if n := up.total() - up.count("HEAD", "/npm/-/ping"); n != 0 {
		t.Errorf("%d requests reached the upstream: %v", n, up.requests)
	}
}

func TestAFailedTarballIsNotFetchedAgainForTheSameJob(t *testing.T) {
	pkg := newTarball(t, "victim", "1.0.0", 1000)
	pkg.served = append([]byte("evil"), pkg.data[4:]...)
	up := newFakeRegistry(t, "/", "", pkg)
	g := newGateway(t, Config{}, "", up)
	s, evs := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())}})
	for range 5 {
		if status, _, _ := request(t, "GET", s.URL()+"victim/-/victim-1.0.0.tgz", nil); status != 502 {
			t.Errorf("status %d, want 502", status)
		}
	}
	if c := up.count("GET", "/victim/-/victim-1.0.0.tgz"); c != 1 {
		t.Errorf("upstream fetches %d, want 1", c)
	}
	for _, ev := range evs.wait(t, 5) {
		if ev.Rule != RuleIntegrityMismatch {
			t.Errorf("event %+v", ev)
		}
	}
}
