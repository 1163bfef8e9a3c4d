package preflight

import (
	"testing"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// sandbox.userns maps onto one slot per concurrent job; off (or auto on a
// kernel without user namespaces) means none, with a reason, and on always
// asks for them (the sandbox client then refuses to start without).
func TestUserNSFollowsTheAgentConfig(t *testing.T) {
	kernel := sandbox.UserNSSupported() == nil
	cases := []struct {
		mode string
		base uint32
		want bool
	}{
		{agent.UserNSOff, 0, false},
		{agent.UserNSAuto, 0, kernel},
		{agent.UserNSOn, 200_000_000, true},
	}
	for _, tc := range cases {
		cfg := &agent.Config{Concurrency: 3, Sandbox: agent.SandboxConfig{UserNS: agent.UserNSConfig{Mode: tc.mode, Base: tc.base}}}
		u, why := UserNS(cfg)
		if (u != nil) != tc.want || (u == nil) != (why != "") {
			t.Fatalf("mode %s: %+v %q, want user namespaces %v (and a reason when not)", tc.mode, u, why, tc.want)
		}
		if u == nil {
			continue
		}
		wantBase := tc.base
		if wantBase == 0 {
			wantBase = sandbox.DefaultUserNSBase
		}
		if u.Slots != 3 || u.Base != wantBase {
			t.Errorf("mode %s: %+v, want 3 slots from %d", tc.mode, u, wantBase)
		}
	}
}
