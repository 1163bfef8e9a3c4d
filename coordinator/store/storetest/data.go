package storetest

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

func appendLog(t *testing.T, s store.Store, f store.Fence, off int64, data string) int64 {
	t.Helper()
	next, err := s.AppendLog(ctx, f, off, []byte(data))
	must(t, err)
	return next
}

func testLogAppend(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	if n := appendLog(t, s, f, 0, "hello "); n != 6 {
		t.Fatalf("next offset %d, want 6", n)
	}
	if n := appendLog(t, s, f, 0, "hello "); n != 6 { // a retry
		t.Fatalf("next offset after a retry %d, want 6", n)
	}
	if n := appendLog(t, s, f, 3, "lo world"); n != 11 { // overlapping the end
		t.Fatalf("next offset after an overlap %d, want 11", n)
	}
	_, err := s.AppendLog(ctx, f, 12, []byte("gap"))
	var oe *store.OffsetError
	if !errors.As(err, &oe) || oe.Expected != 11 || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a gap: %v, want an OffsetError expecting 11", err)
	}
	if l := readLog(t, s, "j"); l != "hello world" {
		t.Fatalf("log %q, want %q (retries not duplicated)", l, "hello world")
	}
	b, err := s.ReadLog(ctx, "j", 4, 3)
	if err != nil || string(b) != "o w" {
		t.Errorf("reading 3 bytes from 4: %q %v", b, err)
	}
	if b, err = s.ReadLog(ctx, "j", 11, 10); err != nil || len(b) != 0 {
		t.Errorf("reading at the end: %q %v", b, err)
	}
	if j := job(t, s, "j"); j.LogOffset != 11 || j.LogSize != 11 || j.LogTruncated {
		t.Errorf("log state: offset %d, size %d, truncated %v", j.LogOffset, j.LogSize, j.LogTruncated)
	}
}

func testLogTruncation(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	max := LogLimits.MaxBytes
	first := strings.Repeat("a", int(max)-4)
	appendLog(t, s, f, 0, first)
	next := appendLog(t, s, f, int64(len(first)), "bbbbbbbb") // crosses the cap
	next = appendLog(t, s, f, next, "cccc")                   // past it: acknowledged, dropped
	if want := max + 8; next != want {
		t.Fatalf("next offset %d, want %d (every byte acknowledged)", next, want)
	}
	want := first + "bbbb" + LogLimits.Marker
	if l := readLog(t, s, "j"); l != want {
		t.Fatalf("log %q, want %q (cut at the cap, one marker)", l, want)
	}
	j := job(t, s, "j")
	if !j.LogTruncated || j.LogOffset != next || j.LogSize != int64(len(want)) {
		t.Errorf("log state: offset %d, size %d, truncated %v", j.LogOffset, j.LogSize, j.LogTruncated)
	}
	if _, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", next, T0); err != nil {
		t.Errorf("finishing with the whole log sent: %v", err)
	}
}

func testEgressRetries(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	must(t, s.AddEgress(ctx, f, 0, events(2, "a")))
	first := records(t, s, after(0))
	must(t, s.AddEgress(ctx, f, 0, events(2, "a")))
	again := records(t, s, after(0))
	if !slices.Equal(cursors(first), cursors(again)) || len(again) != 2 {
		t.Fatalf("a retried batch renumbered or duplicated: %v then %v", cursors(first), cursors(again))
	}
	if again[0].Job != "" && again[0].Job != "j" {
		t.Errorf("event job %q", again[0].Job)
	}
}

func cursors(rs []api.EgressRecord) []int64 {
	var out []int64
	for _, r := range rs {
		out = append(out, r.Cursor)
	}
	return out
}

