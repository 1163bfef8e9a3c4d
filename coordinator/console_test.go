package coordinator_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/csv"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/console"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// XSSLog and XSSDomain are what a build's malware would print and query
// to attack whoever reads its log and events in the console.
const (
	XSSLog    = "<script>window.__cleanroomXSS = 'log'</script>\n"
	XSSDomain = "<script>window.__cleanroomXSS='dns'</script>.exfil.example."
)

// webUser is a browser-like client of the console: it keeps cookies and
// does not follow redirects, so tests see every answer.
type webUser struct {
	t    *testing.T
	c    *coord
	http *http.Client
}

func (c *coord) webUser() *webUser {
	jar, _ := cookiejar.New(nil)
	return &webUser{t: c.t, c: c, http: &http.Client{Transport: c.tr, Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (u *webUser) do(req *http.Request) (*http.Response, string) {
	u.t.Helper()
	resp, err := u.http.Do(req)
	if err != nil {
		u.t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (u *webUser) get(path string) (*http.Response, string) {
	u.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u.c.URL+path, nil)
	return u.do(req)
}

// post sends a form as a same-origin browser would.
func (u *webUser) post(path string, form url.Values, header map[string]string) (*http.Response, string) {
	u.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u.c.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", u.c.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return u.do(req)
}

func (u *webUser) signIn(token string) {
	u.t.Helper()
	resp, body := u.post("/ui/signin", url.Values{"token": {token}}, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/jobs" {
		u.t.Fatalf("sign-in: %d %s: %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
}

// wantPage fetches path and fails unless it answers status.
func (u *webUser) wantPage(path string, status int) string {
	u.t.Helper()
	resp, body := u.get(path)
	if resp.StatusCode != status {
		u.t.Fatalf("GET %s: %d, want %d: %s", path, resp.StatusCode, status, body)
	}
	return body
}

// consoleJob runs a job through a runner as an agent would: a log with a
// script tag, egress events (denied ones, one with a script tag in its
// domain, one allowed), then the result. It returns the job.
func consoleJob(t *testing.T, c *coord, submitter *api.Client, runner *api.Client, dsts ...string) api.Job {
	t.Helper()
	ctx := context.Background()
	spec, src := gitSpec()
	j, err := submitter.SubmitGit(ctx, spec, src)
	if err != nil {
		t.Fatal(err)
	}
	cl, ok := claimOne(t, runner, 5*time.Second)
	if !ok || cl.Job.ID != j.ID {
		t.Fatalf("claimed %+v, want %s", cl.Job, j.ID)
	}
	log := "$ npm ci\n" + XSSLog + "build done\n"
	if _, err := runner.AppendLog(ctx, j.ID, cl.Lease.Token, 0, []byte(log)); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	evs := []api.EgressEvent{
		{Time: now, Proto: "dns", Dst: "10.231.0.1:53", Domain: "registry.lab.", Answer: "10.231.254.2", Verdict: "allow", Rule: "dns-allow"},
		{Time: now.Add(time.Millisecond), Proto: "dns", Dst: "10.231.0.1:53", Domain: XSSDomain, Answer: "NXDOMAIN", Verdict: "deny", Rule: "dns-refused"},
		{Time: now.Add(2 * time.Millisecond), Proto: "tcp", Dst: "169.254.169.254:80", Verdict: "deny", Rule: "metadata-deny"},
	}
	for i, d := range dsts {
		evs = append(evs, api.EgressEvent{Time: now.Add(time.Duration(3+i) * time.Millisecond), Proto: "tcp", Dst: d, Verdict: "deny", Rule: "default-deny"})
	}
	if err := runner.PostEgress(ctx, j.ID, cl.Lease.Token, 0, evs); err != nil {
		t.Fatal(err)
	}
	if err := runner.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded, LogSize: int64(len(log))}); err != nil {
		t.Fatal(err)
	}
	return j
}

func (c *coord) token(kind string) string {
	c.t.Helper()
	tok, err := c.AdminClient().CreateToken(context.Background(), api.TokenRequest{Kind: kind})
	if err != nil {
		c.t.Fatal(err)
	}
	return tok.Token
}

func TestConsoleSignInUsesAStrictServerSideSession(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	u := c.webUser()

	resp, _ := u.get("/ui/jobs")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
		t.Fatalf("jobs without a session: %d to %q, want a redirect to sign in", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ := u.get("/ui/egress/export.jsonl"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("export without a session: %d, want 401", resp.StatusCode)
	}
	form := u.wantPage("/ui/signin", http.StatusOK)
	if !strings.Contains(form, `method="post" action="/ui/signin"`) || !strings.Contains(form, `type="password"`) {
		t.Fatalf("sign-in form:\n%s", form)
	}

	for _, bad := range []string{"", "cra_wrong", c.token(api.TokenRegistration), "crs_x.y"} {
		resp, body := u.post("/ui/signin", url.Values{"token": {bad}}, nil)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Set-Cookie") != "" || !strings.Contains(body, "refused") {
			t.Fatalf("sign-in with %q: %d, cookie %q", bad, resp.StatusCode, resp.Header.Get("Set-Cookie"))
		}
	}
	resp, _ = u.post("/ui/signin", url.Values{"token": {c.Admin}}, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	cookies := resp.Cookies()
	if len(cookies) != 1 {
		t.Fatalf("sign-in set %d cookies", len(cookies))
	}
	ck := cookies[0]
	if ck.Name != console.CookieName || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ui/" || ck.Secure || ck.MaxAge <= 0 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/ui/, a max age, and not Secure over plain HTTP", ck)
	}
	if strings.Contains(ck.Value, c.Admin) || strings.Contains(c.Admin, ck.Value) || len(ck.Value) < 40 {
		t.Fatalf("the cookie %q is not a random session id", ck.Value)
	}
	resp, body := u.get("/ui/jobs")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "admin token") {
		t.Fatalf("jobs after sign-in: %d\n%s", resp.StatusCode, body)
	}
	for _, h := range []struct{ name, want string }{
		{"Content-Security-Policy", console.ContentSecurityPolicy},
		{"X-Content-Type-Options", "nosniff"},
		{"X-Frame-Options", "DENY"},
		{"Referrer-Policy", "no-referrer"},
		{"Cache-Control", "no-store"},
	} {
		if got := resp.Header.Get(h.name); got != h.want {
			t.Errorf("%s: %q, want %q", h.name, got, h.want)
		}
	}
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(console.ContentSecurityPolicy, want) {
			t.Errorf("CSP lacks %s", want)
		}
	}
	if strings.Contains(body, " style=") || strings.Contains(body, "<script>") || strings.Contains(body, " onclick") {
		t.Errorf("page has inline style or script:\n%s", body)
	}

	// Sign out: the session is gone on the server, not just in the browser.
	resp, _ = u.post("/ui/signout", nil, nil)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-out: %d", resp.StatusCode)
	}
	replay := &http.Client{Transport: c.tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest(http.MethodGet, c.URL+"/ui/jobs", nil)
	req.AddCookie(ck)
	resp, err := replay.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the signed-out session id still opens pages: %d", resp.StatusCode)
	}
}

