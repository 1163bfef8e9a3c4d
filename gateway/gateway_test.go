package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

func TestRefusedRequestClassesAreDeniedAndAudited(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 100)
	up := newFakeRegistry(t, "/", "tok-upstream-secret", pkg)
	g := newGateway(t, Config{}, "", up)
	s, evs := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())}})
	cases := []struct {
		method, path, rule string
	}{
		{"PUT", "/-/user/org.couchdb.user:mallory", RuleRegistryWrite},
		{"PUT", "/pkg", RuleRegistryWrite},
		{"PUT", "/-/package/pkg/dist-tags/latest", RuleRegistryWrite},
		{"DELETE", "/pkg/-/pkg-1.0.0.tgz/-rev/1-abc", RuleRegistryWrite},
		{"DELETE", "/-/user/token/abc", RuleRegistryWrite},
		{"POST", "/-/npm/v1/tokens", RuleRegistryWrite},
		{"POST", "/-/npm/v1/security/advisories/bulk", RuleRegistryWrite},
		{"POST", "/pkg/-/pkg-1.0.0.tgz", RuleRegistryWrite},
		{"GET", "/-/whoami", RuleRegistryAPI},
		{"GET", "/-/v1/search?text=secret", RuleRegistryAPI},
		{"GET", "/-/npm/v1/security/audits/quick", RuleRegistryAPI},
		{"GET", "/-/ping", RuleRegistryAPI},
		{"GET", "/-/all", RuleRegistryAPI},
		{"GET", "/", RuleRegistryAPI},
		{"GET", "/pkg/1.0.0", RuleRegistryAPI},
		{"GET", "/other/-/other-1.0.0.tgz", RuleNotInLockfile},
		{"GET", "/@evil/x/-/x-1.0.0.tgz", RuleNotInLockfile},
		{"GET", "/pkg/-/pkg-2.0.0.tgz", RuleNotInLockfile},
		{"HEAD", "/pkg/-/pkg-2.0.0.tgz", RuleNotInLockfile},
		{"GET", "/other", RuleNotInLockfile},
		{"GET", "/@evil%2fx", RuleNotInLockfile},
	}
	for i, c := range cases {
		status, body, _ := request(t, c.method, s.URL()+strings.TrimPrefix(c.path, "/"), strings.NewReader(`{"name":"x"}`))
		if status != http.StatusForbidden {
			t.Errorf("%s %s: status %d, want 403", c.method, c.path, status)
		}
		if c.method != "HEAD" && !strings.Contains(string(body), "(rule "+c.rule+")") {
			t.Errorf("%s %s: body %q does not name rule %s", c.method, c.path, body, c.rule)
		}
		ev := evs.wait(t, i+1)[i]
		if ev.Verdict != api.VerdictDeny || ev.Rule != c.rule || ev.Method != c.method || ev.Status != 403 ||
			ev.Proto != ProtoHTTP || ev.Job != "job-1" || ev.Runner != "runner-1" || ev.Sandbox != "sandbox-1" {
			t.Errorf("%s %s: event %+v, want deny %s", c.method, c.path, ev, c.rule)
		}
		if strings.Contains(ev.Path, "?") || strings.Contains(ev.Path, "secret") {
			t.Errorf("%s %s: event path %q keeps the query", c.method, c.path, ev.Path)
		}
	}
	if n := up.total(); n != 0 {
		t.Errorf("refused requests reached the upstream %d times", n)
	}
}

