// Package version owns the build's identity: the version and commit that
// `make build` stamps into the binary with -ldflags -X (from git describe and
// git rev-parse), or, for a plain `go build`, what the Go toolchain recorded
// in the binary's build info. `cleanroom version` and the cleanroom_build_info
// metric (internal/metrics) read it from here.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set by the linker: go build -ldflags "-X <pkg>.version=v1.2.3 -X <pkg>.commit=abc…".
var (
	version string
	commit  string
)

// Info identifies a build.
type Info struct {
	// Version is `git describe --always --dirty` at build time, the module
	// version for `go install …@vX`, or "dev".
	Version string `json:"version"`
	// Commit is the full commit hash, "unknown" when nothing recorded it.
	// A "-dirty" suffix means the tree had uncommitted changes.
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// Get returns this binary's identity: the linker-stamped values, each
// falling back to the build info (vcs.revision, vcs.modified, the main
// module's version).
func Get() Info {
	return resolve(version, commit, debug.ReadBuildInfo)
}

// resolve is Get with its inputs injected (tests).
func resolve(v, c string, read func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: v, Commit: c, GoVersion: runtime.Version()}
	if i.Version == "" || i.Commit == "" {
		if bi, ok := read(); ok {
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			if i.Commit == "" && settings["vcs.revision"] != "" {
				i.Commit = settings["vcs.revision"]
				if settings["vcs.modified"] == "true" {
					i.Commit += "-dirty"
				}
			}
			if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				i.Version = bi.Main.Version
			}
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	return i
}

// String is the one line `cleanroom --version` prints.
func (i Info) String() string {
	return "cleanroom " + i.Version + " (commit " + i.Commit + ", " + i.GoVersion + ")"
}
