package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// Page sizes and what a page shows at most.
const (
	jobsPerPage   = 50
	eventsPerPage = 200
	// jobPageEvents is how many of a job's events its page lists (the
	// explorer has them all).
	jobPageEvents = 1000
	// jobPageLog is how much of the log a job page embeds (log.txt has it all).
	jobPageLog = 2 << 20
)

var states = []string{api.StateQueued, api.StateRunning, api.StateSucceeded, api.StateFailed, api.StateCanceled, api.StateLost}

// pageNumber reads ?page= (1-based).
func pageNumber(q url.Values) (int, error) {
	v := q.Get("page")
	if v == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1_000_000 {
		return 0, api.FieldErrors{{Field: "page", Message: "must be a positive number"}}
	}
	return n, nil
}

// pageLinks are the previous and next links of a paged list ("" none).
type pageLinks struct {
	Page       int
	Prev, Next string
}

func links(path string, q url.Values, page int, more bool) pageLinks {
	l := pageLinks{Page: page}
	at := func(n int) string {
		v := url.Values{}
		for k, vs := range q {
			if k != "page" && len(vs) > 0 && vs[0] != "" {
				v.Set(k, vs[0])
			}
		}
		if n > 1 {
			v.Set("page", strconv.Itoa(n))
		}
		if len(v) == 0 {
			return path
		}
		return path + "?" + v.Encode()
	}
	if page > 1 {
		l.Prev = at(page - 1)
	}
	if more {
		l.Next = at(page + 1)
	}
	return l
}

// jobRow is one line of the jobs list.
type jobRow struct {
	store.Job
	Denied int
}

func (c *Console) handleJobs(w http.ResponseWriter, r *http.Request, p Principal) error {
	q := r.URL.Query()
	f := store.JobFilter{State: q.Get("state"), Runner: strings.TrimSpace(q.Get("runner")), Limit: jobsPerPage + 1}
	if f.State != "" && !slices.Contains(states, f.State) {
		return api.FieldErrors{{Field: "state", Message: "unknown state"}}
	}
	page, err := pageNumber(q)
	if err != nil {
		return err
	}
	f.Offset = (page - 1) * jobsPerPage
	js, err := c.b.Jobs(r.Context(), p, f)
	if err != nil {
		return err
	}
	more := len(js) > jobsPerPage
	js = js[:min(len(js), jobsPerPage)]
	ids := make([]string, len(js))
	for i, j := range js {
		ids[i] = j.ID
	}
	denied, err := c.b.DeniedCounts(r.Context(), p, ids)
	if err != nil {
		return err
	}
	rows := make([]jobRow, len(js))
	for i, j := range js {
		rows[i] = jobRow{Job: j, Denied: denied[j.ID]}
	}
	c.render(w, r, http.StatusOK, "jobs", p, map[string]any{
		"Title": "Jobs", "Jobs": rows, "States": states, "State": f.State, "Runner": f.Runner,
		"Pages": links("/ui/jobs", q, page, more),
	})
	return nil
}

// eventRow is an egress event with the words that explain its rule.
type eventRow struct {
	api.EgressEvent
	Explain string
}

func eventRows(evs []api.EgressEvent) []eventRow {
	out := make([]eventRow, len(evs))
	for i, e := range evs {
		out[i] = eventRow{EgressEvent: e, Explain: explainRule(e)}
	}
	return out
}

func (c *Console) handleJob(w http.ResponseWriter, r *http.Request, p Principal) error {
	ctx := r.Context()
	id := r.PathValue("id")
	j, err := c.b.Job(ctx, p, id)
	if err != nil {
		return err
	}
	var log []byte
	for len(log) < jobPageLog {
		chunk, err := c.b.ReadLog(ctx, p, id, int64(len(log)), min(256<<10, jobPageLog-len(log)))
		if err != nil {
			return err
		}
		if len(chunk) == 0 {
			break
		}
		log = append(log, chunk...)
	}
	var evs []api.EgressEvent
	err = c.b.Egress(ctx, p, store.EgressFilter{EgressFilter: api.EgressFilter{Job: id, Limit: jobPageEvents + 1}}, func(e api.EgressEvent) error {
		evs = append(evs, e)
		return nil
	})
	if err != nil {
		return err
	}
	moreEvents := len(evs) > jobPageEvents
	evs = evs[:min(len(evs), jobPageEvents)]
	denied, err := c.b.DeniedCounts(ctx, p, []string{id})
	if err != nil {
		return err
	}
	arts, err := c.b.Artifacts(ctx, p, id)
	if err != nil {
		return err
	}
	spec, _ := json.MarshalIndent(j.Spec, "", "  ")
	data := map[string]any{
		"Title": "Job " + j.ID, "Job": j, "Spec": string(spec),
		"Log": string(bytes.ToValidUTF8(log, []byte("\uFFFD"))), "LogShort": int64(len(log)) < j.LogSize && len(log) >= jobPageLog,
		"Events": eventRows(evs), "MoreEvents": moreEvents, "Denied": denied[id],
		"ExplorerURL": "/ui/egress?job=" + url.QueryEscape(j.ID),
		"DeniedURL":   "/ui/egress?verdict=deny&job=" + url.QueryEscape(j.ID),
		"Artifacts":   arts,
		"Supply":      c.supplyChain(ctx, p, j, arts),
	}
	if !api.Terminal(j.State) {
		data["FollowURL"] = fmt.Sprintf("/ui/jobs/%s/log/events?offset=%d", url.PathEscape(j.ID), len(log))
	}
	c.render(w, r, http.StatusOK, "job", p, data)
	return nil
}

