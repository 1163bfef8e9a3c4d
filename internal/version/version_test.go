package version

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestResolvePrefersLinkerValuesAndFallsBackToBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.modified", Value: "true"},
	}}
	read := func() (*debug.BuildInfo, bool) { return bi, true }
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	tests := []struct {
		name, v, c string
		read       func() (*debug.BuildInfo, bool)
		want       Info
	}{
		{"stamped", "v1.2.3-4-gabc", "abc123", read, Info{"v1.2.3-4-gabc", "abc123", ""}},
		{"build info", "", "", read, Info{"dev", "0123456789abcdef0123456789abcdef01234567-dirty", ""}},
		{"nothing", "", "", none, Info{"dev", "unknown", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := resolve(tc.v, tc.c, tc.read)
			tc.want.GoVersion = runtime.Version()
			if got != tc.want {
				t.Fatalf("resolve = %+v, want %+v", got, tc.want)
			}
		})
	}
}