func TestConsoleRefusesCrossOriginSignInAndSignOut(t *testing.T) {
	c := startCoord(t)
	u := c.webUser()
	for _, h := range []map[string]string{
		{"Origin": "http://evil.example", "Sec-Fetch-Site": ""},
		{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site"},
	} {
		for _, path := range []string{"/ui/signin", "/ui/signout"} {
			resp, _ := u.post(path, url.Values{"token": {c.Admin}}, h)
			if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
				t.Errorf("POST %s with %v: %d, cookies %v; want 403", path, h, resp.StatusCode, resp.Cookies())
			}
		}
	}
	u.signIn(c.Admin)
}

func TestConsoleSubmitTokenSeesOnlyItsOwnJobs(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	teamA, teamB, audit := c.token(api.TokenSubmit), c.token(api.TokenSubmit), c.token(api.TokenAudit)
	r, rid := c.Register("r", nil)
	jobA := consoleJob(t, c, c.client(teamA), r, "10.9.9.1:443")
	jobB := consoleJob(t, c, c.client(teamB), r, "10.9.9.2:443")

	u := c.webUser()
	u.signIn(teamA)
	list := u.wantPage("/ui/jobs", http.StatusOK)
	if !strings.Contains(list, jobA.ID) || strings.Contains(list, jobB.ID) {
		t.Fatalf("team A's job list shows A %v, B %v", strings.Contains(list, jobA.ID), strings.Contains(list, jobB.ID))
	}
	u.wantPage("/ui/jobs/"+jobA.ID, http.StatusOK)
	for _, p := range []string{"/ui/jobs/" + jobB.ID, "/ui/jobs/" + jobB.ID + "/log.txt", "/ui/jobs/" + jobB.ID + "/log/events",
		"/ui/jobs/j-none", "/ui/jobs/" + jobB.ID + "/artifacts/x"} {
		body := u.wantPage(p, http.StatusNotFound)
		if strings.Contains(body, "10.9.9.2") || strings.Contains(body, "build done") {
			t.Errorf("%s leaks team B's job: %s", p, body)
		}
	}
	for _, p := range []string{"/ui/egress", "/ui/egress?job=" + jobB.ID, "/ui/egress/export.jsonl", "/ui/egress/export.csv?runner=" + rid} {
		body := u.wantPage(p, http.StatusOK)
		// (The explorer's form echoes the job filter: look for B's events.)
		if strings.Contains(body, `href="/ui/jobs/`+jobB.ID) || strings.Contains(body, `"job":"`+jobB.ID) ||
			strings.Contains(body, ","+jobB.ID+",") || strings.Contains(body, "10.9.9.2") {
			t.Errorf("%s shows team B's events", p)
		}
	}
	if body := u.wantPage("/ui/egress/export.jsonl", http.StatusOK); !strings.Contains(body, "10.9.9.1") {
		t.Errorf("team A's export lacks its own events:\n%s", body)
	}
	u.wantPage("/ui/runners", http.StatusForbidden)
	if list := u.wantPage("/ui/jobs", http.StatusOK); strings.Contains(list, `href="/ui/runners"`) {
		t.Errorf("a submit token is offered the runners page")
	}

	au := c.webUser()
	au.signIn(audit)
	list = au.wantPage("/ui/jobs", http.StatusOK)
	if !strings.Contains(list, jobA.ID) || !strings.Contains(list, jobB.ID) {
		t.Fatalf("audit does not list both jobs")
	}
	au.wantPage("/ui/jobs/"+jobB.ID, http.StatusOK)
	au.wantPage("/ui/runners", http.StatusForbidden)

	ad := c.webUser()
	ad.signIn(c.Admin)
	runners := ad.wantPage("/ui/runners", http.StatusOK)
	if !strings.Contains(runners, rid) {
		t.Fatalf("runners page lacks %s:\n%s", rid, runners)
	}

	// Revoking the token ends its session at the next request.
	if _, err := c.AdminClient().RevokeToken(context.Background(), strings.SplitN(strings.TrimPrefix(teamA, "crs_"), ".", 2)[0]); err != nil {
		t.Fatal(err)
	}
	if resp, _ := u.get("/ui/jobs"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("a revoked token's session still opens pages: %d", resp.StatusCode)
	}
}

