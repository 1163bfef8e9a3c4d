package coordinator_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// A queued job says why no runner has taken it, from what the runners
// reported with their claims; GET /v1/policy lists the registries of the
// runners online.
func TestQueuedJobSaysWhyAndPolicyListsTheRunnersRegistries(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	admin := c.AdminClient()
	submit := func(labels map[string]string, mem api.ByteSize) api.Job {
		t.Helper()
		spec, src := gitSpec()
		spec.Labels, spec.Resources.Memory = labels, mem
		j, err := admin.SubmitGit(ctx, spec, src)
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	reason := func(j api.Job, want string) {
		t.Helper()
		got, err := admin.GetJob(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if want == "" && got.QueuedReason != "" || !strings.Contains(got.QueuedReason, want) {
			t.Errorf("queued_reason = %q, want %q", got.QueuedReason, want)
		}
	}
	elsewhere := submit(map[string]string{"zone": "b"}, 0)
	reason(elsewhere, "no runner is online")
	if p, err := admin.Policy(ctx); err != nil || len(p.Registries) != 0 {
		t.Fatalf("policy with no runner = %+v %v, want no registries", p, err)
	}

	runner, _ := c.Register("small", map[string]string{"zone": "a"})
	claim := func() []api.Claim { t.Helper(); return claimAsSmall(t, runner) }
	claim()
	reason(elsewhere, "no runner online has labels zone=b (1 online)")
	big := submit(map[string]string{"zone": "a"}, 4<<30)
	reason(big, "no runner online with labels zone=a has the resources it asks for (small: resources.memory 4GiB > 1GiB)")
	submit(map[string]string{"zone": "a"}, 0)
	if got := claim(); len(got) != 1 {
		t.Fatalf("claimed %d jobs, want the one that fits", len(got))
	}
	waiting := submit(nil, 0)
	reason(waiting, "all 1 runner(s) that can take it are busy (1 job(s) running)")

	tok, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenSubmit})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.client(tok.Token).Policy(ctx)
	if err != nil || !slices.Equal(p.Registries, []string{"http://registry.test:4873/"}) {
		t.Fatalf("policy = %+v %v, want the runner's registry", p, err)
	}
	if _, err := admin.RemoveRunner(ctx, "small"); err != nil {
		t.Fatal(err)
	}
	if p, err := admin.Policy(ctx); err != nil || len(p.Registries) != 0 {
		t.Fatalf("policy after the runner was removed = %+v %v, want none", p, err)
	}
	reason(waiting, "no runner is online")
}

// claimAsSmall claims one slot for 100 ms as runner "small" (1 GiB of
// memory, one registry) and returns what it got.
func claimAsSmall(t *testing.T, runner *api.Client) []api.Claim {
	t.Helper()
	resp, err := runner.Claim(context.Background(), api.ClaimRequest{Slots: 1, Wait: api.Duration(100 * time.Millisecond),
		Capacity: &api.Resources{Memory: 1 << 30}, Registries: []string{"http://registry.test:4873/"}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Claims
}
