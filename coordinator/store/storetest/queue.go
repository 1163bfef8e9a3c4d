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

func testReadyUntilClosed(t *testing.T, s store.Store) {
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("ready on an open store: %v", err)
	}
	s.Close()
	if err := s.Ready(ctx); err == nil {
		t.Fatal("ready on a closed store: no error")
	}
}

var secret = []byte("0123456789abcdef0123456789abcdef")

func testTokens(t *testing.T, s store.Store) {
	one, exp := 1, at(time.Hour)
	for _, tok := range []store.Token{
		{ID: "b-sub", Kind: api.TokenSubmit, Hash: secret, CreatedAt: T0, Note: "ci", Team: "web"},
		{ID: "a-reg", Kind: api.TokenRegistration, Hash: secret, CreatedAt: at(time.Second), ExpiresAt: &exp, UsesLeft: &one},
	} {
		must(t, s.CreateToken(ctx, tok))
	}
	list, err := s.ListTokens(ctx)
	must(t, err)
	if len(list) != 2 || list[0].ID != "b-sub" || list[1].ID != "a-reg" {
		t.Fatalf("tokens %+v, want b-sub then a-reg (oldest first)", list)
	}
	if list[0].Team != "web" || list[0].Note != "ci" || *list[1].UsesLeft != 1 || !list[1].ExpiresAt.Equal(exp) {
		t.Errorf("token fields not kept: %+v %+v", list[0], list[1])
	}
	got, err := s.CheckToken(ctx, api.TokenSubmit, "b-sub", secret, at(time.Minute))
	if err != nil || got.Team != "web" {
		t.Fatalf("checking a valid token: %+v %v", got, err)
	}
	for _, tc := range []struct {
		name, kind, id string
		hash           []byte
		now            time.Time
	}{
		{"unknown id", api.TokenSubmit, "nope", secret, T0},
		{"wrong secret", api.TokenSubmit, "b-sub", []byte("wrong"), T0},
		{"wrong kind", api.TokenRegistration, "b-sub", secret, T0},
		{"expired at its end", api.TokenRegistration, "a-reg", secret, exp},
	} {
		if _, err := s.CheckToken(ctx, tc.kind, tc.id, tc.hash, tc.now); !errors.Is(err, store.ErrTokenInvalid) {
			t.Errorf("%s: %v, want ErrTokenInvalid", tc.name, err)
		}
	}
	if _, err := s.CheckToken(ctx, api.TokenRegistration, "a-reg", secret, at(time.Hour-time.Nanosecond)); err != nil {
		t.Errorf("checking just before expiry: %v", err)
	}
	r1, err := s.RevokeToken(ctx, "b-sub", at(time.Minute))
	must(t, err)
	r2, err := s.RevokeToken(ctx, "b-sub", at(time.Hour))
	must(t, err)
	if r1.RevokedAt == nil || !r2.RevokedAt.Equal(at(time.Minute)) {
		t.Errorf("revoked at %v then %v, want the first revocation kept", r1.RevokedAt, r2.RevokedAt)
	}
	if _, err := s.CheckToken(ctx, api.TokenSubmit, "b-sub", secret, at(2*time.Minute)); !errors.Is(err, store.ErrTokenInvalid) {
		t.Errorf("revoked token: %v, want ErrTokenInvalid", err)
	}
	if _, err := s.RevokeToken(ctx, "nope", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking an unknown token: %v, want ErrNotFound", err)
	}
}

func register(t *testing.T, s store.Store, id, name string, now time.Time) error {
	t.Helper()
	r := store.Runner{Runner: api.Runner{ID: id, Name: name, Labels: map[string]string{"os": "linux"}, Concurrency: 2, CreatedAt: now},
		TokenHash: secret, PublicKey: []byte("key-" + id)}
	return s.RegisterRunner(ctx, "reg", secret, r, now)
}

