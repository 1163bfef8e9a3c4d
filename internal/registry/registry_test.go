package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// TestNpmCIAgainstLoopbackRegistry installs the committed example lockfiles
// from a seeded loopback Verdaccio, as a sandbox would from the lab's:
// hello is installed and built; evil-postinstall is installed with
// --ignore-scripts, because its postinstall must never run outside a lab
// namespace. Their resolved URLs name the lab registry, so npm is told to
// replace that host with the loopback one.
func TestNpmCIAgainstLoopbackRegistry(t *testing.T) {
	r := startSeeded(t)
	tmp := t.TempDir()
	npmrc := filepath.Join(tmp, "npmrc")
	if err := r.WriteNpmrc(npmrc, "", r.ReaderToken); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(tmp, "cache")
	ci := []string{"ci", "--userconfig", npmrc, "--cache", cache,
		"--replace-registry-host=registry.cleanroom.test:4873", "--no-audit", "--no-fund"}

	hello := filepath.Join(tmp, "hello")
	copyFiles(t, filepath.Join(examplesDir(t), "hello"), hello,
		"package.json", "package-lock.json", "tsconfig.json", "src/index.ts", "src/greet.ts")
	for _, run := range []string{"cold cache", "warm cache"} {
		if err := os.RemoveAll(filepath.Join(hello, "node_modules")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		npm(t, hello, ci...)
		t.Logf("npm ci of hello (%s): %v", run, time.Since(start).Round(time.Millisecond))
	}
	start := time.Now()
	npm(t, hello, "run", "build", "--userconfig", npmrc)
	t.Logf("npm run build of hello: %v", time.Since(start).Round(time.Millisecond))
	out, err := exec.Command("node", filepath.Join(hello, "dist", "index.js")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "built in a cleanroom") {
		t.Errorf("running the built hello: %v: %q", err, out)
	}

	evil := filepath.Join(tmp, "evil-postinstall")
	copyFiles(t, filepath.Join(examplesDir(t), "evil-postinstall"), evil, "package.json", "package-lock.json")
	npm(t, evil, append(ci, "--ignore-scripts")...)
	if _, err := os.Stat(filepath.Join(evil, "node_modules", "@cleanroom-demo", "telemetry-helper", "postinstall.js")); err != nil {
		t.Errorf("malicious package not installed: %v", err)
	}
}

// TestOnlyPublisherMayPublish checks the read-only user: it reads, but
// publishing with its token is refused, while the publisher's works.
func TestOnlyPublisherMayPublish(t *testing.T) {
	needNode(t)
	ctx := context.Background()
	r, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopAndCheck(t, r) })
	tbs, err := ExampleTarballs(examplesDir(t))
	if err != nil || len(tbs) == 0 {
		t.Fatalf("listing example tarballs: %v %v", tbs, err)
	}
	pub := r.PublisherToken
	r.PublisherToken = r.ReaderToken
	err = r.PublishFile(ctx, tbs[0])
	r.PublisherToken = pub
	if err == nil || !strings.Contains(err.Error(), "status 403") {
		t.Fatalf("publishing as %s: got %v, want status 403", ReaderUser, err)
	}
	if err := r.PublishFile(ctx, tbs[0]); err != nil {
		t.Fatalf("publishing as %s: %v", PublisherUser, err)
	}
	// Publishing the same version again is not an error (seeding is idempotent).
	if err := r.PublishFile(ctx, tbs[0]); err != nil {
		t.Fatalf("publishing again: %v", err)
	}
	tb, _ := readTarball(tbs[0])
	var doc struct {
		Versions map[string]struct {
			Dist struct {
				Integrity string `json:"integrity"`
			} `json:"dist"`
		} `json:"versions"`
	}
	getJSON(t, r.Client(), r.URL+strings.Replace(tb.name, "/", "%2f", 1), &doc)
	if got, want := doc.Versions[tb.version].Dist.Integrity, Integrity(tb.data); got != want {
		t.Errorf("served integrity %s, want the tarball's %s", got, want)
	}
}

// TestStartInNetNS runs Verdaccio inside a throw-away namespace that has
// only loopback, seeds it and reads from it through the harness client.
func TestStartInNetNS(t *testing.T) {
	testutil.RequiresRoot(t)
	needNode(t)
	ns := fmt.Sprintf("crreg-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	ctx := context.Background()
	r, err := Start(ctx, Options{NetNS: ns, Listen: "127.0.0.1:4873"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopAndCheck(t, r) })
	if err := r.Seed(ctx, []string{"is-number@7.0.0"}, nil); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		DistTags map[string]string `json:"dist-tags"`
	}
	getJSON(t, r.Client(), r.URL+"is-number", &doc)
	if doc.DistTags["latest"] != "7.0.0" {
		t.Errorf("dist-tags %v, want latest 7.0.0", doc.DistTags)
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		spec, name, version string
		ok                  bool
	}{
		{"is-number@7.0.0", "is-number", "7.0.0", true},
		{"@cleanroom-demo/telemetry-helper@1.0.0", "@cleanroom-demo/telemetry-helper", "1.0.0", true},
		{"typescript@5.7.0-beta", "typescript", "5.7.0-beta", true},
		{"is-number@^7.0.0", "", "", false},
		{"is-number@latest", "", "", false},
		{"is-number", "", "", false},
		{"@scope/pkg", "", "", false},
	} {
		name, version, err := ParseSpec(tc.spec)
		if (err == nil) != tc.ok || name != tc.name || version != tc.version {
			t.Errorf("ParseSpec(%q) = %q, %q, %v; want %q, %q, ok=%v", tc.spec, name, version, err, tc.name, tc.version, tc.ok)
		}
	}
	if got := PackFileName("@cleanroom-demo/telemetry-helper", "1.0.0"); got != "cleanroom-demo-telemetry-helper-1.0.0.tgz" {
		t.Errorf("PackFileName of a scoped package = %q", got)
	}
}

func getJSON(t *testing.T, c *http.Client, url string, v any) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// Pack fetches nothing and says nothing when every tarball is cached, and
// returns the cached paths in spec order.
func TestPackFromTheCacheIsQuiet(t *testing.T) {
	needNode(t)
	specs, err := ExamplePackages(examplesDir(t))
	if err != nil {
		t.Fatal(err)
	}
	cache := testCacheDir(t)
	if _, err := Pack(t.Context(), cache, specs, nil); err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	paths, err := Pack(t.Context(), cache, specs, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if progress.Len() != 0 {
		t.Errorf("Pack of cached tarballs reported progress: %q", progress.String())
	}
	for i, s := range specs {
		name, version, _ := ParseSpec(s)
		if want := filepath.Join(cache, "tarballs", PackFileName(name, version)); paths[i] != want {
			t.Errorf("path %d = %s, want %s", i, paths[i], want)
		}
	}
}
