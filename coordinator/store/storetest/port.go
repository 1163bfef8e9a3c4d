package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// PortLogLimits are the log limits RunPort's stores must be opened with:
// room for a log longer than a record chunk, and a cap to truncate at.
var PortLogLimits = store.LogLimits{MaxBytes: 2 << 20, Marker: "\n[log truncated]\n"}

// PortStore is a store that exports and imports.
type PortStore interface {
	store.Store
	store.Porter
}

// RunPort tests moving a store's whole state: openSource and openTarget
// return new, empty stores (opened with PortLogLimits, closed when the
// test ends); the source is filled through the ordinary API with every
// kind of record, copied with store.Copy, and the target compared with it
// through the readers the coordinator serves from.
func RunPort(t *testing.T, openSource, openTarget func(t *testing.T) PortStore) {
	t.Run("CopyKeepsEverything", func(t *testing.T) {
		src := openSource(t)
		fx := fillSource(t, src)
		dst := openTarget(t)
		rep, err := store.Copy(ctx, src, dst, store.CopyOptions{})
		must(t, err)
		if !rep.OK() {
			t.Fatalf("copy report not OK: %+v", rep)
		}
		compareStores(t, src, dst, fx)
		continueOnTarget(t, src, dst, fx)
	})
	t.Run("ImportRefusesANonEmptyTarget", func(t *testing.T) {
		src := openSource(t)
		fillSource(t, src)
		dst := openTarget(t)
		must(t, dst.CreateToken(ctx, store.Token{ID: "other", Kind: api.TokenSubmit, Hash: []byte("h"), CreatedAt: T0}))
		_, err := store.Copy(ctx, src, dst, store.CopyOptions{})
		if !errors.Is(err, store.ErrTargetNotEmpty) {
			t.Fatalf("copying into a store with a token: %v, want ErrTargetNotEmpty", err)
		}
		if jobs, _ := dst.ListJobs(ctx, store.JobFilter{}); len(jobs) != 0 {
			t.Fatalf("the refused import wrote %d jobs", len(jobs))
		}
	})
	t.Run("AStreamCutShortImportsNothingAndCanBeRunAgain", func(t *testing.T) {
		src := openSource(t)
		fillSource(t, src)
		var recs []store.Record
		must(t, src.Export(ctx, func(r store.Record) error { recs = append(recs, r); return nil }))
		dst := openTarget(t)
		cut := recs[:len(recs)-1] // without the end record
		if err := dst.Import(ctx, replay(cut)); err == nil || !strings.Contains(err.Error(), "cut short") {
			t.Fatalf("importing a stream without its end: %v", err)
		}
		if jobs, _ := dst.ListJobs(ctx, store.JobFilter{}); len(jobs) != 0 {
			t.Fatalf("the failed import left %d jobs", len(jobs))
		}
		if toks, _ := dst.ListTokens(ctx); len(toks) != 0 {
			t.Fatalf("the failed import left %d tokens", len(toks))
		}
		must(t, dst.Import(ctx, replay(recs)))
		compareStores(t, src, dst, fixture{})
	})
	t.Run("ImportRefusesMalformedStreams", func(t *testing.T) {
		src := openSource(t)
		fillSource(t, src)
		var recs []store.Record
		must(t, src.Export(ctx, func(r store.Record) error { recs = append(recs, r); return nil }))
		for name, edit := range map[string]func([]store.Record) []store.Record{
			"newer version": func(rs []store.Record) []store.Record {
				h := *rs[0].Header
				h.Version = store.PortVersion + 1
				return append([]store.Record{{Kind: store.RecordHeader, Header: &h}}, rs[1:]...)
			},
			"no header": func(rs []store.Record) []store.Record { return rs[1:] },
			"a log chunk missing": func(rs []store.Record) []store.Record {
				i := slices.IndexFunc(rs, func(r store.Record) bool { return r.Kind == store.RecordLog })
				return slices.Delete(slices.Clone(rs), i, i+1)
			},
			"a blob's last chunk missing": func(rs []store.Record) []store.Record {
				i := slices.IndexFunc(rs, func(r store.Record) bool { return r.Kind == store.RecordBlob && r.Blob.Offset > 0 })
				return slices.Delete(slices.Clone(rs), i, i+1)
			},
			"a blob's bytes changed": func(rs []store.Record) []store.Record {
				rs = slices.Clone(rs)
				i := slices.IndexFunc(rs, func(r store.Record) bool { return r.Kind == store.RecordBlob && len(r.Blob.Data) > 0 })
				c := *rs[i].Blob
				c.Data = append([]byte{c.Data[0] ^ 1}, c.Data[1:]...)
				rs[i] = store.Record{Kind: store.RecordBlob, Blob: &c}
				return rs
			},
		} {
			t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
				dst := openTarget(t)
				if err := dst.Import(ctx, replay(edit(recs))); err == nil {
					t.Fatal("imported")
				}
				if jobs, _ := dst.ListJobs(ctx, store.JobFilter{}); len(jobs) != 0 {
					t.Fatalf("the failed import left %d jobs", len(jobs))
				}
			})
		}
	})
	t.Run("CopyReportsWhatTheTargetChanged", func(t *testing.T) {
		src := openSource(t)
		fillSource(t, src)
		dst := alteringTarget{openTarget(t)}
		rep, err := store.Copy(ctx, src, dst, store.CopyOptions{})
		must(t, err)
		bad := map[string]bool{}
		for _, r := range rep.Resources {
			if !r.OK() {
				bad[r.Name] = true
			}
		}
		if rep.OK() || !bad[store.ResJobs] || !bad[store.ResEgress] || len(bad) != 2 {
			t.Fatalf("a target that changed a job and an egress event: report %+v", rep)
		}
	})
}

