package coordinator_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

// Every lease a runner is given, with its claim and with each heartbeat,
// carries the coordinator's log cap, so the agent stops spooling where the
// store stops keeping; the store cuts at the cap with api.LogTruncatedMarker,
// the text the agent writes.
func TestLeasesCarryTheLogCap(t *testing.T) {
	for _, tc := range []struct {
		name           string
		maxLog, wanted int64
	}{
		{"max_log set", 64, 64},
		{"max_log unset", 0, api.DefaultLogLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkGoroutines(t)
			c := startCoord(t, func(cfg *coordinator.Config) { cfg.MaxLog = tc.maxLog })
			ctx := context.Background()
			r, _ := c.Register("r", nil)
			j := c.Submit(nil)
			cl, ok := claimOne(t, r, time.Second)
			if !ok || cl.Lease.LogLimit != tc.wanted {
				t.Fatalf("claimed lease = %+v (claimed: %v), want log_limit %d", cl.Lease, ok, tc.wanted)
			}
			hb, err := r.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: cl.Lease.Token})
			if err != nil || hb.Lease.LogLimit != tc.wanted {
				t.Fatalf("heartbeat lease = %+v (%v), want log_limit %d", hb.Lease, err, tc.wanted)
			}
			if tc.maxLog == 0 {
				return
			}
			out := strings.Repeat("x", int(tc.maxLog)+36)
			if _, err := r.AppendLog(ctx, j.ID, cl.Lease.Token, 0, []byte(out)); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			if _, err := c.AdminClient().ReadLog(ctx, j.ID, 0, false, &buf); err != nil {
				t.Fatal(err)
			}
			if want := out[:tc.maxLog] + api.LogTruncatedMarker(tc.maxLog); buf.String() != want {
				t.Fatalf("stored log = %q, want %q", buf.String(), want)
			}
		})
	}
}