// Cursors increase with every stored event, a retried batch gets none, and
// the cursors of purged events are never handed out again.
func testEgressCursors(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j-a")
	must(t, s.AddEgress(ctx, f, 0, events(3, "a")))
	for i := 0; i < 2; i++ { // a retried batch, and one overlapping the first
		must(t, s.AddEgress(ctx, f, 2, events(3, "b")))
	}
	recs := records(t, s, after(0))
	if len(recs) != 5 {
		t.Fatalf("%d events stored, want 5 (3 + 2 new of the retried batch)", len(recs))
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Cursor <= recs[i-1].Cursor {
			t.Fatalf("cursor %d after %d", recs[i].Cursor, recs[i-1].Cursor)
		}
	}
	if recs[2].Dst != "a:2" || recs[3].Dst != "b:1" {
		t.Fatalf("events 3 and 4 are %s, %s; want a:2 (stored first) and b:1", recs[2].Dst, recs[3].Dst)
	}
	if got := records(t, s, after(recs[2].Cursor)); len(got) != 2 || got[0].Cursor != recs[3].Cursor {
		t.Fatalf("after %d: %+v", recs[2].Cursor, got)
	}
	last := recs[len(recs)-1].Cursor

	// Purge the job that holds the highest cursors, then store more.
	if _, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", 0, T0); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.PurgeFinished(ctx, at(time.Hour), 10); err != nil || len(ids) != 1 {
		t.Fatalf("purging: %v %v", ids, err)
	}
	g := runningJob(t, s, "j-b")
	must(t, s.AddEgress(ctx, g, 0, events(1, "c")))
	got := records(t, s, after(0))
	if len(got) != 1 || got[0].Cursor <= last {
		t.Fatalf("after a purge the next event got cursor %v, want more than %d", cursors(got), last)
	}
}

