package supplychain

import (
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. The benchmark reports it
// per op next to wall time because the build machines are shared and busy.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// genLockfile builds a lockfile of n packages: three quarters hoisted (a
// fifth of them scoped), the rest nested copies at another version, each
// package depending on three others.
func genLockfile(b testing.TB, n int) []byte {
	b.Helper()
	top := n * 3 / 4
	name := func(i int) string {
		if i%5 == 0 {
			return fmt.Sprintf("@scope%d/pkg-%d", i%7, i)
		}
		return fmt.Sprintf("pkg-%d", i)
	}
	entries := make(map[string]map[string]any, n)
	rootDeps := map[string]any{}
	for i := 0; i < top; i++ {
		deps := map[string]any{}
		for _, j := range []int{(i*7 + 1) % top, (i*13 + 2) % top, (i*31 + 3) % top} {
			deps[name(j)] = "^1.0.0"
		}
		entries["node_modules/"+name(i)] = with(regEntry(name(i), "1.0.0"), "dependencies", deps, "license", "MIT")
		if i%10 == 0 {
			rootDeps[name(i)] = "^1.0.0"
		}
	}
	for k := 0; k < n-top; k++ {
		parent, child := name(k), name((k*17+5)%top)
		entries["node_modules/"+parent+"/node_modules/"+child] = regEntry(child, "2.0.0")
	}
	entries["node_modules/pkg-1"]["hasInstallScript"] = true
	lock := lockJSON(b, 3, entries)
	return lock
}

// BenchmarkGateAndSBOM2000 measures the host-side work of a job before and
// after the sandbox: the lockfile gate and the SBOM of a 2,000-package
// lockfile (target: under 50 ms per iteration).
func BenchmarkGateAndSBOM2000(b *testing.B) {
	dir := b.TempDir()
	writeProject(b, dir, PackageLockFile, genLockfile(b, 2000))
	policy := LockPolicy{Registries: []string{testRegistry}}
	lf, err := CheckLockfile(dir, policy)
	if err != nil {
		b.Fatal(err)
	}
	if len(lf.Packages) != 2000 {
		b.Fatalf("generated %d packages, want 2000", len(lf.Packages))
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime(b)
	for b.Loop() {
		lf, err := CheckLockfile(dir, policy)
		if err != nil {
			b.Fatal(err)
		}
		if err := SBOM(dir, lf, io.Discard); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}
