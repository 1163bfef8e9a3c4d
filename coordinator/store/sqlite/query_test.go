package sqlite_test

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// queryFixture is a store with jobs j-0..j-4 (j-0 oldest), j-0..j-2 claimed
// by runner r-a and j-3 by r-b, j-4 queued; j-0..j-2 submitted by s-1.
// Egress events are stored under j-0's and j-3's leases.
func queryFixture(t *testing.T) (*sqlite.Store, map[string]store.Claim) {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "q.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	now := time.Now()
	for i := range 5 {
		sub := "admin"
		if i < 3 {
			sub = "s-1"
		}
		j := store.Job{Job: api.Job{ID: "j-" + string(rune('0'+i)), MaxAttempts: 3, CreatedAt: now, Submitter: sub,
			Spec: api.JobSpec{Build: api.Build{Script: "x"}}}}
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	claims := map[string]store.Claim{}
	for _, rc := range []struct {
		runner string
		n      int
	}{{"r-a", 3}, {"r-b", 1}} {
		runner, n := rc.runner, rc.n
		cs, err := s.ClaimJobs(ctx, store.Runner{Runner: api.Runner{ID: runner}}, nil, n, time.Minute, now)
		if err != nil || len(cs) != n {
			t.Fatalf("claiming for %s: %d claims, %v", runner, len(cs), err)
		}
		for _, c := range cs {
			claims[c.Job.ID] = c
		}
	}
	return s, claims
}

func fence(c store.Claim) store.Fence {
	return store.Fence{JobID: c.Job.ID, RunnerID: c.Job.RunnerID, Token: c.Token}
}

func TestListJobsFiltersByRunnerAndPages(t *testing.T) {
	ctx := context.Background()
	s, _ := queryFixture(t)
	ids := func(f store.JobFilter) []string {
		t.Helper()
		js, err := s.ListJobs(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
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
}

func TestQueryEgressMatchesRuleDestinationDomainAndPages(t *testing.T) {
	ctx := context.Background()
	s, claims := queryFixture(t)
	t0 := time.Now().UTC()
	ev := func(i int, proto, dst, domain, verdict, rule string) api.EgressEvent {
		return api.EgressEvent{Time: t0.Add(time.Duration(i) * time.Millisecond), Proto: proto, Dst: dst, Domain: domain, Verdict: verdict, Rule: rule}
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
	if err := s.AddEgress(ctx, fence(j0), 0, evs); err != nil {
		t.Fatal(err)
	}
	other := ev(9, "tcp", "10.0.0.5:443", "", "deny", "default-deny")
	other.Job, other.Runner = "j-3", claims["j-3"].Job.RunnerID
	if err := s.AddEgress(ctx, fence(claims["j-3"]), 0, []api.EgressEvent{other}); err != nil {
		t.Fatal(err)
	}
	query := func(f store.EgressFilter) []int {
		t.Helper()
		var out []int
		err := s.QueryEgress(ctx, f, func(e api.EgressEvent) error {
			out = append(out, int(e.Time.Sub(t0)/time.Millisecond))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
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
	if err != nil {
		t.Fatal(err)
	}
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
