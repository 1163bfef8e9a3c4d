package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// TestLabIsReachableInsideAndRecordsArrivals proves the lab can fail an
// egress test: traffic from the lab host does reach the forbidden host and
// is recorded, and nothing of the lab is left in the root namespace.
func TestLabIsReachableInsideAndRecordsArrivals(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	before, err := SnapshotRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(ctx, "self")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.ListenTCP(l.RegistryNS, "10.231.254.2:4873"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, ns string
		argv     []string
		recorded string
	}{
		{"host to forbidden tcp", l.HostNS, []string{"bash", "-c", "exec 3<>/dev/tcp/10.231.253.2/80 && head -c5 <&3"}, "tcp"},
		{"host to metadata", l.HostNS, []string{"bash", "-c", "exec 3<>/dev/tcp/169.254.169.254/443 && head -c5 <&3"}, "169.254.169.254:443"},
		{"host to forbidden ipv6", l.HostNS, []string{"bash", "-c", "exec 3<>/dev/tcp/fd00:bad::2/4873 && head -c5 <&3"}, "[fd00:bad::2]:4873"},
		{"host to public resolver udp", l.HostNS, []string{"bash", "-c", "echo x >/dev/udp/198.51.100.53/53"}, "198.51.100.53:53"},
		{"host to registry", l.HostNS, []string{"bash", "-c", "exec 3<>/dev/tcp/10.231.254.2/4873 && head -c5 <&3"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l.ResetForbiddenPackets()
			if out, err := l.Exec(ctx, tc.ns, tc.argv...); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if tc.recorded == "" {
				return
			}
			deadline := time.Now().Add(2 * time.Second)
			for time.Now().Before(deadline) {
				for _, p := range l.ForbiddenPackets() {
					if strings.Contains(p.String(), tc.recorded) {
						return
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Fatalf("recorder missed %s: %v", tc.recorded, l.ForbiddenPackets())
		})
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left := OurNamespaces(Prefix + l.ID); len(left) > 0 {
		t.Fatalf("namespaces left: %v", left)
	}
	after, err := SnapshotRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(after); d != "" {
		t.Fatal(d)
	}
}