func TestServesPinnedTarballVerifiedThenFromCache(t *testing.T) {
	plain := newTarball(t, "plain", "1.0.0", 5000)
	scoped := newTarball(t, "@acme/lib", "2.1.0", 7000)
	aliased := newTarball(t, "@acme/aliased", "0.1.0", 300)
	bare := newTarball(t, "bare", "3.0.0", 400)
	up := newFakeRegistry(t, "/npm/", "tok", plain, scoped, aliased, bare)
	g := newGateway(t, Config{}, "", up)
	entries := []Entry{plain.entry(up.URL()), scoped.entry(up.URL()),
		aliased.entry("https://registry.npmjs.org/"), bare.entry(up.URL())}
	entries[3].Resolved = ""
	s, evs := serve(t, g, Job{Entries: entries})
	n := 0
	for _, tb := range []*fakeTarball{plain, scoped, aliased, bare} {
		// npm replaces the resolved URL's host, keeping its path.
		u := s.URL() + strings.TrimPrefix(up.prefix, "/") + tb.name + "/-/" + tb.file()
		if tb == aliased {
			u = s.URL() + tb.name + "/-/" + tb.file()
		}
		for _, want := range []string{"miss", "hit"} {
			status, body, h := request(t, "GET", u, nil)
			if status != 200 || string(body) != string(tb.data) {
				t.Fatalf("GET %s (%s): status %d, %d bytes", u, want, status, len(body))
			}
			if h.Get("Content-Type") != "application/octet-stream" {
				t.Errorf("content type %q", h.Get("Content-Type"))
			}
			n++
			ev := evs.wait(t, n)[n-1]
			wantDst := ""
			if want == "miss" {
				wantDst = up.srv.Listener.Addr().String()
			}
			if ev.Verdict != api.VerdictAllow || ev.Rule != RuleAllowed || ev.Cache != want || ev.Status != 200 ||
				ev.Bytes != int64(len(tb.data)) || ev.Package != tb.name || ev.Version != tb.version ||
				ev.Domain != "127.0.0.1" || ev.Dst != wantDst {
				t.Errorf("GET %s: event %+v, want allowed %s", u, ev, want)
			}
		}
		if c := up.count("GET", up.prefix+tb.name+"/-/"+tb.file()); c != 1 {
			t.Errorf("%s fetched %d times upstream, want 1", tb.name, c)
		}
	}
	status, body, h := request(t, "HEAD", s.URL()+"npm/plain/-/plain-1.0.0.tgz", nil)
	if status != 200 || len(body) != 0 || h.Get("Content-Length") != "5000" {
		t.Errorf("HEAD: status %d, %d bytes, length %q", status, len(body), h.Get("Content-Length"))
	}
	if s.Failure() != nil {
		t.Errorf("Failure: %v", s.Failure())
	}
}

func TestAlteredUpstreamTarballFailsTheJob(t *testing.T) {
	pkg := newTarball(t, "victim", "1.2.3", 1000)
	pkg.served = append([]byte("evil"), pkg.data[4:]...)
	up := newFakeRegistry(t, "/", "", pkg)
	dir := t.TempDir()
	g := newGateway(t, Config{}, dir, up)
	s, evs := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())}})
	status, body, _ := request(t, "GET", s.URL()+"victim/-/victim-1.2.3.tgz", nil)
	if status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	if strings.Contains(string(body), "evil") || !strings.Contains(string(body), "integrity-mismatch") {
		t.Errorf("body %q", body)
	}
	ev := evs.wait(t, 1)[0]
	if ev.Verdict != api.VerdictDeny || ev.Rule != RuleIntegrityMismatch || ev.Status != 502 || ev.Package != "victim" {
		t.Errorf("event %+v", ev)
	}
	var ie *IntegrityError
	if err := s.Failure(); !errors.As(err, &ie) || !strings.Contains(err.Error(), "victim@1.2.3") {
		t.Errorf("Failure = %v, want an integrity error naming victim@1.2.3", err)
	}
	if g.cache.Size() != 0 {
		t.Errorf("altered bytes were cached (%d bytes)", g.cache.Size())
	}
	// Prefetch fails the same way, before any install.
	err := g.Prefetch(context.Background(), Job{Entries: []Entry{pkg.entry(up.URL())}}, nil)
	if !errors.As(err, &ie) || ie.Entry.Name != "victim" {
		t.Errorf("Prefetch = %v, want an integrity error", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "tmp", "*"))
	if len(left) != 0 {
		t.Errorf("partial files left: %v", left)
	}
}

