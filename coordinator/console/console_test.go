package console

import (
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

// fakeBackend knows one admin token and no jobs. The coordinator's
// tests (coordinator/console_test.go) run the console against the real one.
type fakeBackend struct{ done chan struct{} }

func (fakeBackend) Authenticate(_ context.Context, token string) (Principal, error) {
	if token == "cra_good" {
		return Principal{Kind: KindAdmin}, nil
	}
	return Principal{}, api.ErrUnauthorized
}
func (fakeBackend) Jobs(context.Context, Principal, store.JobFilter) ([]store.Job, error) {
	return nil, nil
}
func (fakeBackend) Job(context.Context, Principal, string) (store.Job, error) {
	return store.Job{}, store.ErrNotFound
}
func (fakeBackend) DeniedCounts(context.Context, Principal, []string) (map[string]int, error) {
	return nil, nil
}
func (fakeBackend) ReadLog(context.Context, Principal, string, int64, int) ([]byte, error) {
	return nil, store.ErrNotFound
}
func (fakeBackend) LogChanged(string) <-chan struct{} { return make(chan struct{}) }
func (fakeBackend) Egress(context.Context, Principal, store.EgressFilter, func(api.EgressEvent) error) error {
	return nil
}
func (fakeBackend) Artifacts(context.Context, Principal, string) ([]api.Artifact, error) {
	return nil, store.ErrNotFound
}
func (fakeBackend) OpenArtifact(context.Context, Principal, string, string) (io.ReadCloser, api.Artifact, error) {
	return nil, api.Artifact{}, store.ErrNotFound
}
func (fakeBackend) Runners(context.Context, Principal) ([]store.Runner, error) { return nil, nil }
func (fakeBackend) RunnerKey(context.Context, string) (ed25519.PublicKey, *time.Time, error) {
	return nil, nil, store.ErrNotFound
}
func (b fakeBackend) Done() <-chan struct{} { return b.done }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func signIn(t *testing.T, srv *httptest.Server, token string) *http.Response {
	t.Helper()
	cl := srv.Client()
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/ui/signin", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", srv.URL)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func get(t *testing.T, srv *httptest.Server, path string, ck *http.Cookie) *http.Response {
	t.Helper()
	cl := srv.Client()
	cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if ck != nil {
		req.AddCookie(ck)
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestSessionCookieIsSecureUnderTLS(t *testing.T) {
	srv := httptest.NewTLSServer(New(fakeBackend{}, Options{}))
	defer srv.Close()
	resp := signIn(t, srv, "cra_good")
	cks := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cks) != 1 || !cks[0].Secure || !cks[0].HttpOnly || cks[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("sign-in over TLS: %d, cookies %+v; want one Secure, HttpOnly, SameSite=Strict cookie", resp.StatusCode, cks)
	}
}

func TestSessionsExpireAndAreBounded(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	c := New(fakeBackend{}, Options{SessionTTL: time.Hour, MaxSessions: 3, Now: clk.now})
	srv := httptest.NewServer(c)
	defer srv.Close()
	ck := signIn(t, srv, "cra_good").Cookies()[0]
	if resp := get(t, srv, "/ui/runners", ck); resp.StatusCode != http.StatusOK {
		t.Fatalf("fresh session: %d", resp.StatusCode)
	}
	clk.add(time.Hour)
	if resp := get(t, srv, "/ui/runners", ck); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("expired session: %d, want a redirect to sign in", resp.StatusCode)
	}
	for range 5 {
		signIn(t, srv, "cra_good")
		clk.add(time.Second)
	}
	if n := c.sessions.len(); n != 3 {
		t.Fatalf("%d sessions kept, want at most 3", n)
	}
}

func TestStaticFilesAndSignInPageNeedNoSession(t *testing.T) {
	srv := httptest.NewServer(New(fakeBackend{}, Options{}))
	defer srv.Close()
	for path, ctype := range map[string]string{
		"/ui/static/console.css": "text/css; charset=utf-8",
		"/ui/static/follow.js":   "text/javascript; charset=utf-8",
		"/ui/signin":             "text/html; charset=utf-8",
	} {
		resp := get(t, srv, path, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ctype || resp.Header.Get("Content-Security-Policy") != ContentSecurityPolicy {
			t.Errorf("%s: %d %q, CSP %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Security-Policy"))
		}
	}
}

func TestEveryRuleIsExplained(t *testing.T) {
	rules := []string{netpolicy.RuleDefaultDeny, netpolicy.RuleMetadataDeny, netpolicy.RuleAllowRegistry, netpolicy.RuleDNSAllow, netpolicy.RuleDNSRefused}
	if len(rules) != len(ruleNames) {
		t.Errorf("the console lists %d rules, netpolicy has %d", len(ruleNames), len(rules))
	}
	for _, r := range rules {
		if ruleWords[r] == "" {
			t.Errorf("rule %s has no explanation", r)
		}
	}
	if got := explainRule(api.EgressEvent{Verdict: "deny", Rule: "new-rule"}); !strings.Contains(got, "new-rule") {
		t.Errorf("unknown rule explained as %q", got)
	}
}

func TestWholeRunesKeepsACutCharacterForTheNextChunk(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", "abc"},
		{"ab\xc3", "ab"},            // first byte of é
		{"ab\xe2\x82", "ab"},        // two bytes of €
		{"ab\xe2\x82\xac", "ab€"},   // whole €
		{"\xc3", "\xc3"},            // nothing else: sent as is
		{"ab\xff", "ab\xff"},        // invalid, not a cut rune
		{"x\xf0\x9f\x98", "x"},      // three bytes of an emoji
		{"x\xf0\x9f\x98\x80", "x😀"}, // the whole emoji
	} {
		if got := string(wholeRunes([]byte(tc.in))); got != tc.want {
			t.Errorf("wholeRunes(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseTimeAcceptsFormInputAndRFC3339(t *testing.T) {
	want := time.Date(2025, 1, 31, 12, 0, 0, 0, time.UTC)
	for _, v := range []string{"2025-01-31T12:00", "2025-01-31T12:00:00", "2025-01-31T12:00:00Z", "2025-01-31T13:00:00+01:00"} {
		got, err := parseTime(v)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v", v, got, err)
		}
	}
	if _, err := parseTime("yesterday"); err == nil {
		t.Error("parseTime accepted yesterday")
	}
}
