package main

import (
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// sandbox.userns maps onto one slot per concurrent job; off (or auto on a
// kernel without user namespaces) means none, and on always asks for them
// (sandbox.New then refuses to start without).
func TestUserNSConfigFollowsTheAgentConfig(t *testing.T) {
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
		u := userNSConfig(cfg, hclog.NewNullLogger())
		if (u != nil) != tc.want {
			t.Fatalf("mode %s: %+v, want user namespaces %v", tc.mode, u, tc.want)
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