func TestTruncatedUpstreamResponseIsNotCached(t *testing.T) {
	pkg := newTarball(t, "short", "1.0.0", 10000)
	up := newFakeRegistry(t, "/", "", pkg)
	up.truncate = true
	g := newGateway(t, Config{}, "", up)
	s, evs := serve(t, g, Job{Entries: []Entry{pkg.entry(up.URL())}})
	status, _, _ := request(t, "GET", s.URL()+"short/-/short-1.0.0.tgz", nil)
	if status != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", status)
	}
	if ev := evs.wait(t, 1)[0]; ev.Rule != RuleUpstream {
		t.Errorf("event %+v, want rule %s", ev, RuleUpstream)
	}
	if err := s.Failure(); err == nil || !strings.Contains(err.Error(), "short@1.0.0") {
		t.Errorf("Failure = %v", err)
	}
	if g.cache.Size() != 0 {
		t.Error("a truncated tarball was cached")
	}
}

func TestTruncatedCacheFileIsDetectedAndRefetched(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 4096)
	up := newFakeRegistry(t, "/", "", pkg)
	dir := t.TempDir()
	g := newGateway(t, Config{}, dir, up)
	j := Job{Entries: []Entry{pkg.entry(up.URL())}}
	if err := g.Prefetch(context.Background(), j, nil); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "sha512", "*", "*"))
	if len(files) != 1 {
		t.Fatalf("cache files %v", files)
	}
	for _, corrupt := range []func(string) error{
		func(p string) error { return os.Truncate(p, 100) },
		func(p string) error { return os.WriteFile(p, []byte("altered in the cache"), 0o600) },
	} {
		if err := corrupt(files[0]); err != nil {
			t.Fatal(err)
		}
		s, evs := serve(t, g, j)
		status, body, _ := request(t, "GET", s.URL()+"pkg/-/pkg-1.0.0.tgz", nil)
		if status != 200 || string(body) != string(pkg.data) {
			t.Fatalf("status %d, %d bytes", status, len(body))
		}
		if ev := evs.wait(t, 1)[0]; ev.Cache != "miss" {
			t.Errorf("event %+v, want a miss", ev)
		}
	}
	if c := up.count("GET", "/pkg/-/pkg-1.0.0.tgz"); c != 3 {
		t.Errorf("upstream fetches %d, want 3 (prefetch and two refetches)", c)
	}
}

func TestConcurrentRequestsMakeOneUpstreamFetch(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 100000)
	up := newFakeRegistry(t, "/", "", pkg)
	up.delay = 200 * time.Millisecond
	g := newGateway(t, Config{}, "", up)
	j := Job{Entries: []Entry{pkg.entry(up.URL())}}
	s1, _ := serve(t, g, j)
	s2, _ := serve(t, g, j) // two jobs of the agent share the cache
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := []string{s1.URL(), s2.URL()}[i%2] + "pkg/-/pkg-1.0.0.tgz"
			status, body, _ := request(t, "GET", u, nil)
			if status != 200 || string(body) != string(pkg.data) {
				t.Errorf("GET: status %d, %d bytes", status, len(body))
			}
		}()
	}
	wg.Wait()
	if c := up.count("GET", "/pkg/-/pkg-1.0.0.tgz"); c != 1 {
		t.Errorf("upstream fetches %d, want 1", c)
	}
}

func TestCacheSurvivesReopen(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 2048)
	up := newFakeRegistry(t, "/", "", pkg)
	dir := t.TempDir()
	j := Job{Entries: []Entry{pkg.entry(up.URL())}}
	if err := newGateway(t, Config{}, dir, up).Prefetch(context.Background(), j, nil); err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, Config{}, dir, up) // a new agent process
	s, evs := serve(t, g, j)
	status, body, _ := request(t, "GET", s.URL()+"pkg/-/pkg-1.0.0.tgz", nil)
	if status != 200 || string(body) != string(pkg.data) {
		t.Fatalf("status %d", status)
	}
	if ev := evs.wait(t, 1)[0]; ev.Cache != "hit" {
		t.Errorf("event %+v, want a hit", ev)
	}
	if c := up.count("GET", "/pkg/-/pkg-1.0.0.tgz"); c != 1 {
		t.Errorf("upstream fetches %d, want 1", c)
	}
}