func TestConsoleShowsLogAndEgressAsTextWithDeniedRulesExplained(t *testing.T) {
	c := startCoord(t)
	r, _ := c.Register("r", nil)
	j := consoleJob(t, c, c.AdminClient(), r, "10.9.9.1:443")
	u := c.webUser()
	u.signIn(c.Admin)
	page := u.wantPage("/ui/jobs/"+j.ID, http.StatusOK)
	for _, want := range []string{
		"&lt;script&gt;window.__cleanroomXSS = &#39;log&#39;&lt;/script&gt;",
		"&lt;script&gt;window.__cleanroomXSS=&#39;dns&#39;&lt;/script&gt;.exfil.example.",
		`<tr class="deny">`, `<tr class="allow">`,
		"cloud metadata services", // metadata-deny explained
		"not one, so the query got NXDOMAIN",
		"3 denied", "build done",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("job page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>window") {
		t.Errorf("job page carries the build's script tag as HTML")
	}
	if strings.Contains(page, "data-follow") {
		t.Errorf("a finished job's page offers live follow")
	}
	list := u.wantPage("/ui/jobs", http.StatusOK)
	if !strings.Contains(list, `<span class="denied-count">3</span>`) {
		t.Errorf("jobs list lacks the denied count 3:\n%s", list)
	}
	if txt := u.wantPage("/ui/jobs/"+j.ID+"/log.txt", http.StatusOK); !strings.Contains(txt, XSSLog) {
		t.Errorf("log.txt: %q", txt)
	}
	resp, _ := u.get("/ui/jobs/" + j.ID + "/log.txt")
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("log.txt served as %q", ct)
	}
}

