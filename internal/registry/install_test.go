package registry

import (
	"context"
	"testing"
	"time"
)

func TestInstallIsIdempotent(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	in, err := Install(ctx, testCacheDir(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first Install: %v", time.Since(start))
	start = time.Now()
	in2, err := Install(ctx, in.CacheDir)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("second Install took %v; want it to skip npm", d)
	}
	if in2.Bin != in.Bin {
		t.Errorf("Bin changed between installs: %q vs %q", in.Bin, in2.Bin)
	}
}