func TestCacheCapEvictsLeastRecentlyUsed(t *testing.T) {
	a, b, c := newTarball(t, "a", "1.0.0", 1000), newTarball(t, "b", "1.0.0", 1000), newTarball(t, "c", "1.0.0", 1000)
	up := newFakeRegistry(t, "/", "", a, b, c)
	cache, err := OpenCache(t.TempDir(), 2500)
	if err != nil {
		t.Fatal(err)
	}
	g := newGateway(t, Config{Cache: cache}, "", up)
	s, _ := serve(t, g, Job{Entries: []Entry{a.entry(up.URL()), b.entry(up.URL()), c.entry(up.URL())}})
	get := func(tb *fakeTarball) {
		t.Helper()
		if status, _, _ := request(t, "GET", s.URL()+tb.name+"/-/"+tb.file(), nil); status != 200 {
			t.Fatalf("GET %s: %d", tb.name, status)
		}
	}
	get(a)
	get(b)
	get(a) // a is now more recently used than b
	get(c) // over the cap: b goes
	if cache.Size() != 2000 {
		t.Errorf("cache size %d, want 2000", cache.Size())
	}
	sum := func(tb *fakeTarball) []byte { d, _ := parseIntegrity(sri512(tb.data)); return d.sum }
	if !cache.Has(sum(a)) || cache.Has(sum(b)) || !cache.Has(sum(c)) {
		t.Errorf("after eviction: a %v b %v c %v, want a and c kept", cache.Has(sum(a)), cache.Has(sum(b)), cache.Has(sum(c)))
	}
	// The order survives a restart: reopening with a smaller cap keeps c.
	time.Sleep(10 * time.Millisecond)
	get(c)
	cache2, err := OpenCache(cache.dir, 1500)
	if err != nil {
		t.Fatal(err)
	}
	if cache2.Has(sum(a)) || !cache2.Has(sum(c)) || cache2.Size() != 1000 {
		t.Errorf("reopened with cap 1500: a %v c %v size %d, want only c", cache2.Has(sum(a)), cache2.Has(sum(c)), cache2.Size())
	}
}

func TestGCRemovesPartialsAndEvictsToCap(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenCache(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "tmp", "part-crashed")
	fresh := filepath.Join(dir, "tmp", "part-writing")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, make([]byte, 10), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-time.Hour)
	if err := os.Chtimes(old, long, long); err != nil {
		t.Fatal(err)
	}
	sums := commitRandom(t, c, 3, 100)
	c.maxBytes = 150
	r, err := c.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Removed != 3 || r.Bytes != 210 || r.Kept != 1 || r.Size != 100 {
		t.Errorf("GC report %+v, want 3 removed (a partial and two LRU), 210 bytes, 1 kept", r)
	}
	if !c.Has(sums[2]) || c.Has(sums[0]) {
		t.Error("GC did not keep the most recently used entry")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a partial still being written was removed: %v", err)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an abandoned partial was kept: %v", err)
	}
}