// replay is a next function over recs.
func replay(recs []store.Record) func() (store.Record, bool, error) {
	i := 0
	return func() (store.Record, bool, error) {
		if i == len(recs) {
			return store.Record{}, false, nil
		}
		i++
		return recs[i-1], true, nil
	}
}

// alteringTarget imports one job with one attempt more and one egress
// event with another domain, as a faulty backend would.
type alteringTarget struct{ PortStore }

func (a alteringTarget) Import(ctx2 context.Context, next func() (store.Record, bool, error)) error {
	job, ev := false, false
	return a.PortStore.Import(ctx2, func() (store.Record, bool, error) {
		r, ok, err := next()
		switch {
		case ok && r.Kind == store.RecordJob && !job:
			j := *r.Job
			j.Attempts++
			r, job = store.Record{Kind: r.Kind, Job: &j}, true
		case ok && r.Kind == store.RecordEgress && !ev:
			e := *r.Egress
			e.Event.Domain = "changed.example."
			r, ev = store.Record{Kind: r.Kind, Egress: &e}, true
		}
		return r, ok, err
	})
}

// fixture is what fillSource made that the comparison needs to know.
type fixture struct {
	running   store.Fence // the job mid-lease
	logEnd    int64       // its log's next offset
	nextSeq   int64       // its next egress sequence number
	purged    string
	bigBlob   string
	unrefBlob string
}

// linuxRunner is runner "r" with the label the port jobs need.
var linuxRunner = store.Runner{Runner: api.Runner{ID: "r", Labels: map[string]string{"os": "linux"}}}