func testRunners(t *testing.T, s store.Store) {
	two := 2
	must(t, s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: secret, CreatedAt: T0, UsesLeft: &two}))
	must(t, register(t, s, "r-1", "one", T0))
	if err := register(t, s, "r-2", "one", T0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second runner named one: %v, want ErrConflict", err)
	}
	must(t, register(t, s, "r-2", "two", T0))
	if err := register(t, s, "r-3", "three", T0); !errors.Is(err, store.ErrTokenInvalid) {
		t.Fatalf("registering past the token's uses: %v, want ErrTokenInvalid", err)
	}
	r, err := s.RunnerByName(ctx, "one")
	must(t, err)
	if r.ID != "r-1" || r.Labels["os"] != "linux" || r.Concurrency != 2 || string(r.PublicKey) != "key-r-1" || string(r.TokenHash) != string(secret) {
		t.Errorf("runner one: %+v", r)
	}
	must(t, s.TouchRunner(ctx, "r-1", at(time.Minute)))
	if r, err = s.Runner(ctx, "r-1"); err != nil || r.LastSeen == nil || !r.LastSeen.Equal(at(time.Minute)) {
		t.Errorf("last seen after a touch: %+v %v", r.LastSeen, err)
	}
	if _, err := s.Runner(ctx, "r-9"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown runner: %v", err)
	}
	if _, err := s.RunnerByName(ctx, "nine"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown runner name: %v", err)
	}
	rv, err := s.RevokeRunner(ctx, "r-1", at(time.Hour))
	if err != nil || rv.RevokedAt == nil {
		t.Fatalf("revoking: %+v %v", rv, err)
	}
	if _, err := s.RevokeRunner(ctx, "r-9", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking an unknown runner: %v", err)
	}
	list, err := s.ListRunners(ctx)
	must(t, err)
	if len(list) != 2 {
		t.Errorf("%d runners listed, want 2 (revoked ones stay)", len(list))
	}
}

// What a runner reports with a claim is kept with the runner (every
// coordinator reads it): the last claim replaces the one before, and
// closing a claim ends only that claim, never later or extended.
func testClaimReports(t *testing.T, s store.Store) {
	two := 2
	must(t, s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: secret, CreatedAt: T0, UsesLeft: &two}))
	must(t, register(t, s, "r-1", "one", T0))
	must(t, register(t, s, "r-2", "two", T0))
	last := func(id string) *store.ClaimReport {
		t.Helper()
		r, err := s.Runner(ctx, id)
		must(t, err)
		return r.LastClaim
	}
	if c := last("r-1"); c != nil || c.OpenAt(T0) {
		t.Fatalf("claim report before any claim: %+v", c)
	}
	first := store.ClaimReport{OpenUntil: at(time.Minute + 30*time.Second), Capacity: &api.Resources{CPUs: 2, Memory: 1 << 30},
		Registries: []string{"https://registry.npmjs.org/", "http://registry.test:4873/"}}
	must(t, s.ReportClaim(ctx, "r-1", first, at(time.Minute)))
	r, err := s.RunnerByName(ctx, "one")
	must(t, err)
	c := r.LastClaim
	if c == nil || !c.At.Equal(at(time.Minute)) || !c.OpenUntil.Equal(first.OpenUntil) || c.Capacity == nil || *c.Capacity != *first.Capacity ||
		!slices.Equal(c.Registries, first.Registries) {
		t.Fatalf("claim report = %+v, want %+v at %s", c, first, at(time.Minute))
	}
	if r.LastSeen == nil || !r.LastSeen.Equal(at(time.Minute)) {
		t.Errorf("a claim did not mark the runner seen: %v", r.LastSeen)
	}
	if !c.OpenAt(at(time.Minute+29*time.Second)) || c.OpenAt(first.OpenUntil) {
		t.Errorf("claim open until %s: open at +29s %v, at its end %v", c.OpenUntil, c.OpenAt(at(time.Minute+29*time.Second)), c.OpenAt(first.OpenUntil))
	}
	list, err := s.ListRunners(ctx)
	must(t, err)
	for _, r := range list {
		if (r.ID == "r-1") != (r.LastClaim != nil) {
			t.Errorf("listed runner %s with claim report %+v", r.ID, r.LastClaim)
		}
	}

	second := store.ClaimReport{OpenUntil: at(2*time.Minute + 30*time.Second), Registries: []string{"http://other.test/"}}
	must(t, s.ReportClaim(ctx, "r-1", second, at(2*time.Minute)))
	must(t, s.CloseClaim(ctx, "r-1", first.OpenUntil, at(2*time.Minute+time.Second)))
	if c := last("r-1"); !c.At.Equal(at(2*time.Minute)) || c.Capacity != nil || !slices.Equal(c.Registries, second.Registries) ||
		!c.OpenAt(at(2*time.Minute+5*time.Second)) {
		t.Fatalf("after a second claim and closing the first: %+v, want the second, open", c)
	}
	must(t, s.CloseClaim(ctx, "r-1", second.OpenUntil, at(2*time.Minute+5*time.Second)))
	if c := last("r-1"); c.OpenAt(at(2*time.Minute+5*time.Second)) || !c.OpenUntil.Equal(at(2*time.Minute+5*time.Second)) ||
		!slices.Equal(c.Registries, second.Registries) {
		t.Fatalf("after closing the second claim: %+v, want closed at +5s with its report kept", c)
	}

	third := store.ClaimReport{OpenUntil: at(3*time.Minute + time.Second)}
	must(t, s.ReportClaim(ctx, "r-1", third, at(3*time.Minute)))
	must(t, s.CloseClaim(ctx, "r-1", third.OpenUntil, at(3*time.Minute+10*time.Second)))
	if c := last("r-1"); !c.OpenUntil.Equal(third.OpenUntil) {
		t.Errorf("closing a claim after its end moved it to %s, want %s", c.OpenUntil, third.OpenUntil)
	}
	must(t, s.ReportClaim(ctx, "r-9", first, T0))
	if c := last("r-2"); c != nil {
		t.Errorf("runner two never claimed, has %+v", c)
	}
}