func TestSHA1OnlyEntries(t *testing.T) {
	good := newTarball(t, "old", "0.1.0", 500)
	badSHA512 := newTarball(t, "liar", "0.1.0", 500)
	badSHA512.publishedSHA512 = sri512([]byte("other bytes"))
	badSHA1 := newTarball(t, "swapped", "0.1.0", 500)
	up := newFakeRegistry(t, "/", "", good, badSHA512, badSHA1)
	sha1Entry := func(tb *fakeTarball, b []byte) Entry {
		e := tb.entry(up.URL())
		e.Integrity = sri1(b)
		return e
	}
	entries := []Entry{sha1Entry(good, good.data), sha1Entry(badSHA512, badSHA512.data), sha1Entry(badSHA1, []byte("not it"))}

	t.Run("refused by default", func(t *testing.T) {
		g := newGateway(t, Config{}, "", up)
		j := Job{Entries: entries[:1]}
		var re *RefusedError
		if err := g.Check(context.Background(), j); !errors.As(err, &re) || len(re.Refusals) != 1 ||
			re.Refusals[0].Rule != RuleSHA1Only || !strings.Contains(err.Error(), "old@0.1.0") {
			t.Fatalf("Check = %v, want a sha1-only refusal", err)
		}
		if g.SHA1Accepted(j) != nil {
			t.Error("SHA1Accepted without AllowSHA1")
		}
		s, evs := serve(t, g, j)
		if status, _, _ := request(t, "GET", s.URL()+"old/-/old-0.1.0.tgz", nil); status != 403 {
			t.Errorf("status %d, want 403", status)
		}
		if ev := evs.wait(t, 1)[0]; ev.Rule != RuleSHA1Only || ev.Package != "old" || ev.Version != "0.1.0" {
			t.Errorf("event %+v", ev)
		}
	})
	t.Run("opt-in accepts only when both hashes match", func(t *testing.T) {
		g := newGateway(t, Config{AllowSHA1: true}, "", up)
		j := Job{Entries: entries}
		if err := g.Check(context.Background(), j); err != nil {
			t.Fatalf("Check: %v", err)
		}
		if got := g.SHA1Accepted(j); len(got) != 3 || got[0].Name != "liar" {
			t.Errorf("SHA1Accepted = %+v", got)
		}
		s, evs := serve(t, g, j)
		status, body, _ := request(t, "GET", s.URL()+"old/-/old-0.1.0.tgz", nil)
		if status != 200 || string(body) != string(good.data) {
			t.Errorf("good: status %d", status)
		}
		if ev := evs.wait(t, 1)[0]; ev.Rule != RuleAllowedSHA1 || ev.Verdict != api.VerdictAllow {
			t.Errorf("event %+v", ev)
		}
		for i, tb := range []*fakeTarball{badSHA512, badSHA1} {
			status, _, _ := request(t, "GET", s.URL()+tb.name+"/-/"+tb.file(), nil)
			if status != 502 {
				t.Errorf("%s: status %d, want 502", tb.name, status)
			}
			if ev := evs.wait(t, 2+i)[1+i]; ev.Rule != RuleIntegrityMismatch {
				t.Errorf("%s: event %+v", tb.name, ev)
			}
		}
		if err := s.Failure(); err == nil || !strings.Contains(err.Error(), "liar@0.1.0") {
			t.Errorf("Failure = %v", err)
		}
		d, _ := parseIntegrity(sri512(good.data))
		if !g.cache.Has(d.sum) || g.cache.Size() != 500 {
			t.Errorf("cache holds %d bytes, want only the good tarball under its sha512", g.cache.Size())
		}
	})
}

func TestMinReleaseAge(t *testing.T) {
	now := time.Date(2025, 9, 8, 12, 0, 0, 0, time.UTC)
	fresh := newTarball(t, "fresh", "2.0.0", 10)
	fresh.published = now.Add(-time.Minute)
	old := newTarball(t, "fresh", "1.0.0", 10)
	old.published = now.Add(-72 * time.Hour)
	up := newFakeRegistry(t, "/", "", fresh, old)
	cases := []struct {
		agent, job time.Duration
		refused    bool
	}{
		{0, 0, false},
		{24 * time.Hour, 0, true},
		{0, 24 * time.Hour, true},
		{24 * time.Hour, time.Second, true}, // the job cannot loosen the agent's
		{30 * time.Second, 0, false},
	}
	for _, c := range cases {
		g := newGateway(t, Config{MinReleaseAge: c.agent, Now: func() time.Time { return now }}, "", up)
		err := g.Check(context.Background(), Job{MinReleaseAge: c.job, Entries: []Entry{fresh.entry(up.URL()), old.entry(up.URL())}})
		var re *RefusedError
		if !c.refused {
			if err != nil {
				t.Errorf("agent %v job %v: Check = %v, want nil", c.agent, c.job, err)
			}
			continue
		}
		if !errors.As(err, &re) || len(re.Refusals) != 1 || re.Refusals[0].Rule != RuleReleaseTooNew ||
			re.Refusals[0].Entry.Version != "2.0.0" || !strings.Contains(err.Error(), "fresh@2.0.0: published 1m0s ago") {
			t.Errorf("agent %v job %v: Check = %v, want fresh@2.0.0 refused as published 1m0s ago", c.agent, c.job, err)
		}
	}
	if c := up.count("GET", "/fresh"); c != 4 {
		t.Errorf("packument fetched %d times, want once per Check with an age", c)
	}
}