// fillSource stores one of everything through the ordinary API.
func fillSource(t *testing.T, s PortStore) fixture {
	t.Helper()
	var fx fixture
	uses, exp := 5, at(48*time.Hour)
	must(t, s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: []byte("reg-hash"), CreatedAt: T0, UsesLeft: &uses, Note: "fleet"}))
	must(t, s.CreateToken(ctx, store.Token{ID: "sub", Kind: api.TokenSubmit, Hash: []byte("sub-hash"), CreatedAt: at(time.Second), ExpiresAt: &exp, Team: "web"}))
	must(t, s.CreateToken(ctx, store.Token{ID: "old", Kind: api.TokenAudit, Hash: []byte("old-hash"), CreatedAt: at(2 * time.Second)}))
	if _, err := s.RevokeToken(ctx, "old", at(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"r", "gone"} {
		r := store.Runner{Runner: api.Runner{ID: name, Name: "host-" + name, Labels: map[string]string{"os": "linux"}, Concurrency: 2 + i,
			CreatedAt: at(time.Duration(i) * time.Second)}, TokenHash: []byte("runner-hash-" + name), PublicKey: bytes.Repeat([]byte{byte(i + 1)}, 32)}
		must(t, s.RegisterRunner(ctx, "reg", []byte("reg-hash"), r, at(time.Minute)))
	}
	must(t, s.TouchRunner(ctx, "r", at(2*time.Minute)))
	if _, err := s.RevokeRunner(ctx, "gone", at(3*time.Minute)); err != nil {
		t.Fatal(err)
	}

	// Blobs: a source over 1 MiB that a job refers to, an artifact, and one
	// nothing refers to (not copied).
	put := func(b []byte) string {
		d, _, err := s.PutBlob(ctx, bytes.NewReader(b), int64(len(b)), "")
		must(t, err)
		return d
	}
	big := make([]byte, 3<<19) // 1.5 MiB
	_, _ = rand.Read(big)
	fx.bigBlob = put(big)
	small := put([]byte("artifact bytes"))
	fx.unrefBlob = put([]byte("nothing refers to me"))

	mk := func(id string, attempts int, d time.Duration) store.Job {
		j := newJob(id)
		j.MaxAttempts = attempts
		j.CreatedAt = at(d)
		j.Submitter, j.Team = "sub", "web"
		j.Spec.Labels = map[string]string{"os": "linux"}
		j.Spec.Resources = api.Resources{CPUs: 1}
		j.Source = api.Source{Kind: "tar", SHA256: fx.bigBlob, Size: int64(len(big))}
		return j
	}
	// purged finishes first and is purged; then, in queue order: done
	// (succeeded, with artifacts and egress), failed (a class), lost
	// (one attempt, expired), requeued (expired, queued again), running
	// (mid-lease, cancel requested, a long log, egress), truncated (a
	// log past the cap, running), canceled (while queued), queued.
	ids := []string{"purged", "done", "failed", "lost", "requeued", "running", "truncated", "canceled", "queued"}
	for i, id := range ids {
		attempts := 3
		if id == "lost" {
			attempts = 1
		}
		createJobs(t, s, mk(id, attempts, time.Duration(i)*time.Second))
	}
	claims := map[string]store.Fence{}
	cs, err := s.ClaimJobs(ctx, linuxRunner, nil, 7, TTL, at(time.Hour))
	must(t, err)
	for _, c := range cs {
		claims[c.Job.ID] = fence(c)
	}
	if len(claims) != 7 {
		t.Fatalf("claimed %d jobs, want 7", len(claims))
	}
	fin := func(id, state string, code int, reason, class string) {
		t.Helper()
		j := job(t, s, id)
		if _, err := s.Finish(ctx, claims[id], state, code, reason, class, j.LogOffset, at(time.Hour+time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	appendLog(t, s, claims["purged"], 0, "bye")
	fin("purged", api.StateSucceeded, 0, "", "")
	if ids, err := s.PurgeFinished(ctx, at(2*time.Hour), 10); err != nil || len(ids) != 1 {
		t.Fatalf("purging: %v %v", ids, err)
	}
	fx.purged = "purged"

	appendLog(t, s, claims["done"], 0, "building\n")
	must(t, s.AddEgress(ctx, claims["done"], 0, []api.EgressEvent{
		{Time: at(time.Hour), Runner: "r", Job: "done", Proto: "dns", Domain: "registry.npmjs.org.", Verdict: api.VerdictAllow, Rule: "registry"},
		{Time: at(time.Hour + time.Second), Runner: "r", Job: "done", Proto: "http", Dst: "registry.npmjs.org:443", Verdict: api.VerdictAllow,
			Method: "GET", Path: "/left-pad", Package: "left-pad", Version: "1.3.0", Status: 200, Bytes: 1234, Cache: "hit",
			Process: &api.EgressProcess{PID: 42, Comm: "node", Exe: "/usr/bin/node", Cmdline: "node install.js", Package: "left-pad"}},
	}))
	must(t, s.AddArtifact(ctx, claims["done"], store.Artifact{Name: "dist.tgz", Kind: "file", SHA256: small, Size: 14, CreatedAt: at(time.Hour)}))
	must(t, s.AddArtifact(ctx, claims["done"], store.Artifact{Name: "big.bin", Kind: "file", SHA256: fx.bigBlob, Size: int64(len(big)), CreatedAt: at(time.Hour)}))
	fin("done", api.StateSucceeded, 0, "", "")
	appendLog(t, s, claims["failed"], 0, "npm ERR!\n")
	fin("failed", api.StateFailed, 1, "build script exited 1", api.ClassBuild)

	// The running job: a log over 1 MiB in several chunks (one of them
	// longer than a record chunk), egress events, cancel requested.
	f := claims["running"]
	var off int64
	for _, n := range []int{100, 200 << 10, 3 << 19, 7} {
		off = appendLog(t, s, f, off, strings.Repeat(string(rune('a'+n%26)), n))
	}
	must(t, s.AddEgress(ctx, f, 0, events(5, "10.0.0.1")))
	if _, err := s.Heartbeat(ctx, f, TTL, at(time.Hour+30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RequestCancel(ctx, "running", at(time.Hour+40*time.Second)); err != nil {
		t.Fatal(err)
	}
	fx.running, fx.logEnd, fx.nextSeq = f, off, 5
	tf := claims["truncated"]
	next := appendLog(t, s, tf, 0, strings.Repeat("x", int(PortLogLimits.MaxBytes)-10))
	appendLog(t, s, tf, next, strings.Repeat("y", 100))
	if _, err := s.Heartbeat(ctx, tf, TTL, at(time.Hour+30*time.Second)); err != nil {
		t.Fatal(err)
	}

	// lost and requeued: their leases expire (lost had one attempt).
	if _, err := s.Heartbeat(ctx, claims["running"], 10*TTL, at(time.Hour+50*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Heartbeat(ctx, tf, 10*TTL, at(time.Hour+50*time.Second)); err != nil {
		t.Fatal(err)
	}
	reaped, err := s.ReapExpired(ctx, at(time.Hour+2*TTL))
	must(t, err)
	if len(reaped) != 2 {
		t.Fatalf("reaped %+v, want lost and requeued", reaped)
	}
	if _, err := s.RequestCancel(ctx, "canceled", at(time.Hour+3*TTL)); err != nil {
		t.Fatal(err)
	}
	for id, state := range map[string]string{"done": api.StateSucceeded, "failed": api.StateFailed, "lost": api.StateLost,
		"requeued": api.StateQueued, "running": api.StateRunning, "truncated": api.StateRunning, "canceled": api.StateCanceled, "queued": api.StateQueued} {
		if j := job(t, s, id); j.State != state {
			t.Fatalf("job %s is %s, want %s", id, j.State, state)
		}
	}
	if j := job(t, s, "truncated"); !j.LogTruncated {
		t.Fatal("the truncated job's log is not truncated")
	}
	return fx
}

// compareStores compares everything the readers show of a and b.
func compareStores(t *testing.T, a, b PortStore, fx fixture) {
	t.Helper()
	same := func(what string, x, y any) {
		t.Helper()
		if xs, ys := normJSON(t, x), normJSON(t, y); xs != ys {
			t.Errorf("%s differ:\nsource %s\ntarget %s", what, xs, ys)
		}
	}
	// read reads the same thing from both stores and compares it.
	read := func(what string, fn func(s PortStore) (any, error)) any {
		t.Helper()
		x, err := fn(a)
		must(t, err)
		y, err := fn(b)
		must(t, err)
		same(what, x, y)
		return x
	}
	read("tokens", func(s PortStore) (any, error) { return s.ListTokens(ctx) })
	read("runners", func(s PortStore) (any, error) { return s.ListRunners(ctx) })
	ja := read("jobs", func(s PortStore) (any, error) { return s.ListJobs(ctx, store.JobFilter{}) }).([]store.Job)
	if len(ja) != 8 {
		t.Errorf("the source lists %d jobs, want 8", len(ja))
	}
	var ids []string
	for _, j := range ja {
		ids = append(ids, j.ID)
		ba, err := a.ReadLog(ctx, j.ID, 0, 8<<20)
		must(t, err)
		bb, err := b.ReadLog(ctx, j.ID, 0, 8<<20)
		must(t, err)
		if !bytes.Equal(ba, bb) || int64(len(ba)) != j.LogSize {
			t.Errorf("log of %s: %d bytes in the source (size %d), %d in the target", j.ID, len(ba), j.LogSize, len(bb))
		}
		read("artifacts of "+j.ID, func(s PortStore) (any, error) { return s.ListArtifacts(ctx, j.ID) })
	}
	if fx.purged != "" {
		if _, err := b.Job(ctx, fx.purged); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("the purged job in the target: %v", err)
		}
	}
	ea, eb := records(t, a, after(0)), records(t, b, after(0))
	if len(ea) != len(eb) || len(ea) == 0 {
		t.Fatalf("%d egress events in the source, %d in the target", len(ea), len(eb))
	}
	for i := range ea {
		if i > 0 && eb[i].Cursor <= eb[i-1].Cursor {
			t.Errorf("target cursors not increasing: %d after %d", eb[i].Cursor, eb[i-1].Cursor)
		}
		same("egress event", ea[i].EgressEvent, eb[i].EgressEvent)
	}
	byTime := func(s PortStore) []api.EgressEvent {
		var out []api.EgressEvent
		must(t, s.QueryEgress(ctx, store.EgressFilter{}, func(e api.EgressEvent) error { out = append(out, e); return nil }))
		return out
	}
	same("egress events by time", byTime(a), byTime(b))
	read("egress counts", func(s PortStore) (any, error) { return s.CountEgress(ctx, ids, "") })
	refsA := read("blob references", func(s PortStore) (any, error) { return s.BlobRefs(ctx) }).(map[string]bool)
	for d := range refsA {
		if got, want := blobSum(t, b, d), blobSum(t, a, d); got != want || got != d {
			t.Errorf("blob %s: %s in the target, %s in the source", d, got, want)
		}
	}
	if fx.bigBlob != "" && !refsA[fx.bigBlob] {
		t.Error("the big blob is not referenced")
	}
	if fx.unrefBlob != "" {
		if _, err := b.OpenBlob(ctx, fx.unrefBlob); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a blob nothing refers to was copied: %v", err)
		}
	}
	read("stats", func(s PortStore) (any, error) { return s.Stats(ctx, T0, at(time.Hour)) })
}

// continueOnTarget checks that the target carries on where the source
// stopped: the running job's lease, log offset and egress numbering, the
// fencing tokens and the queue order.
func continueOnTarget(t *testing.T, src, dst PortStore, fx fixture) {
	t.Helper()
	f := fx.running
	j, err := dst.Heartbeat(ctx, f, TTL, at(time.Hour+time.Minute))
	if err != nil || !j.Cancel {
		t.Fatalf("heartbeat on the target with the source's lease: cancel %v, %v", j.Cancel, err)
	}
	if _, err := dst.Heartbeat(ctx, store.Fence{JobID: f.JobID, RunnerID: f.RunnerID, Token: f.Token - 1}, TTL, at(time.Hour+time.Minute)); !errors.Is(err, store.ErrStaleLease) {
		t.Errorf("an older fencing token on the target: %v, want ErrStaleLease", err)
	}
	if n := appendLog(t, dst, f, fx.logEnd-3, "xyzmore"); n != fx.logEnd+4 {
		t.Errorf("appending over the log's end on the target: next %d, want %d", n, fx.logEnd+4)
	}
	before := records(t, dst, after(0))
	must(t, dst.AddEgress(ctx, f, 0, events(5, "10.0.0.1"))) // an agent's retry
	if got := records(t, dst, after(0)); len(got) != len(before) {
		t.Errorf("a retried egress batch was stored again on the target: %d events, was %d", len(got), len(before))
	}
	must(t, dst.AddEgress(ctx, f, fx.nextSeq, events(1, "10.0.0.2")))
	got := records(t, dst, after(before[len(before)-1].Cursor))
	if len(got) != 1 || got[0].Dst != "10.0.0.2:0" {
		t.Errorf("the next egress event on the target: %+v", got)
	}
	// Both stores hand out the same claims next: the queue order and the
	// fencing tokens continue.
	now := at(time.Hour + 5*time.Minute)
	ca, err := src.ClaimJobs(ctx, linuxRunner, nil, 10, TTL, now)
	must(t, err)
	cb, err := dst.ClaimJobs(ctx, linuxRunner, nil, 10, TTL, now)
	must(t, err)
	key := func(cs []store.Claim) (out []string) {
		for _, c := range cs {
			out = append(out, c.Job.ID+"@"+time.Duration(c.Token).String())
		}
		return out
	}
	if ka, kb := key(ca), key(cb); !slices.Equal(ka, kb) || len(ka) != 2 {
		t.Errorf("next claims: source %v, target %v", ka, kb)
	}
}

func blobSum(t *testing.T, s PortStore, d string) string {
	t.Helper()
	f, err := s.OpenBlob(ctx, d)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	must(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// normJSON is v as JSON with every time in UTC, so two backends that give
// the same instants in different zones compare equal.
func normJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	must(t, err)
	var x any
	must(t, json.Unmarshal(b, &x))
	out, err := json.Marshal(utcTimes(x))
	must(t, err)
	return string(out)
}

func utcTimes(x any) any {
	switch v := x.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = utcTimes(e)
		}
	case []any:
		for i, e := range v {
			v[i] = utcTimes(e)
		}
	case string:
		if tm, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return tm.UTC().Format(time.RFC3339Nano)
		}
	}
	return x
}