// RunnerMigratedWithoutClaim checks, for a backend's migration test, runner
// id of a database written before claim reports: it reads as before (last
// seen at lastSeen) with no claim report, and its next claim is reported.
func RunnerMigratedWithoutClaim(t *testing.T, s store.Store, id string, lastSeen time.Time) {
	t.Helper()
	r, err := s.Runner(ctx, id)
	if err != nil || r.LastClaim != nil || r.LastSeen == nil || !r.LastSeen.Equal(lastSeen) {
		t.Fatalf("runner %s after migration: %+v %v", id, r, err)
	}
	now := lastSeen.Add(time.Minute)
	must(t, s.ReportClaim(ctx, id, store.ClaimReport{OpenUntil: now.Add(time.Second)}, now))
	if r, err = s.Runner(ctx, id); err != nil || !r.LastClaim.OpenAt(now) {
		t.Fatalf("runner %s after a claim: %+v %v", id, r.LastClaim, err)
	}
}

func testClaimMatches(t *testing.T, s store.Store) {
	arm := newJob("j-arm")
	arm.Spec.Labels = map[string]string{"arch": "arm64"}
	big := newJob("j-big")
	big.Spec.Resources = api.Resources{CPUs: 8}
	createJobs(t, s, arm, big, newJob("j-any-1"), newJob("j-any-2"))
	r := store.Runner{Runner: api.Runner{ID: "r", Labels: map[string]string{"arch": "amd64"}}}
	cs, err := s.ClaimJobs(ctx, r, &api.Resources{CPUs: 4}, 1, TTL, T0)
	must(t, err)
	if len(cs) != 1 || cs[0].Job.ID != "j-any-1" {
		t.Fatalf("amd64 runner with 4 cpus claimed %+v, want j-any-1 (oldest that fits)", cs)
	}
	c := cs[0]
	if c.Job.State != api.StateRunning || c.Job.RunnerID != "r" || c.Job.Attempts != 1 || c.Token != c.Job.LeaseToken ||
		c.Token == 0 || !c.Job.LeaseExpires.Equal(at(TTL)) || c.Job.StartedAt == nil || !c.Job.StartedAt.Equal(T0) {
		t.Errorf("claim: %+v", c)
	}
	if cs, err = s.ClaimJobs(ctx, r, nil, 0, TTL, T0); err != nil || len(cs) != 0 {
		t.Errorf("claiming 0: %+v %v", cs, err)
	}
	cs, err = s.ClaimJobs(ctx, r, nil, 5, TTL, T0) // no capacity: any size
	must(t, err)
	if ids := claimIDs(cs); !slices.Equal(ids, []string{"j-big", "j-any-2"}) {
		t.Errorf("claimed %v, want j-big, j-any-2", ids)
	}
	armRunner := store.Runner{Runner: api.Runner{ID: "r-arm", Labels: map[string]string{"arch": "arm64", "os": "linux"}}}
	cs, err = s.ClaimJobs(ctx, armRunner, nil, 5, TTL, T0)
	must(t, err)
	if ids := claimIDs(cs); !slices.Equal(ids, []string{"j-arm"}) {
		t.Errorf("arm runner claimed %v, want j-arm", ids)
	}
}