func TestConsoleExplorerFiltersAndExportsJSONLinesAndCSV(t *testing.T) {
	c := startCoord(t)
	r, rid := c.Register("r", nil)
	j1 := consoleJob(t, c, c.AdminClient(), r, "10.9.9.1:443", "=cmd|' /C calc'!A0")
	j2 := consoleJob(t, c, c.AdminClient(), r, "10.9.9.2:443")
	u := c.webUser()
	u.signIn(c.Admin)

	page := u.wantPage("/ui/egress?verdict=deny&dst=10.9.9.1", http.StatusOK)
	if !strings.Contains(page, "10.9.9.1:443") || strings.Contains(page, "10.9.9.2:443") || strings.Contains(page, "registry.lab.") {
		t.Fatalf("explorer filtered by verdict and destination:\n%s", page)
	}
	if !strings.Contains(page, `href="/ui/egress/export.jsonl?dst=10.9.9.1&amp;verdict=deny"`) {
		t.Errorf("the export link does not carry the filters")
	}
	u.wantPage("/ui/egress?verdict=maybe", http.StatusBadRequest)
	u.wantPage("/ui/egress?since=yesterday", http.StatusBadRequest)

	jsonl := u.wantPage("/ui/egress/export.jsonl?verdict=deny&job="+j1.ID, http.StatusOK)
	var got []api.EgressEvent
	sc := bufio.NewScanner(strings.NewReader(jsonl))
	for sc.Scan() {
		var e api.EgressEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if len(got) != 4 {
		t.Fatalf("JSON lines export: %d events, want j1's 4 denied:\n%s", len(got), jsonl)
	}
	for _, e := range got {
		if e.Job != j1.ID || e.Verdict != api.VerdictDeny || e.Runner != rid {
			t.Errorf("exported %+v", e)
		}
	}
	if got[0].Domain != XSSDomain {
		t.Errorf("exported domain %q, want it verbatim", got[0].Domain)
	}

	resp, body := u.get("/ui/egress/export.csv?rule=default-deny")
	if resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Errorf("CSV served as %q, %q", resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
	}
	rows, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatalf("CSV: %v\n%s", err, body)
	}
	if len(rows) != 4 || strings.Join(rows[0], ",") != strings.Join(console.CSVHeader, ",") {
		t.Fatalf("CSV rows %v, want the header and 3 default-deny events", rows)
	}
	dsts := []string{rows[1][6], rows[2][6], rows[3][6]}
	want := []string{"10.9.9.1:443", "'=cmd|' /C calc'!A0", "10.9.9.2:443"}
	if strings.Join(dsts, " ") != strings.Join(want, " ") {
		t.Errorf("CSV destinations %q, want %q (a formula defused with a quote)", dsts, want)
	}
	if rows[3][2] != j2.ID || rows[3][9] != "deny" || rows[3][10] != "default-deny" {
		t.Errorf("CSV row %v", rows[3])
	}
	empty := u.wantPage("/ui/egress/export.csv?job=j-none", http.StatusOK)
	if strings.TrimSpace(empty) != strings.Join(console.CSVHeader, ",") {
		t.Errorf("an empty CSV export is %q, want the header", empty)
	}
}

