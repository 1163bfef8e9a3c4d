package gateway

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/cleanroom-ci/cleanroom/api"
)

// BenchmarkServeCached measures the gateway serving a cached (and on the
// way out re-verified) tarball to one client, in MB/s, next to reading the
// same file from disk (BenchmarkReadCachedFile): the cost of the gateway
// over a plain read.
func BenchmarkServeCached(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"64KiB", 64 << 10}, {"4MiB", 4 << 20}} {
		b.Run(size.name, func(b *testing.B) {
			pkg := newTarball(b, "pkg", "1.0.0", size.n)
			up := newFakeRegistry(b, "/", "", pkg)
			g := newGateway(b, Config{}, "", up)
			j := Job{Entries: []Entry{pkg.entry(up.URL())}, OnEvent: func(api.EgressEvent) {}}
			if err := g.Prefetch(context.Background(), j, nil); err != nil {
				b.Fatal(err)
			}
			s, _ := serve(b, g, j)
			u := s.URL() + "pkg/-/pkg-1.0.0.tgz"
			b.SetBytes(int64(size.n))
			b.ResetTimer()
			for b.Loop() {
				resp, err := http.Get(u)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if n != int64(size.n) {
					b.Fatalf("got %d bytes", n)
				}
			}
		})
	}
}

// BenchmarkReadCachedFile is the baseline: reading the cached file.
func BenchmarkReadCachedFile(b *testing.B) {
	for _, size := range []struct {
		name string
		n    int
	}{{"64KiB", 64 << 10}, {"4MiB", 4 << 20}} {
		b.Run(size.name, func(b *testing.B) {
			p := filepath.Join(b.TempDir(), "f")
			if err := os.WriteFile(p, randomBytes(b, size.n), 0o600); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size.n))
			for b.Loop() {
				f, err := os.Open(p)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, f)
				f.Close()
			}
		})
	}
}