func claimIDs(cs []store.Claim) []string {
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.Job.ID)
	}
	return ids
}

func testClaimAtomic(t *testing.T, s store.Store) {
	const jobs = 40
	for i := 0; i < jobs; i++ {
		createJobs(t, s, newJob(fmt.Sprintf("j-%02d", i)))
	}
	seen := make(chan string, jobs*2)
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func() {
			for {
				cs, err := s.ClaimJobs(ctx, runner("r"), nil, 2, TTL, T0)
				if err != nil || len(cs) == 0 {
					errs <- err
					return
				}
				for _, c := range cs {
					seen <- c.Job.ID
				}
			}
		}()
	}
	for w := 0; w < 8; w++ {
		must(t, <-errs)
	}
	close(seen)
	got := map[string]int{}
	for id := range seen {
		got[id]++
	}
	if len(got) != jobs {
		t.Fatalf("claimed %d distinct jobs, want %d", len(got), jobs)
	}
	for id, n := range got {
		if n != 1 {
			t.Fatalf("job %s claimed %d times", id, n)
		}
	}
	if _, err := s.Job(ctx, "j-none"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing job: %v", err)
	}
}

// Every fenced write under a token that is not the job's current lease is
// ErrStaleLease: an older token, another runner, a lease the reaper took.
func testFencing(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	stale := []store.Fence{{JobID: "j", RunnerID: "r", Token: f.Token - 1}, {JobID: "j", RunnerID: "r", Token: f.Token + 1}, {JobID: "j", RunnerID: "x", Token: f.Token}}
	checkRefused := func(why string, fs ...store.Fence) {
		t.Helper()
		for _, g := range fs {
			for name, err := range map[string]error{
				"check lease": func() error { _, err := s.CheckLease(ctx, g); return err }(),
				"heartbeat":   func() error { _, err := s.Heartbeat(ctx, g, TTL, T0); return err }(),
				"append log":  func() error { _, err := s.AppendLog(ctx, g, 0, []byte("x")); return err }(),
				"add egress":  s.AddEgress(ctx, g, 0, events(1, "x")),
				"artifact":    s.AddArtifact(ctx, g, store.Artifact{Name: "a", SHA256: "d"}),
				"finish":      func() error { _, err := s.Finish(ctx, g, api.StateSucceeded, 0, "", "", 0, T0); return err }(),
			} {
				if !errors.Is(err, store.ErrStaleLease) {
					t.Errorf("%s: %s with %+v: %v, want ErrStaleLease", why, name, g, err)
				}
			}
		}
	}
	checkRefused("wrong token or runner", stale...)
	if _, err := s.CheckLease(ctx, f); err != nil {
		t.Fatalf("the current lease: %v", err)
	}
	if readLog(t, s, "j") != "" || len(records(t, s, after(0))) != 0 {
		t.Fatal("a refused write was stored")
	}
	// The reaper takes the job; the next claim's lease supersedes f.
	if _, err := s.ReapExpired(ctx, at(TTL+time.Second)); err != nil {
		t.Fatal(err)
	}
	cs := claim(t, s, "r", 1, at(2*TTL))
	if len(cs) != 1 || cs[0].Token <= f.Token {
		t.Fatalf("re-claim: %+v, want a token above %d", cs, f.Token)
	}
	checkRefused("superseded lease", f)
}

// testCreateJobExists: a second job with a taken id is not stored, whether
// the first is queued or running, and of several coordinators creating the
// same id at once exactly one succeeds (a submit retried elsewhere with its
// idempotency key).
func testCreateJobExists(t *testing.T, s store.Store) {
	createJobs(t, s, newJob("j"))
	other := newJob("j")
	other.Spec.Build.Script = "other"
	if err := s.CreateJob(ctx, other); !errors.Is(err, store.ErrExists) || !errors.Is(err, api.ErrConflict) {
		t.Fatalf("creating a taken id: %v, want ErrExists (a conflict)", err)
	}
	claim(t, s, "r", 1, T0)
	if err := s.CreateJob(ctx, newJob("j")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("creating the id of a running job: %v, want ErrExists", err)
	}
	if j := job(t, s, "j"); j.State != api.StateRunning || j.Spec.Build.Script != "x" {
		t.Fatalf("the first job changed: %s %q", j.State, j.Spec.Build.Script)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.CreateJob(ctx, newJob("k"))
			if err != nil && !errors.Is(err, store.ErrExists) {
				t.Errorf("concurrent create: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				created++
			}
		}()
	}
	wg.Wait()
	if created != 1 {
		t.Fatalf("%d of 8 concurrent creates of one id succeeded, want 1", created)
	}
}