func TestConsoleJobsListFiltersAndPages(t *testing.T) {
	c := startCoord(t)
	r, rid := c.Register("r", nil)
	done := consoleJob(t, c, c.AdminClient(), r)
	var queued []string
	for range 51 {
		queued = append(queued, c.Submit(map[string]string{"pool": "none"}).ID)
	}
	u := c.webUser()
	u.signIn(c.Admin)
	first := u.wantPage("/ui/jobs?state=queued", http.StatusOK)
	if !strings.Contains(first, queued[50]) || strings.Contains(first, queued[0]) || strings.Contains(first, done.ID) {
		t.Fatalf("first page of queued jobs: newest 50 expected")
	}
	if !strings.Contains(first, `href="/ui/jobs?page=2&amp;state=queued"`) {
		t.Fatalf("first page lacks a next link")
	}
	second := u.wantPage("/ui/jobs?page=2&state=queued", http.StatusOK)
	if !strings.Contains(second, queued[0]) || strings.Contains(second, queued[1]) || strings.Contains(second, `rel="next"`) {
		t.Fatalf("second page: want only the oldest queued job and no next link")
	}
	byRunner := u.wantPage("/ui/jobs?runner="+rid, http.StatusOK)
	if !strings.Contains(byRunner, done.ID) || strings.Contains(byRunner, queued[0]) {
		t.Fatalf("runner filter")
	}
	u.wantPage("/ui/jobs?state=bogus", http.StatusBadRequest)
	u.wantPage("/ui/jobs?page=0", http.StatusBadRequest)
}

func TestConsoleLogEventsFollowARunningJobUntilItEnds(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	if _, err := r.AppendLog(ctx, j.ID, cl.Lease.Token, 0, []byte("first\n")); err != nil {
		t.Fatal(err)
	}
	u := c.webUser()
	u.signIn(c.Admin)
	page := u.wantPage("/ui/jobs/"+j.ID, http.StatusOK)
	if !strings.Contains(page, `data-follow="/ui/jobs/`+j.ID+`/log/events?offset=6"`) || !strings.Contains(page, `src="/ui/static/follow.js"`) {
		t.Fatalf("a running job's page does not offer live follow from offset 6:\n%s", page)
	}
	js := u.wantPage("/ui/static/follow.js", http.StatusOK)
	if !strings.Contains(js, "createTextNode") || strings.Contains(js, "innerHTML") {
		t.Errorf("follow.js must append text nodes, never HTML")
	}

	req, _ := http.NewRequest(http.MethodGet, c.URL+"/ui/jobs/"+j.ID+"/log/events?offset=6", nil)
	resp, err := u.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("log events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := make(chan [2]string, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var name, data string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				data = strings.TrimPrefix(line, "data: ")
			case line == "" && name != "":
				events <- [2]string{name, data}
				name, data = "", ""
			}
		}
	}()
	next := func() [2]string {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the stream ended early")
			}
			return ev
		case <-time.After(5 * time.Second):
			t.Fatal("no event within 5s")
		}
		return [2]string{}
	}
	if _, err := r.AppendLog(ctx, j.ID, cl.Lease.Token, 6, []byte("<b>second</b> é\n")); err != nil {
		t.Fatal(err)
	}
	ev := next()
	var text string
	if ev[0] != "log" || json.Unmarshal([]byte(ev[1]), &text) != nil || text != "<b>second</b> é\n" {
		t.Fatalf("event %v, want the appended chunk", ev)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateFailed, ExitCode: 2, Reason: "step failed",
		LogSize: int64(6 + len("<b>second</b> é\n"))}); err != nil {
		t.Fatal(err)
	}
	ev = next()
	if ev[0] != "end" || !strings.Contains(ev[1], `"state":"failed"`) {
		t.Fatalf("event %v, want the end with state failed", ev)
	}
	if _, ok := <-events; ok {
		t.Fatal("the stream goes on after the end event")
	}
}

