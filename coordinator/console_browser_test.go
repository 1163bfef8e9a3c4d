package coordinator_test

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/browsertest"
)

// The console in a real headless Chromium against a real coordinator:
// sign in through the form, the jobs list, a job whose log and egress
// domain carry a script tag (shown as text; the CSP refuses an injected
// inline script), live follow of a running job, the explorer's filter and
// both exports as downloads, and a submit token that cannot open another
// team's job. (integration/console_test.go does the same with a real job
// from the lab.)
func TestConsoleInChromium(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	teamA, teamB := c.token(api.TokenSubmit), c.token(api.TokenSubmit)
	r, _ := c.Register("runner-1", map[string]string{"pool": "linux"})
	done := consoleJob(t, c, c.client(teamA), r, "10.9.9.1:443", "203.0.113.7:4444")

	b := browsertest.New(t)
	b.SignIn(c.URL, c.Admin)
	if n := browsertest.Eval[int](b, `document.querySelectorAll('#jobs tbody tr').length`); n != 1 {
		t.Fatalf("jobs list has %d rows, want 1", n)
	}

	// A job page: the script tags of the log and of a queried domain are
	// text, nothing ran, denied events are highlighted and explained.
	if status := b.Open(c.URL + "/ui/jobs/" + done.ID); status != http.StatusOK {
		t.Fatalf("job page: %d", status)
	}
	logText := browsertest.Run(b, "reading the log", chromedp.TextContent(chromedp.ID("log")))
	if !strings.Contains(logText, XSSLog) {
		t.Errorf("the log does not show the script line as text: %q", logText)
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll('main script').length`); n != 0 {
		t.Errorf("the page has %d script elements from the build", n)
	}
	if got := browsertest.Eval[string](b, `typeof window.__cleanroomXSS`); got != "undefined" {
		t.Errorf("the build's script ran: window.__cleanroomXSS is %s", got)
	}
	if got := browsertest.Eval[string](b, `[...document.querySelectorAll('td.domain')].map(td => td.textContent).join(' ')`); !strings.Contains(got, XSSDomain) {
		t.Errorf("domains shown: %q, want the script domain as text", got)
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll('tr.deny').length`); n != 4 {
		t.Errorf("%d denied rows, want 4", n)
	}
	if bg := browsertest.Eval[string](b, `getComputedStyle(document.querySelector('tr.deny td')).backgroundColor`); bg != "rgb(253, 236, 234)" {
		t.Errorf("denied rows are not highlighted (stylesheet not applied?): background %s", bg)
	}
	why := browsertest.Eval[string](b, `document.querySelector('tr.deny td.why').textContent`)
	if !strings.Contains(why, "NXDOMAIN") {
		t.Errorf("the first denied event's rule is explained as %q", why)
	}
	b.Screenshot("console-job-unit")

	// The CSP: an inline script and an inline event handler injected into
	// the page do not run, and Chromium says the policy refused them.
	b.Do("injecting inline script", chromedp.Evaluate[chromedp.Void](`(() => {
		const s = document.createElement('script');
		s.textContent = "window.__cleanroomCSP = 'inline script ran'";
		document.body.appendChild(s);
		document.body.insertAdjacentHTML('beforeend', '<img src="/ui/none.png" onerror="window.__cleanroomCSP = \'handler ran\'">');
	})()`), chromedp.Sleep(500*time.Millisecond))
	if got := browsertest.Eval[string](b, `String(window.__cleanroomCSP)`); got != "undefined" {
		t.Errorf("the CSP did not block the injected script: %s", got)
	}
	if v := browsertest.CSPViolations(b.Console()); len(v) < 2 {
		t.Errorf("Chromium reported %d CSP violations, want the script and the handler: %v", len(v), b.Console())
	}

	// Live follow: a running job's log grows on the open page, and the
	// page shows the end without a reload.
	running := c.Submit(map[string]string{"pool": "linux"})
	cl, _ := claimOne(t, r, time.Second)
	if _, err := r.AppendLog(ctx, running.ID, cl.Lease.Token, 0, []byte("step 1\n")); err != nil {
		t.Fatal(err)
	}
	b.Open(c.URL + "/ui/jobs/" + running.ID)
	b.WaitFor("live follow to start", `document.getElementById('log').dataset.following === 'yes'`, 10*time.Second)
	more := "step 2 <i>not html</i>\n"
	if _, err := r.AppendLog(ctx, running.ID, cl.Lease.Token, 7, []byte(more)); err != nil {
		t.Fatal(err)
	}
	b.WaitFor("the new log line", `document.getElementById('log').textContent.includes('step 2 <i>not html</i>')`, 10*time.Second)
	if n := browsertest.Eval[int](b, `document.querySelectorAll('#log i').length`); n != 0 {
		t.Errorf("followed log text became HTML")
	}
	if err := r.Result(ctx, running.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded, LogSize: int64(7 + len(more))}); err != nil {
		t.Fatal(err)
	}
	b.WaitFor("the end of the job", `document.getElementById('job-state').textContent === 'succeeded'`, 10*time.Second)

	// The explorer: filter by verdict and domain with the form, then
	// download both exports of the filtered set.
	b.Open(c.URL + "/ui/egress")
	b.Do("filtering", chromedp.SetValue(chromedp.CSS(`select[name=verdict]`), "deny"), chromedp.SetValue(chromedp.CSS(`input[name=domain]`), "exfil.example"))
	if status := b.Submit("filtering", chromedp.CSS(`form.explorer button[type=submit]`)); status != http.StatusOK {
		t.Fatalf("filtering: %d", status)
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll('table.events tbody tr.deny').length`); n != 1 {
		t.Fatalf("the explorer shows %d events for deny + exfil.example, want 1", n)
	}
	jsonl := b.Download("exporting JSON lines", chromedp.Click(chromedp.ID("export-jsonl")))
	var evs []api.EgressEvent
	sc := bufio.NewScanner(strings.NewReader(string(jsonl)))
	for sc.Scan() {
		var e api.EgressEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("JSON lines export: %v: %q", err, sc.Text())
		}
		evs = append(evs, e)
	}
	if len(evs) != 1 || evs[0].Domain != XSSDomain || evs[0].Job != done.ID {
		t.Errorf("JSON lines export: %+v", evs)
	}
	rows, err := csv.NewReader(strings.NewReader(string(b.Download("exporting CSV", chromedp.Click(chromedp.ID("export-csv")))))).ReadAll()
	if err != nil || len(rows) != 2 || rows[1][7] != XSSDomain || rows[1][10] != "dns-refused" {
		t.Errorf("CSV export: %v %v", rows, err)
	}
	b.Screenshot("console-egress-unit")

	// A submit token of another team: the job is 404, the list is empty.
	b.SignOut()
	b.SignIn(c.URL, teamB)
	if n := browsertest.Eval[int](b, `document.querySelectorAll('#jobs tbody tr a').length`); n != 0 {
		t.Errorf("team B sees %d jobs", n)
	}
	if status := b.Open(c.URL + "/ui/jobs/" + done.ID); status != http.StatusNotFound {
		t.Errorf("team B opens team A's job: status %d, want 404", status)
	}
	if msgs := b.Console(); len(browsertest.Exceptions(msgs)) > 0 {
		t.Errorf("uncaught exceptions in the console's pages: %v", browsertest.Exceptions(msgs))
	}
}
