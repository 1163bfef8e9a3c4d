package gateway

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/registry"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// startVerdaccio starts a loopback Verdaccio seeded with the examples'
// packages, stopped when the test ends.
func startVerdaccio(t *testing.T) *registry.Registry {
	t.Helper()
	testutil.RequiresCommands(t, "node", "npm")
	ctx := context.Background()
	in, err := registry.Install(ctx, registry.CacheDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := registry.Start(ctx, registry.Options{Install: in})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("stopping verdaccio: %v", err)
		}
	})
	if err := r.SeedExamples(ctx, filepath.Join("..", "examples")); err != nil {
		t.Fatal(err)
	}
	return r
}

// lockfileEntries reads a v3 lockfile's tarball entries.
func lockfileEntries(t *testing.T, b []byte) []Entry {
	t.Helper()
	var lf struct {
		Packages map[string]struct {
			Name      string `json:"name"`
			Version   string `json:"version"`
			Resolved  string `json:"resolved"`
			Integrity string `json:"integrity"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(b, &lf); err != nil {
		t.Fatal(err)
	}
	var out []Entry
	for p, e := range lf.Packages {
		if p == "" {
			continue
		}
		name := e.Name
		if name == "" {
			name = p[strings.LastIndex(p, "node_modules/")+len("node_modules/"):]
		}
		out = append(out, Entry{Name: name, Version: e.Version, Resolved: e.Resolved, Integrity: e.Integrity})
	}
	return out
}

// TestNpmCIThroughGatewayFromVerdaccio installs the examples' lockfiles
// with the real npm through the gateway, which fetches from a real
// Verdaccio with the reader's token while npm holds no credential; npm's
// own registry commands are refused and audited.
func TestNpmCIThroughGatewayFromVerdaccio(t *testing.T) {
	r := startVerdaccio(t)
	ctx := context.Background()
	cache, err := OpenCache(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{
		Upstreams: []Upstream{{URL: r.URL, Token: r.ReaderToken}},
		Aliases:   []string{"registry.cleanroom.test", "registry.npmjs.org"},
		Cache:     cache,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		example      string
		stripResolve bool // npm then asks for (filtered) packuments
	}{
		{"hello", false},
		{"evil-postinstall", false},
		{"hello", true},
	} {
		dir := t.TempDir()
		for _, f := range []string{"package.json", "package-lock.json"} {
			b, err := os.ReadFile(filepath.Join("..", "examples", c.example, f))
			if err != nil {
				t.Fatal(err)
			}
			if f == "package-lock.json" && c.stripResolve {
				b = regexp.MustCompile(`(?m)^\s*"resolved": .*\n`).ReplaceAll(b, nil)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		lock, _ := os.ReadFile(filepath.Join(dir, "package-lock.json"))
		j := Job{Job: "job-" + c.example, Entries: lockfileEntries(t, lock)}
		if err := g.Check(ctx, j); err != nil {
			t.Fatalf("%s: Check: %v", c.example, err)
		}
		s, evs := serve(t, g, j)
		npmrc := "registry=" + s.URL() + "\nreplace-registry-host=always\n"
		if err := os.WriteFile(filepath.Join(dir, ".npmrc"), []byte(npmrc), 0o644); err != nil {
			t.Fatal(err)
		}
		npm := func(args ...string) ([]byte, error) {
			cmd := exec.Command("npm", append(args, "--cache", filepath.Join(dir, ".npm-cache"), "--no-audit", "--no-fund", "--ignore-scripts")...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "NO_COLOR=1", "npm_config_userconfig="+filepath.Join(dir, ".npmrc"))
			return cmd.CombinedOutput()
		}
		if out, err := npm("ci"); err != nil {
			t.Fatalf("%s: npm ci through the gateway: %v\n%s", c.example, err, out)
		}
		for _, e := range j.Entries {
			if _, err := os.Stat(filepath.Join(dir, "node_modules", e.Name, "package.json")); err != nil {
				t.Errorf("%s: %s not installed: %v", c.example, e.Name, err)
			}
		}
		if err := s.Failure(); err != nil {
			t.Errorf("%s: Failure: %v", c.example, err)
		}
		for _, e := range evs.all() {
			if e.Verdict != api.VerdictAllow {
				t.Errorf("%s: npm ci made a denied request: %+v", c.example, e)
			}
		}
		n := len(evs.all())
		for _, args := range [][]string{{"whoami"}, {"search", "picocolors"}, {"view", "left-pad"}} {
			if out, err := npm(args...); err == nil {
				t.Errorf("npm %s succeeded through the gateway:\n%s", args[0], out)
			}
		}
		denied := map[string]bool{}
		for _, e := range evs.all()[n:] {
			if e.Verdict == api.VerdictDeny {
				denied[e.Rule] = true
			}
		}
		if !denied[RuleRegistryAPI] || !denied[RuleNotInLockfile] {
			t.Errorf("%s: npm's registry commands were denied with rules %v", c.example, denied)
		}
		// With a token stolen elsewhere, npm sends the publish: refused at the gateway.
		pub := t.TempDir()
		if err := os.WriteFile(filepath.Join(pub, "package.json"), []byte(`{"name":"picocolors","version":"9.9.9"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		host := strings.TrimSuffix(strings.TrimPrefix(s.URL(), "http:"), "/")
		cmd := exec.Command("npm", "publish", "--registry", s.URL(), "--"+host+"/:_authToken=stolen", "--cache", filepath.Join(dir, ".npm-cache"))
		cmd.Dir = pub
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "npm_config_userconfig="+filepath.Join(dir, ".npmrc"))
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "403") {
			t.Errorf("%s: npm publish: %v\n%s", c.example, err, out)
		}
		if last := evs.last(t); last.Rule != RuleRegistryWrite || last.Method != "PUT" {
			t.Errorf("%s: publish event %+v", c.example, last)
		}
	}
}
