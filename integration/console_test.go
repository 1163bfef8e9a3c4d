package integration

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/browsertest"
)

// The web console in a real headless Chromium, with a real job from the
// lab: the evil-postinstall example (whose build also prints a script tag)
// followed live from the moment it is submitted, then its page — denied
// egress highlighted and explained, the log as text with the granted
// secret redacted, the provenance verified with the runner's registered
// key —, the egress explorer filtered and exported as JSON lines and CSV
// (checked against `cleanroom egress`), the runners page, and a submit
// token of another team that gets 404 for the job. The screenshots it
// saves are the ones in docs/console.md.
func TestConsoleShowsAContainedJobInChromium(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	// The relay first: its cleanup then runs after the browser's.
	base := forward(t, e)
	b := browsertest.New(t)
	ctx := timeout(t, 5*time.Minute)

	dir := copyExample(t, "evil-postinstall")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	appendFile(t, filepath.Join(dir, "build.js"), "console.log(\"<script>window.__cleanroomXSS = 'log'</script>\");\n")

	b.SignIn(base, e.Admin)
	id := submit(ctx, t, e, dir)

	// Follow the job live from the start: the malware's output arrives on
	// the open page, and the page shows the end, without a reload.
	if status := b.Open(base + "/ui/jobs/" + id); status != http.StatusOK {
		t.Fatalf("job page: %d", status)
	}
	b.WaitFor("live follow to start", `document.getElementById('log').dataset.following === 'yes'`, 10*time.Second)
	b.WaitFor("the malware's output, live", `document.getElementById('log').textContent.includes('[telemetry-helper] postinstall done')`, 3*time.Minute)
	b.WaitFor("the end of the job, live", `document.getElementById('log').dataset.following === 'ended'`, 3*time.Minute)
	if state := browsertest.Eval[string](b, `document.getElementById('job-state').textContent`); state != api.StateSucceeded {
		t.Fatalf("the page says the job ended %s, want succeeded; log:\n%s", state, jobLog(ctx, t, e, id))
	}
	if got := browsertest.Eval[string](b, `typeof window.__cleanroomXSS`); got != "undefined" {
		t.Errorf("the build's script tag ran while the log was followed")
	}

	// The finished job's page.
	b.Open(base + "/ui/jobs/" + id)
	logText := browsertest.Run(b, "reading the log", chromedp.TextContent(chromedp.ID("log")))
	for _, want := range []string{"<script>window.__cleanroomXSS = 'log'</script>", "env: NPM_READ_TOKEN=[REDACTED]", "[telemetry-helper] postinstall done"} {
		if !strings.Contains(logText, want) {
			t.Errorf("the job page's log lacks %q", want)
		}
	}
	if _, ok := leaks(logText, buildSecret); ok {
		t.Errorf("the job page shows the granted build secret")
	}
	if got := browsertest.Eval[string](b, `typeof window.__cleanroomXSS`); got != "undefined" {
		t.Errorf("the build's script tag ran on the job page")
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll('main script').length`); n != 0 {
		t.Errorf("the job page has %d script elements from the build", n)
	}
	_, events := egress(ctx, t, e, "--job", id)
	var denied []api.EgressEvent
	for _, ev := range events {
		if ev.Verdict == api.VerdictDeny {
			denied = append(denied, ev)
		}
	}
	if len(denied) == 0 {
		t.Fatal("the job has no denied egress events")
	}
	if n := browsertest.Eval[int](b, `document.querySelectorAll('.job-events tr.deny').length`); n != min(len(denied), 1000) {
		t.Errorf("the job page highlights %d denied events, the CLI lists %d", n, len(denied))
	}
	rules := browsertest.Eval[[]string](b, `[...new Set([...document.querySelectorAll('.job-events tr.deny')].map(tr => tr.children[7].textContent))].sort()`)
	for _, want := range []string{"default-deny", "dns-refused", "metadata-deny"} {
		if !slices.Contains(rules, want) {
			t.Errorf("denied rules on the page %v lack %s", rules, want)
		}
	}
	why := browsertest.Eval[string](b, `[...document.querySelectorAll('.job-events tr.deny')].find(tr => tr.children[7].textContent === 'metadata-deny').children[8].textContent`)
	if !strings.Contains(why, "metadata") {
		t.Errorf("metadata-deny is explained as %q", why)
	}
	prov := browsertest.Run(b, "reading the provenance line", chromedp.Text(chromedp.ID("provenance")))
	if cls := browsertest.Eval[string](b, `document.getElementById('provenance').className`); cls != "good" || !strings.Contains(prov, a.RunnerID()) {
		t.Errorf("provenance: %q (class %s), want it verified with runner %s's key", prov, cls, a.RunnerID())
	}
	b.Screenshot("console-job")

	// The explorer, filtered with its form, and both exports of the
	// filtered set compared with the CLI.
	b.Open(base + "/ui/egress")
	b.Do("filtering", chromedp.SetValue(chromedp.CSS(`select[name=verdict]`), "deny"), chromedp.SetValue(chromedp.CSS(`input[name=job]`), id))
	b.Submit("filtering", chromedp.CSS(`form.explorer button[type=submit]`))
	if n := browsertest.Eval[int](b, `document.querySelectorAll('table.events tbody tr.deny').length`); n != min(len(denied), 200) {
		t.Errorf("the explorer shows %d denied events of the job, want %d", n, len(denied))
	}
	b.Screenshot("console-egress")
	jsonl := b.Download("exporting JSON lines", chromedp.Click(chromedp.ID("export-jsonl")))
	var exported []api.EgressEvent
	sc := bufio.NewScanner(strings.NewReader(string(jsonl)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var ev api.EgressEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("JSON lines export: %v: %q", err, sc.Text())
		}
		exported = append(exported, ev)
	}
	if !sameEvents(exported, denied) {
		t.Errorf("the JSON lines export (%d events) differs from `cleanroom egress --job %s` denied (%d)", len(exported), id, len(denied))
	}
	rows, err := csv.NewReader(strings.NewReader(string(b.Download("exporting CSV", chromedp.Click(chromedp.ID("export-csv")))))).ReadAll()
	if err != nil || len(rows) != len(denied)+1 {
		t.Fatalf("CSV export: %d rows (%v), want a header and %d events", len(rows), err, len(denied))
	}
	for i, row := range rows[1:] {
		if row[2] != id || row[6] != denied[i].Dst || row[9] != "deny" || row[10] != denied[i].Rule {
			t.Errorf("CSV row %d %v, want %+v", i+1, row, denied[i])
		}
	}

	b.Open(base + "/ui/jobs")
	if n := browsertest.Eval[int](b, `[...document.querySelectorAll('#jobs tbody tr')].filter(tr => tr.textContent.includes('`+id+`')).length`); n != 1 {
		t.Errorf("the jobs list does not show %s", id)
	}
	b.Screenshot("console-jobs")
	b.Open(base + "/ui/runners")
	if body := browsertest.Run(b, "reading the runners", chromedp.Text(chromedp.ID("runners"))); !strings.Contains(body, a.RunnerID()) || !strings.Contains(body, "lane=main") {
		t.Errorf("runners page lacks %s with its labels:\n%s", a.RunnerID(), body)
	}
	b.Screenshot("console-runners")

	// Another team's submit token: the job does not exist for it.
	out := cli(ctx, t, e, "token", "create", "--kind", "submit", "--uses", "0", "--json")
	var tok api.TokenResponse
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Token == "" {
		t.Fatalf("creating a submit token: %v: %s", err, out)
	}
	b.SignOut()
	b.SignIn(base, tok.Token)
	if status := b.Open(base + "/ui/jobs/" + id); status != http.StatusNotFound {
		t.Errorf("another team's submit token opens the job: %d, want 404", status)
	}
	if ex := browsertest.Exceptions(b.Console()); len(ex) > 0 {
		t.Errorf("uncaught exceptions in the console's pages: %v", ex)
	}
}

// sameEvents reports whether a and b hold the same events in the same order.
func sameEvents(a, b []api.EgressEvent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, _ := json.Marshal(a[i])
		y, _ := json.Marshal(b[i])
		if string(x) != string(y) {
			return false
		}
	}
	return true
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
}