func testReleaseClaim(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	must(t, s.ReleaseClaim(ctx, store.Fence{JobID: "j", RunnerID: "r", Token: f.Token - 1}))
	if j := job(t, s, "j"); j.State != api.StateRunning {
		t.Fatalf("a stale release changed the job: %s", j.State)
	}
	must(t, s.ReleaseClaim(ctx, f))
	j := job(t, s, "j")
	if j.State != api.StateQueued || j.Attempts != 0 || j.RunnerID != "" {
		t.Fatalf("after release: %s, %d attempts, runner %q", j.State, j.Attempts, j.RunnerID)
	}
	must(t, s.ReleaseClaim(ctx, store.Fence{JobID: "none", RunnerID: "r", Token: 1}))
	cs := claim(t, s, "r2", 1, T0)
	if len(cs) != 1 || cs[0].Token <= f.Token || cs[0].Job.Attempts != 1 {
		t.Fatalf("claim after release: %+v", cs)
	}
}

func testLeaseExpiry(t *testing.T, s store.Store) {
	j := newJob("j")
	j.MaxAttempts = 2
	createJobs(t, s, j)
	cs := claim(t, s, "r", 1, T0)
	if _, err := s.AppendLog(ctx, fence(cs[0]), 0, []byte("first\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ReapExpired(ctx, at(TTL)); err != nil || len(got) != 0 {
		t.Fatalf("reaping when the lease ends exactly now: %+v %v", got, err)
	}
	got, err := s.ReapExpired(ctx, at(TTL+time.Nanosecond))
	must(t, err)
	if len(got) != 1 || got[0] != (store.Reaped{JobID: "j", State: api.StateQueued}) {
		t.Fatalf("first expiry: %+v, want j re-queued", got)
	}
	after1 := job(t, s, "j")
	if after1.State != api.StateQueued || after1.RunnerID != "" || !strings.Contains(after1.Reason, "re-queued") {
		t.Errorf("after the first expiry: %+v", after1.Job)
	}
	if l := readLog(t, s, "j"); !strings.HasPrefix(l, "first\n") || !strings.Contains(l, "re-queued (attempt 1 of 2 done)") {
		t.Errorf("log after the first expiry: %q", l)
	}
	cs = claim(t, s, "r2", 1, at(time.Hour))
	if len(cs) != 1 || cs[0].Job.Attempts != 2 || cs[0].Job.Reason != "" {
		t.Fatalf("second claim: %+v", cs)
	}
	if cs[0].Job.LogOffset != after1.LogOffset {
		t.Errorf("second attempt's log starts at %d, want %d (after the first)", cs[0].Job.LogOffset, after1.LogOffset)
	}
	got, err = s.ReapExpired(ctx, at(2*time.Hour))
	must(t, err)
	if len(got) != 1 || got[0].State != api.StateLost {
		t.Fatalf("second expiry: %+v, want lost", got)
	}
	lost := job(t, s, "j")
	if lost.FinishedAt == nil || !lost.FinishedAt.Equal(at(2*time.Hour)) || !strings.Contains(lost.Reason, "after 2 of 2 attempts") {
		t.Errorf("lost job: %+v", lost.Job)
	}
	if got, err := s.ReapExpired(ctx, at(3*time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("reaping again: %+v %v", got, err)
	}

	// A job asked to cancel whose runner went silent ends canceled.
	f := runningJob(t, s, "k")
	if _, err := s.RequestCancel(ctx, "k", T0); err != nil {
		t.Fatal(err)
	}
	got, err = s.ReapExpired(ctx, at(TTL+time.Second))
	must(t, err)
	if len(got) != 1 || got[0] != (store.Reaped{JobID: "k", State: api.StateCanceled}) {
		t.Fatalf("expiry after cancel: %+v", got)
	}
	if _, err := s.Heartbeat(ctx, f, TTL, at(TTL+2*time.Second)); !errors.Is(err, store.ErrStaleLease) {
		t.Errorf("heartbeat after the reaper: %v", err)
	}
}

func testRevokeRunner(t *testing.T, s store.Store) {
	must(t, s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: secret, CreatedAt: T0}))
	must(t, register(t, s, "r", "r", T0))
	runningJob(t, s, "j")
	if _, err := s.RevokeRunner(ctx, "r", at(time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReapExpired(ctx, at(time.Second))
	must(t, err)
	if len(got) != 1 || got[0].JobID != "j" {
		t.Fatalf("reaping at the revocation: %+v, want j (its lease ended)", got)
	}
}

func testExtendLeases(t *testing.T, s store.Store) {
	runningJob(t, s, "a") // lease until T0+TTL
	createJobs(t, s, newJob("b"))
	claim(t, s, "r", 1, at(time.Hour)) // lease until T0+1h+TTL
	must(t, s.ExtendLeases(ctx, at(30*time.Minute)))
	if a, b := job(t, s, "a"), job(t, s, "b"); !a.LeaseExpires.Equal(at(30*time.Minute)) || !b.LeaseExpires.Equal(at(time.Hour+TTL)) {
		t.Errorf("leases end %v and %v, want a moved to +30m and b kept", a.LeaseExpires, b.LeaseExpires)
	}
	if got, err := s.ReapExpired(ctx, at(29*time.Minute)); err != nil || len(got) != 0 {
		t.Errorf("reaping an extended lease: %+v %v", got, err)
	}
}

func testCancel(t *testing.T, s store.Store) {
	createJobs(t, s, newJob("q"))
	j, err := s.RequestCancel(ctx, "q", at(time.Second))
	must(t, err)
	if j.State != api.StateCanceled || !j.Cancel || j.FinishedAt == nil || !j.FinishedAt.Equal(at(time.Second)) || j.Reason == "" {
		t.Errorf("canceling a queued job: %+v", j.Job)
	}
	f := runningJob(t, s, "r")
	if j, err = s.RequestCancel(ctx, "r", T0); err != nil || j.State != api.StateRunning || !j.Cancel {
		t.Fatalf("canceling a running job: %+v %v", j.Job, err)
	}
	hb, err := s.Heartbeat(ctx, f, TTL, at(time.Second))
	if err != nil || !hb.Cancel || !hb.LeaseExpires.Equal(at(time.Second+TTL)) {
		t.Fatalf("heartbeat after cancel: %+v %v", hb.Job, err)
	}
	if _, err := s.Finish(ctx, f, api.StateCanceled, 143, "canceled", "", 0, at(2*time.Second)); err != nil {
		t.Fatal(err)
	}
	if j, err = s.RequestCancel(ctx, "r", at(time.Hour)); err != nil || j.State != api.StateCanceled || !j.FinishedAt.Equal(at(2*time.Second)) {
		t.Errorf("canceling a finished job changed it: %+v %v", j.Job, err)
	}
	if _, err := s.RequestCancel(ctx, "none", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("canceling an unknown job: %v", err)
	}
}

func testFinish(t *testing.T, s store.Store) {
	f := runningJob(t, s, "j")
	if _, err := s.AppendLog(ctx, f, 0, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	_, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", 11, at(time.Second))
	var oe *store.OffsetError
	if !errors.As(err, &oe) || oe.Expected != 10 || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("finishing with more log than received: %v, want an OffsetError expecting 10", err)
	}
	j, err := s.Finish(ctx, f, api.StateFailed, 2, "exit 2", api.ClassBuild, 10, at(time.Second))
	must(t, err)
	if j.State != api.StateFailed || j.ExitCode == nil || *j.ExitCode != 2 || j.Reason != "exit 2" || j.FailureClass != api.ClassBuild || !j.FinishedAt.Equal(at(time.Second)) {
		t.Errorf("finished job: %+v", j.Job)
	}
	if j, err = s.Finish(ctx, f, api.StateFailed, 2, "exit 2", api.ClassBuild, 10, at(time.Minute)); err != nil || !j.FinishedAt.Equal(at(time.Second)) {
		t.Errorf("a retried result: %+v %v", j.Job, err)
	}
	if _, err := s.Finish(ctx, f, api.StateSucceeded, 0, "", "", 10, at(time.Minute)); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a different result: %v, want ErrConflict", err)
	}
}

func testStats(t *testing.T, s store.Store) {
	now := at(time.Hour)
	must(t, s.CreateToken(ctx, store.Token{ID: "reg", Kind: api.TokenRegistration, Hash: secret, CreatedAt: T0}))
	for _, name := range []string{"idle", "busy", "gone", "revoked"} {
		must(t, register(t, s, "r-"+name, name, T0))
	}
	createJobs(t, s, newJob("j-0"), newJob("j-1"), newJob("j-2"))
	// busy claimed one job long ago and renews its lease by heartbeats only;
	// idle claimed (nothing) just now; gone was seen long ago; revoked is.
	cs := claim(t, s, "r-busy", 1, T0)
	if _, err := s.Heartbeat(ctx, fence(cs[0]), TTL, now); err != nil {
		t.Fatal(err)
	}
	for id, seen := range map[string]time.Time{"r-busy": T0, "r-gone": T0, "r-idle": now, "r-revoked": now} {
		must(t, s.TouchRunner(ctx, id, seen))
	}
	if _, err := s.RevokeRunner(ctx, "r-revoked", now); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx, now.Add(-time.Minute), now)
	must(t, err)
	if want := map[string]int{api.StateQueued: 2, api.StateRunning: 1}; !maps.Equal(st.Jobs, want) {
		t.Errorf("jobs by state = %v, want %v", st.Jobs, want)
	}
	if st.RunnersOnline != 2 {
		t.Errorf("runners online = %d, want 2 (idle: seen; busy: holds a live lease)", st.RunnersOnline)
	}
}