// egressQuery reads the explorer's filters from q.
func egressQuery(q url.Values) (store.EgressFilter, error) {
	f := store.EgressFilter{
		EgressFilter: api.EgressFilter{Job: strings.TrimSpace(q.Get("job")), Runner: strings.TrimSpace(q.Get("runner")), Verdict: q.Get("verdict")},
		Match:        store.EgressMatch{Rule: strings.TrimSpace(q.Get("rule")), Dst: strings.TrimSpace(q.Get("dst")), Domain: strings.TrimSpace(q.Get("domain"))},
	}
	var fe api.FieldErrors
	for _, tf := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := strings.TrimSpace(q.Get(tf.name)); v != "" {
			t, err := parseTime(v)
			if err != nil {
				fe = append(fe, api.FieldError{Field: tf.name, Message: "must be a time like 2006-01-02T15:04 (UTC) or RFC 3339"})
			}
			*tf.dst = t
		}
	}
	if err := f.Validate(); err != nil {
		fe = append(fe, api.PrefixFields("", err)...)
	}
	if len(fe) > 0 {
		return f, fe
	}
	return f, nil
}

// parseTime accepts RFC 3339 and what an <input type="datetime-local">
// sends (read as UTC).
func parseTime(v string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, v, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("parsing time %q", v)
}

func (c *Console) handleEgress(w http.ResponseWriter, r *http.Request, p Principal) error {
	q := r.URL.Query()
	f, err := egressQuery(q)
	if err != nil {
		return err
	}
	page, err := pageNumber(q)
	if err != nil {
		return err
	}
	f.Limit, f.Offset = eventsPerPage+1, (page-1)*eventsPerPage
	var evs []api.EgressEvent
	if err := c.b.Egress(r.Context(), p, f, func(e api.EgressEvent) error {
		evs = append(evs, e)
		return nil
	}); err != nil {
		return err
	}
	more := len(evs) > eventsPerPage
	evs = evs[:min(len(evs), eventsPerPage)]
	export := url.Values{}
	for _, k := range []string{"verdict", "rule", "job", "runner", "dst", "domain", "since", "until"} {
		if v := strings.TrimSpace(q.Get(k)); v != "" {
			export.Set(k, v)
		}
	}
	suffix := ""
	if len(export) > 0 {
		suffix = "?" + export.Encode()
	}
	c.render(w, r, http.StatusOK, "egress", p, map[string]any{
		"Title": "Egress explorer", "Events": eventRows(evs), "Q": filterValues(q), "Rules": ruleNames,
		"Pages": links("/ui/egress", q, page, more), "First": f.Offset + 1,
		"JSONL": "/ui/egress/export.jsonl" + suffix, "CSV": "/ui/egress/export.csv" + suffix,
	})
	return nil
}

// filterValues are the explorer's form values, trimmed, by name.
func filterValues(q url.Values) map[string]string {
	m := map[string]string{}
	for _, k := range []string{"verdict", "rule", "job", "runner", "dst", "domain", "since", "until"} {
		m[k] = strings.TrimSpace(q.Get(k))
	}
	return m
}

// runnerRow is a runner with the jobs it is running now.
type runnerRow struct {
	store.Runner
	Current []string
}

func (c *Console) handleRunners(w http.ResponseWriter, r *http.Request, p Principal) error {
	rs, err := c.b.Runners(r.Context(), p)
	if err != nil {
		return err
	}
	running, err := c.b.Jobs(r.Context(), p, store.JobFilter{State: api.StateRunning})
	if err != nil {
		return err
	}
	byRunner := map[string][]string{}
	for _, j := range running {
		byRunner[j.RunnerID] = append(byRunner[j.RunnerID], j.ID)
	}
	rows := make([]runnerRow, len(rs))
	for i, rn := range rs {
		rows[i] = runnerRow{Runner: rn, Current: byRunner[rn.ID]}
	}
	c.render(w, r, http.StatusOK, "runners", p, map[string]any{"Title": "Runners", "Runners": rows})
	return nil
}

// render executes the page template name in the layout. A failure to
// render is logged; the status is already out.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p Principal, data map[string]any) {
	t, ok := c.pages[name]
	if !ok {
		panic("console: no page template " + name)
	}
	data["Principal"] = p
	data["SignedIn"] = p.Kind != ""
	data["Admin"] = p.Kind == KindAdmin
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		c.log.Error("console: rendering page", "page", name, "path", r.URL.Path, "error", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

var pageNames = []string{"signin", "error", "jobs", "job", "egress", "runners"}

func parsePages() map[string]*template.Template {
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return pages
}

var funcs = template.FuncMap{
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *time.Time:
			if v == nil {
				return ""
			}
			return v.UTC().Format("2006-01-02 15:04:05Z")
		}
		return ""
	},
	"duration": jobDuration,
	"size":     humanSize,
	"terminal": api.Terminal,
	"deref": func(n *int) string {
		if n == nil {
			return ""
		}
		return strconv.Itoa(*n)
	},
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12] + "…"
		}
		return s
	},
	"process": func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	},
	"jobURL": func(id string) string { return "/ui/jobs/" + url.PathEscape(id) },
	"artifactURL": func(job, name string) string {
		return "/ui/jobs/" + url.PathEscape(job) + "/artifacts/" + escapePath(name)
	},
	"labels": func(m map[string]string) string {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(m)) {
			parts = append(parts, k+"="+m[k])
		}
		return strings.Join(parts, ", ")
	},
}

// escapePath escapes each segment of a slash-separated artifact name.
func escapePath(name string) string {
	segs := strings.Split(name, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

// jobDuration is how long a job ran (so far, if it is running).
func jobDuration(j store.Job) string {
	if j.StartedAt == nil {
		return ""
	}
	end := time.Now()
	if j.FinishedAt != nil {
		end = *j.FinishedAt
	}
	d := end.Sub(*j.StartedAt)
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func humanSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}
