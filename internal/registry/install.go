package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// VerdaccioVersion is the Verdaccio release the harness installs: 6.9 and
// later need Node 22 on the host, and the build hosts run Node 20.
const VerdaccioVersion = "6.8.0"

// DefaultCacheDir holds the Verdaccio install and the fetched tarballs between
// runs, so only the first test run or demo on a machine pays for downloads.
const DefaultCacheDir = "/var/cache/cleanroom"

// CacheDir returns $CLEANROOM_CACHE when set, else DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv("CLEANROOM_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Installation is a Verdaccio installed under a cache folder. It is the
// result of Install and the starting point of Start.
type Installation struct {
	// CacheDir is the cache root: Verdaccio lives in CacheDir/verdaccio,
	// packed tarballs in CacheDir/tarballs.
	CacheDir string
	// Dir is CacheDir/verdaccio, the npm project Verdaccio is installed in.
	Dir string
	// Node is the host's node binary that runs Verdaccio.
	Node string
	// Bin is Verdaccio's entry script.
	Bin string
}

// installManifest is the package.json of the install folder. The override
// pins node-fetch for verdaccio-audit: newer node-fetch releases pulled in by
// default break Verdaccio 6.8 on Node 20.
func installManifest() []byte {
	m := map[string]any{
		"name":         "cleanroom-verdaccio",
		"private":      true,
		"dependencies": map[string]string{"verdaccio": VerdaccioVersion},
		"overrides": map[string]any{
			"verdaccio-audit": map[string]string{"node-fetch": "2.7.0"},
		},
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// Install installs Verdaccio with npm into cacheDir/verdaccio (cacheDir ""
// means CacheDir()). It is idempotent: when the folder already holds a
// complete install of VerdaccioVersion it returns without running npm. An
// exclusive lock on the folder lets parallel test binaries share one cache.
func Install(ctx context.Context, cacheDir string) (*Installation, error) {
	if cacheDir == "" {
		cacheDir = CacheDir()
	}
	node, err := exec.LookPath("node")
	if err != nil {
		return nil, fmt.Errorf("finding node on the host: %w", err)
	}
	dir := filepath.Join(cacheDir, "verdaccio")
	in := &Installation{
		CacheDir: cacheDir,
		Dir:      dir,
		Node:     node,
		Bin:      filepath.Join(dir, "node_modules", "verdaccio", "bin", "verdaccio"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating install folder: %w", err)
	}
	unlock, err := lockFile(filepath.Join(cacheDir, "verdaccio.lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()

	manifest := installManifest()
	stamp := filepath.Join(dir, ".cleanroom-installed")
	if stamped(stamp, manifest) && in.installed() {
		return in, nil
	}
	_ = os.Remove(stamp)
	if err := os.WriteFile(filepath.Join(dir, "package.json"), manifest, 0o644); err != nil {
		return nil, fmt.Errorf("writing install package.json: %w", err)
	}
	npmrc, err := writeNpmrc(cacheDir, "install.npmrc", publicRegistry)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "npm", "install",
		"--userconfig", npmrc,
		"--cache", filepath.Join(cacheDir, "npm-cache"),
		"--no-audit", "--no-fund", "--omit=dev", "--loglevel=error")
	cmd.Dir = dir
	cmd.Env = npmEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("installing verdaccio %s: %w\n%s", VerdaccioVersion, err, tail(out, 4000))
	}
	if !in.installed() {
		return nil, fmt.Errorf("checking verdaccio install in %s: version %s not found after npm install", dir, VerdaccioVersion)
	}
	if err := os.WriteFile(stamp, manifest, 0o644); err != nil {
		return nil, fmt.Errorf("writing install stamp: %w", err)
	}
	return in, nil
}

// stamped reports whether a previous install with this manifest completed:
// the stamp is written only after npm install succeeded.
func stamped(stamp string, manifest []byte) bool {
	got, err := os.ReadFile(stamp)
	return err == nil && bytes.Equal(got, manifest)
}

// installed reports whether Verdaccio is present at VerdaccioVersion.
func (in *Installation) installed() bool {
	b, err := os.ReadFile(filepath.Join(in.Dir, "node_modules", "verdaccio", "package.json"))
	if err != nil {
		return false
	}
	var pj struct {
		Version string `json:"version"`
	}
	if json.Unmarshal(b, &pj) != nil || pj.Version != VerdaccioVersion {
		return false
	}
	_, err = os.Stat(in.Bin)
	return err == nil
}

// lockFile takes an exclusive flock on path and returns its release.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

const publicRegistry = "https://registry.npmjs.org/"

// writeNpmrc writes a dedicated npm user config under cacheDir, so nothing
// the harness runs depends on the machine's own ~/.npmrc.
func writeNpmrc(cacheDir, name, registryURL string) (string, error) {
	p := filepath.Join(cacheDir, name)
	content := "registry=" + registryURL + "\nfund=false\naudit=false\nupdate-notifier=false\n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		return "", fmt.Errorf("writing npmrc %s: %w", p, err)
	}
	return p, nil
}

// npmEnv is the environment for npm children: the host's, minus npm_config_*
// variables that would override the dedicated userconfig.
func npmEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if len(kv) >= 11 && (kv[:11] == "npm_config_" || kv[:11] == "NPM_CONFIG_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// tail returns at most the last n bytes of b.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