// A reader polling "after the last cursor I saw" while several writers add
// batches concurrently ends with exactly the stored events, in order: a
// cursor never becomes visible before a smaller one.
func testEgressConcurrentReader(t *testing.T, s store.Store) {
	const writers, batches, size = 4, 30, 10
	var fences []store.Fence
	for w := 0; w < writers; w++ {
		fences = append(fences, runningJob(t, s, fmt.Sprintf("j-%d", w)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for _, f := range fences {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				if err := s.AddEgress(ctx, f, int64(b*size), events(size, f.JobID)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var seen []int64
	var cur int64
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true // one more read after the last write
		default:
		}
		for _, r := range records(t, s, after(cur)) {
			seen = append(seen, r.Cursor)
			cur = r.Cursor
		}
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all := records(t, s, after(0))
	if len(all) != writers*batches*size || len(seen) != len(all) {
		t.Fatalf("reader saw %d events, store has %d, want %d", len(seen), len(all), writers*batches*size)
	}
	for i, r := range all {
		if seen[i] != r.Cursor {
			t.Fatalf("event %d: reader saw cursor %d, store has %d", i, seen[i], r.Cursor)
		}
	}
}

// Filters apply to a cursor query, and the submitter filter keeps another
// token's jobs out.
func testEgressCursorFilters(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j-a")
	evs := events(4, "a")
	evs[1].Verdict, evs[3].Verdict = api.VerdictAllow, api.VerdictAllow
	must(t, s.AddEgress(ctx, f, 0, evs))
	q := after(0)
	q.Verdict, q.Limit = api.VerdictAllow, 1
	if got := records(t, s, q); len(got) != 1 || got[0].Dst != "a:1" {
		t.Fatalf("first allowed event: %+v", got)
	}
	q.Limit, q.Submitter = 0, "crs-other"
	if got := records(t, s, q); len(got) != 0 {
		t.Fatalf("another submitter's query got %d events", len(got))
	}
}

func testQueryEgress(t *testing.T, s store.Store) {
	claims := queryFixture(t, s)
	ev := func(i int, proto, dst, domain, verdict, rule string) api.EgressEvent {
		return api.EgressEvent{Time: T0.Add(time.Duration(i) * time.Millisecond), Proto: proto, Dst: dst, Domain: domain, Verdict: verdict, Rule: rule}
	}
	evs := []api.EgressEvent{
		ev(0, "tcp", "10.0.0.5:443", "", "deny", "default-deny"),
		ev(1, "tcp", "10.0.0.50:443", "", "deny", "default-deny"),
		ev(2, "tcp", "[fd00::5]:443", "", "deny", "default-deny"),
		ev(3, "dns", "10.231.0.1:53", "x.exfil.example.", "deny", "dns-refused"),
		ev(4, "dns", "10.231.0.1:53", "exfil.example", "deny", "dns-refused"),
		ev(5, "dns", "10.231.0.1:53", "notexfil.example.", "deny", "dns-refused"),
		ev(6, "tcp", "169.254.169.254:80", "", "deny", "metadata-deny"),
		ev(7, "dns", "10.231.0.1:53", "a_b%.test", "allow", "dns-allow"),
		ev(8, "dns", "10.231.0.1:53", "axb.test", "allow", "dns-allow"),
	}
	j0 := claims["j-0"]
	for i, e := range evs {
		e.Job, e.Runner = j0.Job.ID, j0.Job.RunnerID
		evs[i] = e
	}
	must(t, s.AddEgress(ctx, fence(j0), 0, evs))
	other := ev(9, "tcp", "10.0.0.5:443", "", "deny", "default-deny")
	other.Job, other.Runner = "j-3", claims["j-3"].Job.RunnerID
	must(t, s.AddEgress(ctx, fence(claims["j-3"]), 0, []api.EgressEvent{other}))
	query := func(f store.EgressFilter) []int {
		t.Helper()
		var out []int
		must(t, s.QueryEgress(ctx, f, func(e api.EgressEvent) error {
			out = append(out, int(e.Time.Sub(T0)/time.Millisecond))
			return nil
		}))
		return out
	}
	for _, tc := range []struct {
		name string
		f    store.EgressFilter
		want []int
	}{
		{"rule", store.EgressFilter{Match: store.EgressMatch{Rule: "dns-refused"}}, []int{3, 4, 5}},
		{"dst host:port", store.EgressFilter{Match: store.EgressMatch{Dst: "10.0.0.5:443"}}, []int{0, 9}},
		{"dst host on any port", store.EgressFilter{Match: store.EgressMatch{Dst: "10.0.0.5"}}, []int{0, 9}},
		{"dst ipv6 host", store.EgressFilter{Match: store.EgressMatch{Dst: "fd00::5"}}, []int{2}},
		{"dst ipv6 bracketed", store.EgressFilter{Match: store.EgressMatch{Dst: "[fd00::5]"}}, []int{2}},
		{"domain and subdomains", store.EgressFilter{Match: store.EgressMatch{Domain: "exfil.example."}}, []int{3, 4}},
		{"domain wildcards are literal", store.EgressFilter{Match: store.EgressMatch{Domain: "a_b%.test"}}, []int{7}},
		{"job and rule", store.EgressFilter{EgressFilter: api.EgressFilter{Job: "j-3"}, Match: store.EgressMatch{Rule: "default-deny"}}, []int{9}},
		{"submitter", store.EgressFilter{Submitter: "s-1", Match: store.EgressMatch{Dst: "10.0.0.5"}}, []int{0}},
		{"page", store.EgressFilter{EgressFilter: api.EgressFilter{Limit: 3}, Offset: 3}, []int{3, 4, 5}},
		{"offset only", store.EgressFilter{Offset: 8}, []int{8, 9}},
	} {
		if got := query(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}

	counts, err := s.CountEgress(ctx, []string{"j-0", "j-3", "j-4"}, api.VerdictDeny)
	must(t, err)
	if want := map[string]int{"j-0": 7, "j-3": 1}; !maps.Equal(counts, want) {
		t.Errorf("denied counts %v, want %v", counts, want)
	}
	all, err := s.CountEgress(ctx, []string{"j-0"}, "")
	if err != nil || all["j-0"] != len(evs) {
		t.Errorf("all counts %v (%v), want j-0: %d", all, err, len(evs))
	}
	none, err := s.CountEgress(ctx, nil, "")
	if err != nil || len(none) != 0 {
		t.Errorf("counts of no jobs: %v (%v)", none, err)
	}
}

func testArtifacts(t *testing.T, s store.Store) {
	src := newJob("j")
	src.Source = api.Source{Kind: "tarball", SHA256: "src-digest", Size: 3}
	createJobs(t, s, src)
	cs := claim(t, s, "r", 1, T0)
	f := fence(cs[0])
	for _, a := range []store.Artifact{
		{Name: "dist.tgz", Kind: "file", SHA256: "old", Size: 1, CreatedAt: T0},
		{Name: "dist.tgz", Kind: "file", SHA256: "new", Size: 2, CreatedAt: at(time.Second)},
		{Name: "coverage", Kind: "dir", SHA256: "cov", Size: 5, CreatedAt: T0},
	} {
		must(t, s.AddArtifact(ctx, f, a))
	}
	list, err := s.ListArtifacts(ctx, "j")
	must(t, err)
	if len(list) != 2 || list[0].Name != "coverage" || list[1].SHA256 != "new" {
		t.Fatalf("artifacts %+v, want coverage and the replaced dist.tgz, by name", list)
	}
	a, err := s.Artifact(ctx, "j", "dist.tgz")
	if err != nil || a.Size != 2 || !a.CreatedAt.Equal(at(time.Second)) || a.Kind != "file" {
		t.Errorf("artifact: %+v %v", a, err)
	}
	if _, err := s.Artifact(ctx, "j", "none"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown artifact: %v", err)
	}
	refs, err := s.BlobRefs(ctx)
	must(t, err)
	if want := map[string]bool{"src-digest": true, "new": true, "cov": true}; !maps.Equal(refs, want) {
		t.Errorf("blob refs %v, want %v", refs, want)
	}
}

func testPurge(t *testing.T, s store.Store) {
	finished := func(id string, end time.Time) {
		t.Helper()
		j := newJob(id)
		j.Source = api.Source{Kind: "tarball", SHA256: "src-" + id}
		createJobs(t, s, j)
		cs := claim(t, s, "r", 1, T0)
		f := fence(cs[0])
		appendLog(t, s, f, 0, "log")
		must(t, s.AddEgress(ctx, f, 0, events(1, id)))
		must(t, s.AddArtifact(ctx, f, store.Artifact{Name: "a", SHA256: "art-" + id}))
		if _, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", 3, end); err != nil {
			t.Fatal(err)
		}
	}
	finished("old-1", at(time.Minute))
	finished("old-2", at(2*time.Minute))
	finished("new", at(time.Hour))
	runningJob(t, s, "running")
	createJobs(t, s, newJob("queued"))

	ids, err := s.PurgeFinished(ctx, at(30*time.Minute), 1)
	must(t, err)
	if !slices.Equal(ids, []string{"old-1"}) {
		t.Fatalf("purged %v, want old-1 (oldest first, limit 1)", ids)
	}
	ids, err = s.PurgeFinished(ctx, at(30*time.Minute), 10)
	must(t, err)
	if !slices.Equal(ids, []string{"old-2"}) {
		t.Fatalf("purged %v, want old-2", ids)
	}
	for _, id := range []string{"old-1", "old-2"} {
		if _, err := s.Job(ctx, id); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("purged job %s: %v", id, err)
		}
		if l := readLog(t, s, id); l != "" {
			t.Errorf("purged job %s kept its log %q", id, l)
		}
		if as, err := s.ListArtifacts(ctx, id); err != nil || len(as) != 0 {
			t.Errorf("purged job %s kept artifacts %+v (%v)", id, as, err)
		}
		if n, err := s.CountEgress(ctx, []string{id}, ""); err != nil || n[id] != 0 {
			t.Errorf("purged job %s kept egress %v (%v)", id, n, err)
		}
	}
	refs, err := s.BlobRefs(ctx)
	must(t, err)
	if refs["src-old-1"] || refs["art-old-2"] || !refs["src-new"] || !refs["art-new"] {
		t.Errorf("blob refs after purge %v", refs)
	}
	if ids, err = s.PurgeFinished(ctx, at(24*time.Hour), 10); err != nil || !slices.Equal(ids, []string{"new"}) {
		t.Errorf("purging everything finished: %v %v, want only new (queued and running stay)", ids, err)
	}
}