// registerWithKey registers a runner with a key pair the test keeps.
func registerWithKey(t *testing.T, c *coord, name string) (*api.Client, string, ed25519.PrivateKey) {
	t.Helper()
	ctx := context.Background()
	tok, err := c.AdminClient().CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	resp, err := c.client("").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: name, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return c.client(resp.RunnerToken), resp.RunnerID, priv
}

func TestConsoleVerifiesProvenanceWithTheRunnersRegisteredKey(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	r, rid, priv := registerWithKey(t, c, "signer")
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	u := c.webUser()
	u.signIn(c.Admin)

	// run uploads an artifact, an SBOM and a provenance signed with key
	// (builder: this runner, or builder if set) and returns the job page.
	run := func(key ed25519.PrivateKey, builder string) string {
		t.Helper()
		j := c.Submit(nil)
		cl, _ := claimOne(t, r, time.Second)
		app, sbom := []byte("console.log(1)\n"), []byte(`{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"name":"a"},{"name":"b"}]}`)
		subjects := []supplychain.Artifact{supplychain.HashBytes("dist/app.js", app), supplychain.HashBytes(supplychain.SBOMFile, sbom)}
		if builder == "" {
			builder = "https://coordinator.test/runners/" + rid
		}
		stmt, err := supplychain.Provenance(supplychain.ProvenanceInput{Artifacts: subjects,
			Source:  supplychain.Source{GitURL: j.Source.URL, Commit: j.Source.Commit},
			JobSpec: map[string]any{"build": "x"}, NodeImage: "node:22", LockfileSHA256: strings.Repeat("b", 64),
			BuilderID: builder, JobID: j.ID, StartedOn: time.Now(), FinishedOn: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		env, err := supplychain.SignProvenance(stmt, key, supplychain.KeyID(key.Public().(ed25519.PublicKey)))
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range []struct {
			name, kind string
			data       []byte
		}{{"dist/app.js", api.KindFile, app}, {supplychain.SBOMFile, api.KindSBOM, sbom}, {supplychain.ProvenanceFile, api.KindProvenance, env}} {
			if _, err := r.UploadArtifact(ctx, j.ID, cl.Lease.Token, a.name, a.kind, sha(a.data), bytes.NewReader(a.data)); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded}); err != nil {
			t.Fatal(err)
		}
		return u.wantPage("/ui/jobs/"+j.ID, http.StatusOK)
	}
	good := run(priv, "")
	for _, want := range []string{`<p id="provenance" class="good">`, "verifies", "2 components (CycloneDX)", "dist/app.js"} {
		if !strings.Contains(good, want) {
			t.Errorf("verified job page lacks %q", want)
		}
	}
	for name, page := range map[string]string{
		"another key":    run(otherKey, ""),
		"another runner": run(priv, "https://coordinator.test/runners/r-other"),
	} {
		if !strings.Contains(page, `<p id="provenance" class="bad">`) || !strings.Contains(page, "does not verify") {
			t.Errorf("provenance signed with %s is not shown as failing", name)
		}
	}
	// A revoked runner's signatures are no longer trusted.
	if _, err := c.AdminClient().RemoveRunner(ctx, rid); err != nil {
		t.Fatal(err)
	}
	j, _ := c.AdminClient().ListJobs(ctx, api.JobFilter{})
	page := u.wantPage("/ui/jobs/"+j[len(j)-1].ID, http.StatusOK)
	if !strings.Contains(page, "was revoked") {
		t.Errorf("a revoked runner's provenance is not flagged")
	}

	// Artifacts download as opaque attachments, never rendered.
	resp, body := u.get("/ui/jobs/" + j[len(j)-1].ID + "/artifacts/dist/app.js")
	disp, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Disposition"))
	if resp.StatusCode != http.StatusOK || body != "console.log(1)\n" || resp.Header.Get("Content-Type") != "application/octet-stream" ||
		disp != "attachment" || params["filename"] != "app.js" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("artifact download: %d %q %q %q", resp.StatusCode, body, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Disposition"))
	}
}
