package netpolicy_test

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

// BenchmarkSetupTeardown measures a full sandbox network lifecycle in the lab
// (namespace, veth, v4+v6 rules in the sandbox and on the host, DNS
// responder, NFLOG and conntrack readers, then Close), reporting the median.
func BenchmarkSetupTeardown(b *testing.B) {
	l := newLab(b)
	rec := &recorder{}
	state := b.TempDir()
	var ds, rs []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cfg := labConfig(b, l, fmt.Sprintf("bench-%d", i), rec)
		cfg.StateDir, cfg.AuditLog = state, ""
		nw, err := netpolicy.Setup(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := nw.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		<-nw.Released()
		rs = append(rs, time.Since(start))
		if err := nw.ReleaseErr(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(median(ds), "ms-median")
	b.ReportMetric(median(rs), "ms-released-median")
}

// median in milliseconds.
func median(ds []time.Duration) float64 {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return float64(ds[len(ds)/2].Microseconds()) / 1000
}