func TestCheckFailsClosedOnUpstreams(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/", "right-token", pkg)
	j := Job{Entries: []Entry{pkg.entry(up.URL())}}
	cfg := Config{Upstreams: []Upstream{{URL: up.URL(), Token: "wrong-token"}}}
	g := newGateway(t, cfg, "")
	err := g.Check(context.Background(), j)
	if err == nil || !strings.Contains(err.Error(), "credentials for "+up.URL()+" rejected") || strings.Contains(err.Error(), "wrong-token") {
		t.Errorf("Check with a wrong token = %v", err)
	}
	if err := newGateway(t, Config{}, "", up).Check(context.Background(), j); err != nil {
		t.Errorf("Check with the right token = %v", err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	g = newGateway(t, Config{Upstreams: []Upstream{{URL: dead.URL}}}, "")
	if err := g.Check(context.Background(), j); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("Check with a dead upstream = %v", err)
	}
	// An entry the upstream does not have fails before any sandbox.
	missing := Entry{Name: "gone", Version: "1.0.0", Resolved: up.URL() + "gone/-/gone-1.0.0.tgz", Integrity: sri512([]byte("x"))}
	if err := newGateway(t, Config{}, "", up).Check(context.Background(), Job{Entries: []Entry{missing}}); err == nil ||
		!strings.Contains(err.Error(), "status 404") {
		t.Errorf("Check of a missing tarball = %v", err)
	}
	// An entry resolved on a host that is neither upstream nor alias.
	foreign := pkg.entry("https://evil.example.com/")
	var re *RefusedError
	if err := newGateway(t, Config{}, "", up).Check(context.Background(), Job{Entries: []Entry{foreign}}); !errors.As(err, &re) ||
		!strings.Contains(err.Error(), "evil.example.com") {
		t.Errorf("Check of a foreign host = %v", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	c, _ := OpenCache(t.TempDir(), 0)
	for _, cfg := range []Config{
		{Cache: c},
		{Upstreams: []Upstream{{URL: "http://r/"}}},
		{Cache: c, Upstreams: []Upstream{{URL: "ftp://r/"}}},
		{Cache: c, Upstreams: []Upstream{{URL: "http://user:pw@r/"}}},
		{Cache: c, Upstreams: []Upstream{{URL: "http://r/", Scopes: []string{"@a"}}}},
		{Cache: c, Upstreams: []Upstream{{URL: "http://r/", Scopes: []string{"a"}}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) = nil error", cfg)
		}
	}
}

func TestScopesGoToTheirUpstreamWithTheirToken(t *testing.T) {
	pub := newTarball(t, "pub", "1.0.0", 10)
	priv := newTarball(t, "@acme/priv", "1.0.0", 10)
	def := newFakeRegistry(t, "/", "default-token", pub)
	acme := newFakeRegistry(t, "/", "acme-token", priv)
	g := newGateway(t, Config{Upstreams: []Upstream{
		{URL: acme.URL(), Token: acme.token, Scopes: []string{"@acme"}},
		{URL: def.URL(), Token: def.token},
	}}, "")
	// Both lockfile entries resolve to the public registry (an alias).
	s, _ := serve(t, g, Job{Entries: []Entry{pub.entry("https://registry.npmjs.org/"), priv.entry("https://registry.npmjs.org/")}})
	for _, tb := range []*fakeTarball{pub, priv} {
		if status, _, _ := request(t, "GET", s.URL()+tb.name+"/-/"+tb.file(), nil); status != 200 {
			t.Errorf("%s: status %d", tb.name, status)
		}
	}
	if def.count("GET", "/pub/-/pub-1.0.0.tgz") != 1 || acme.count("GET", "/@acme/priv/-/priv-1.0.0.tgz") != 1 {
		t.Errorf("requests: default %v, acme %v", def.requests, acme.requests)
	}
}

func TestServesFilteredPackumentOfLockfileNames(t *testing.T) {
	v1 := newTarball(t, "@acme/lib", "1.0.0", 10)
	v2 := newTarball(t, "@acme/lib", "2.0.0", 10)
	up := newFakeRegistry(t, "/", "tok", v1, v2)
	g := newGateway(t, Config{}, "", up)
	e := v1.entry(up.URL())
	e.Resolved = "" // npm asks for packuments only for such entries
	s, evs := serve(t, g, Job{Entries: []Entry{e}})
	status, body, _ := request(t, "GET", s.URL()+"@acme%2flib", nil)
	if status != 200 {
		t.Fatalf("status %d: %s", status, body)
	}
	var doc struct {
		Versions map[string]struct {
			Dist struct{ Tarball string } `json:"dist"`
		} `json:"versions"`
		DistTags map[string]string `json:"dist-tags"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Versions) != 1 || doc.Versions["1.0.0"].Dist.Tarball != s.URL()+"@acme/lib/-/lib-1.0.0.tgz" ||
		doc.DistTags["latest"] != "1.0.0" {
		t.Errorf("packument %s", body)
	}
	if ev := evs.wait(t, 1)[0]; ev.Verdict != api.VerdictAllow || ev.Package != "@acme/lib" || ev.Rule != RuleAllowed {
		t.Errorf("event %+v", ev)
	}
	if status, _, _ := request(t, "GET", doc.Versions["1.0.0"].Dist.Tarball, nil); status != 200 {
		t.Errorf("tarball from the packument: status %d", status)
	}
}

func TestNoCredentialInResponsesOrEvents(t *testing.T) {
	const token = "npm_SuperSecretAgentToken1234567890"
	good := newTarball(t, "good", "1.0.0", 100)
	bad := newTarball(t, "bad", "1.0.0", 100)
	bad.served = []byte("tampered")
	up := newFakeRegistry(t, "/", token, good, bad)
	// A second upstream that rejects the token: its error travels too.
	other := newFakeRegistry(t, "/", "another-token", newTarball(t, "@o/x", "1.0.0", 10))
	g := newGateway(t, Config{Upstreams: []Upstream{
		{URL: up.URL(), Token: token},
		{URL: other.URL(), Token: token, Scopes: []string{"@o"}},
	}}, "")
	j := Job{Entries: []Entry{good.entry(up.URL()), bad.entry(up.URL()), other.pkgs[0].entry("https://registry.npmjs.org/")}}
	j.Entries[0].Resolved = ""
	s, evs := serve(t, g, j)
	var seen strings.Builder
	for _, r := range []struct{ method, path string }{
		{"GET", "good/-/good-1.0.0.tgz"}, {"GET", "bad/-/bad-1.0.0.tgz"}, {"GET", "@o/x/-/x-1.0.0.tgz"},
		{"GET", "good"}, {"GET", "@o%2fx"}, {"PUT", "-/user/org.couchdb.user:x"}, {"GET", "-/whoami"},
	} {
		status, body, h := request(t, r.method, s.URL()+r.path, nil)
		seen.Write(body)
		for k, v := range h {
			seen.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		_ = status
	}
	for _, ev := range evs.wait(t, 7) {
		b, _ := json.Marshal(ev)
		seen.Write(b)
	}
	if err := s.Failure(); err != nil {
		seen.WriteString(err.Error())
	}
	if err := g.Check(context.Background(), j); err != nil {
		seen.WriteString(err.Error())
	}
	if strings.Contains(seen.String(), token) || strings.Contains(seen.String(), "SuperSecret") {
		t.Errorf("the upstream token leaked:\n%s", seen.String())
	}
	if !strings.Contains(seen.String(), "credentials for") {
		t.Errorf("the rejected credential is not reported:\n%s", seen.String())
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, a := range up.auth {
		if a != "Bearer "+token {
			t.Errorf("upstream saw Authorization %q", a)
		}
	}
}

func TestUpstreamRedirectToAnotherHostIsRefused(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	elsewhere := newFakeRegistry(t, "/", "", pkg)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// localhost is another host name for the same loopback.
		http.Redirect(w, r, strings.Replace(elsewhere.URL(), "127.0.0.1", "localhost", 1)+strings.TrimPrefix(r.URL.Path, "/"), http.StatusFound)
	}))
	defer redirector.Close()
	g := newGateway(t, Config{Upstreams: []Upstream{{URL: redirector.URL, Token: "tok"}}}, "")
	s, _ := serve(t, g, Job{Entries: []Entry{pkg.entry(redirector.URL + "/")}})
	if status, _, _ := request(t, "GET", s.URL()+"pkg/-/pkg-1.0.0.tgz", nil); status != 502 {
		t.Errorf("status %d, want 502", status)
	}
	if elsewhere.total() != 0 {
		t.Error("the redirect was followed")
	}
}

func TestEventPathsAreRedacted(t *testing.T) {
	pkg := newTarball(t, "pkg", "1.0.0", 10)
	up := newFakeRegistry(t, "/", "", pkg)
	g := newGateway(t, Config{}, "", up)
	s, evs := serve(t, g, Job{Redact: func(p string) string { return strings.ReplaceAll(p, "hunter2", "[REDACTED]") }})
	request(t, "GET", s.URL()+"exfil/hunter2?q=hunter2", nil)
	if ev := evs.wait(t, 1)[0]; ev.Path != "/exfil/[REDACTED]" {
		t.Errorf("path %q", ev.Path)
	}
}

func TestParseIntegrityPicksTheStrongest(t *testing.T) {
	s512 := sri512([]byte("x"))
	s1 := sri1([]byte("x"))
	for _, c := range []struct {
		in, alg string
		err     bool
	}{
		{s512, "sha512", false},
		{s1 + " " + s512 + "?opt", "sha512", false},
		{s1, "sha1", false},
		{"md5-abc " + s1, "sha1", false},
		{"sha512-short", "", true},
		{"", "", true},
		{"md5-abc", "", true},
	} {
		d, err := parseIntegrity(c.in)
		if (err != nil) != c.err || d.alg != c.alg {
			t.Errorf("parseIntegrity(%q) = %v, %v", c.in, d.alg, err)
		}
	}
}

func TestPrefetchReportsProgress(t *testing.T) {
	var tbs []*fakeTarball
	var entries []Entry
	for _, n := range []string{"a", "b", "c", "d"} {
		tbs = append(tbs, newTarball(t, n, "1.0.0", 50))
	}
	up := newFakeRegistry(t, "/", "", tbs...)
	for _, tb := range tbs {
		entries = append(entries, tb.entry(up.URL()))
	}
	g := newGateway(t, Config{}, "", up)
	var mu sync.Mutex
	var calls []int
	if err := g.Prefetch(context.Background(), Job{Entries: entries}, func(done, total int) {
		mu.Lock()
		defer mu.Unlock()
		if total != 4 {
			t.Errorf("total %d", total)
		}
		calls = append(calls, done)
	}); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 4 || calls[3] != 4 || g.cache.Size() != 200 {
		t.Errorf("progress %v, cache %d bytes", calls, g.cache.Size())
	}
}

// `cleanroom gc` opens the cache to collect it: what the opening already
// evicted down to the cap (and the partials it removed) is in GC's report.
func TestCacheGCReportsWhatOpeningRemoved(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenCache(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	commitRandom(t, c, 3, 100)
	c, err = OpenCache(dir, 150)
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Removed != 2 || r.Bytes != 200 || r.Kept != 1 || r.Size != 100 {
		t.Errorf("GC report %+v, want 2 removed (evicted when opened), 200 bytes, 1 kept", r)
	}
	if r, _ := c.GC(context.Background()); r.Removed != 0 {
		t.Errorf("a second GC reports %+v, want nothing removed", r)
	}
}

// commitRandom stores n random tarballs of size bytes in c, each used a
// little later than the one before, and returns their sha512s in order.
func commitRandom(t *testing.T, c *Cache, n, size int) [][]byte {
	t.Helper()
	var sums [][]byte
	for range n {
		data := randomBytes(t, size)
		d, _ := parseIntegrity(sri512(data))
		f, _ := c.tempFile()
		f.Write(data)
		f.Close()
		if err := c.commit(f.Name(), hexKey(d.sum), int64(size)); err != nil {
			t.Fatal(err)
		}
		sums = append(sums, d.sum)
		time.Sleep(2 * time.Millisecond)
	}
	return sums
}