func testListJobs(t *testing.T, s store.Store) {
	queryFixture(t, s)
	ids := func(f store.JobFilter) []string {
		t.Helper()
		js, err := s.ListJobs(ctx, f)
		must(t, err)
		var out []string
		for _, j := range js {
			out = append(out, j.ID)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    store.JobFilter
		want []string
	}{
		{"runner", store.JobFilter{Runner: "r-a"}, []string{"j-2", "j-1", "j-0"}},
		{"runner and submitter", store.JobFilter{Runner: "r-a", Submitter: "s-1", Limit: 1, Offset: 1}, []string{"j-1"}},
		{"state", store.JobFilter{State: api.StateQueued}, []string{"j-4"}},
		{"first page", store.JobFilter{Limit: 2}, []string{"j-4", "j-3"}},
		{"second page", store.JobFilter{Limit: 2, Offset: 2}, []string{"j-2", "j-1"}},
		{"offset without limit", store.JobFilter{Offset: 4}, []string{"j-0"}},
		{"past the end", store.JobFilter{Limit: 2, Offset: 10}, nil},
		{"other runner and submitter", store.JobFilter{Runner: "r-b", Submitter: "s-1"}, nil},
	} {
		if got := ids(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	j := job(t, s, "j-0")
	if j.Submitter != "s-1" || j.Team != "web" || j.Spec.Build.Script != "x" || !j.CreatedAt.Equal(T0) {
		t.Errorf("job fields not kept: %+v", j.Job)
	}
}

// queryFixture stores jobs j-0..j-4 (j-0 oldest), j-0..j-2 claimed by
// runner r-a and j-3 by r-b, j-4 queued; j-0..j-2 submitted by s-1 of team
// web.
func queryFixture(t *testing.T, s store.Store) map[string]store.Claim {
	t.Helper()
	for i := range 5 {
		j := newJob(fmt.Sprintf("j-%d", i))
		j.Submitter = "admin"
		if i < 3 {
			j.Submitter, j.Team = "s-1", "web"
		}
		createJobs(t, s, j)
	}
	claims := map[string]store.Claim{}
	for _, rc := range []struct {
		runner string
		n      int
	}{{"r-a", 3}, {"r-b", 1}} {
		cs := claim(t, s, rc.runner, rc.n, T0)
		if len(cs) != rc.n {
			t.Fatalf("claiming for %s: %d claims", rc.runner, len(cs))
		}
		for _, c := range cs {
			claims[c.Job.ID] = c
		}
	}
	return claims
}
