package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

// The registry gateway, end to end: a real sandbox, the real gateway in
// the agent, a real Verdaccio.

// gatewayProbe runs as a job's build step: it tries every registry request
// class on the gateway npm is configured with, the registry itself at L4,
// and searches the sandbox's readable filesystem and environment for the
// registry credential (given reversed, so the script itself does not hold
// it). It prints one line per attempt, never the credential.
const gatewayProbe = `
const fs = require('fs'), net = require('net'), http = require('http');
const reg = process.env.npm_config_registry;
const token = process.argv[2].split('').reverse().join('');
console.log('npmrc: ' + fs.readFileSync('/run/cleanroom/npmrc', 'utf8').replace(/\n/g, ' | '));
const req = (method, path, body) => new Promise(res => {
  const u = new URL(path, reg);
  const r = http.request(u, {method, headers: {'content-type': 'application/json'}}, rs => {
    let b = ''; rs.on('data', d => b += d); rs.on('end', () => res(rs.statusCode + ' ' + b.slice(0, 120).replace(/\n/g, ' ')));
  });
  r.on('error', e => res('error ' + e.code)); r.setTimeout(5000, () => r.destroy(new Error('timeout')));
  r.end(body);
});
const tcp = (host, port) => new Promise(res => {
  const s = net.connect({host, port, timeout: 3000}, () => { s.destroy(); res('connected'); });
  s.on('error', e => res('error ' + e.code)); s.on('timeout', () => { s.destroy(); res('timeout'); });
});
function search(dir, hits) {
  let ents; try { ents = fs.readdirSync(dir, {withFileTypes: true}); } catch { return; }
  for (const e of ents) {
    const p = dir + (dir.endsWith('/') ? '' : '/') + e.name;
    if (['/proc', '/sys', '/dev'].includes(p)) continue;
    if (e.isDirectory()) search(p, hits);
    else if (e.isFile()) { try { if (fs.readFileSync(p).includes(token)) hits.push(p); } catch {} }
  }
}
(async () => {
  for (const [what, m, p, b] of [
    ['adduser', 'PUT', '/-/user/org.couchdb.user:cleanroom-probe', '{"name":"cleanroom-probe","password":"x"}'],
    ['search', 'GET', '/-/v1/search?text=cleanroom-probe-search'],
    ['whoami', 'GET', '/-/whoami'],
    ['publish', 'PUT', '/cleanroom-probe-publish', '{"name":"cleanroom-probe-publish"}'],
    ['tarball-not-in-lockfile', 'GET', '/typescript/-/typescript-5.6.2.tgz'],
    ['packument-not-in-lockfile', 'GET', '/cleanroom-probe-packument'],
  ]) console.log('gateway ' + what + ': ' + await req(m, p, b));
  console.log('registry at L4: ' + await tcp('` + "10.231.254.2" + `', 4873));
  const hits = []; search('/', hits);
  const env = Object.entries(process.env).filter(([k, v]) => v.includes(token)).map(([k]) => k);
  console.log('credential found in files: ' + (hits.join(',') || 'none') + '; in env: ' + (env.join(',') || 'none'));
})();
`

func TestGatewayRefusesEveryRegistryRequestAndHoldsNoCredential(t *testing.T) {
	e := env(t)
	regToken := "npm_" + randHex(18)
	secretsYAML := fmt.Sprintf("secrets:\n  - name: REGISTRY_TOKEN\n    value: %q\n    scope: deploy\n", regToken)
	agentFor(t, e, "gw", harness.AgentOptions{Labels: "lane=gw", Secrets: secretsYAML, RegistryTokenSecret: "REGISTRY_TOKEN"})
	ctx := timeout(t, 4*time.Minute)

	dir := copyExample(t, "hello")
	if err := os.WriteFile(filepath.Join(dir, "probe.js"), []byte(gatewayProbe), 0o644); err != nil {
		t.Fatal(err)
	}
	reversed := []rune(regToken)
	for i, j := 0, len(reversed)-1; i < j; i, j = i+1, j-1 {
		reversed[i], reversed[j] = reversed[j], reversed[i]
	}
	editSpec(t, dir, func(s map[string]any) {
		s["labels"] = map[string]any{"lane": "gw"}
		s["build"] = "node probe.js " + string(reversed)
	})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: %s (%s); log:\n%s", id, j.State, j.Reason, log)
	}
	for _, want := range []string{
		"npmrc: registry=http://", "replace-registry-host=always",
		"gateway adduser: 403", "gateway search: 403", "gateway whoami: 403", "gateway publish: 403",
		"gateway tarball-not-in-lockfile: 403", "gateway packument-not-in-lockfile: 403",
		"credential found in files: none; in env: none",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "_auth") || strings.Contains(log, "registry at L4: connected") {
		t.Errorf("the sandbox holds a credential or reaches the registry:\n%s", log)
	}

	// Every refused request is an audited http event of the job, with its
	// rule; the registry's L4 attempt is a denied packet.
	_, evs := egress(ctx, t, e, "--job", id)
	refused := map[string]string{}
	for _, ev := range evs {
		if ev.Proto == "http" && ev.Verdict == api.VerdictDeny && ev.Status == 403 {
			refused[ev.Method+" "+ev.Path] = ev.Rule
		}
	}
	for req, rule := range map[string]string{
		"PUT /-/user/org.couchdb.user:cleanroom-probe": "registry-write",
		"PUT /cleanroom-probe-publish":                 "registry-write",
		"GET /typescript/-/typescript-5.6.2.tgz":       "not-in-lockfile",
		"GET /cleanroom-probe-packument":               "not-in-lockfile",
	} {
		if refused[req] != rule {
			t.Errorf("no denied event %s with rule %s; denied http events: %v", req, rule, refused)
		}
	}
	sawL4 := false
	for _, ev := range evs {
		sawL4 = sawL4 || (ev.Verdict == api.VerdictDeny && ev.Dst == fmt.Sprintf("%s:%d", lab.RegistryIP, lab.RegistryPort))
	}
	if !sawL4 {
		t.Errorf("the sandbox's connect to the registry was not a denied event: %v", evs)
	}
	// The registry never saw one of them.
	vb, err := os.ReadFile(e.Registry.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	vlog := string(vb)
	if !strings.Contains(vlog, "typescript") {
		t.Errorf("Verdaccio's log shows no request at all: the check below proves nothing:\n%s", vlog)
	}
	for _, s := range []string{"org.couchdb.user:cleanroom-probe", "cleanroom-probe-search", "cleanroom-probe-publish", "cleanroom-probe-packument", "typescript-5.6.2"} {
		if strings.Contains(vlog, s) {
			t.Errorf("Verdaccio's log shows %q: the request went past the gateway", s)
		}
	}
}

// The examples were published to the lab's registry seconds ago: a job
// with a cooldown of a day is refused before any sandbox exists, naming
// each package and the rule.
func TestGatewayMinReleaseAgeRefusesFreshVersions(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 3*time.Minute)
	watch := watchContainerd(ctx, t)
	dir := copyExample(t, "hello")
	editSpec(t, dir, func(s map[string]any) {
		s["labels"] = map[string]any{"lane": laneMain}
		s["min_release_age"] = "24h"
	})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 2*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || j.FailureClass != api.ClassRefused || !strings.Contains(j.Reason, "release-too-new") || !strings.Contains(j.Reason, "typescript@5.6.3") {
		t.Fatalf("job %s: %s %s (%s), want refused for release-too-new naming typescript@5.6.3; log:\n%s", id, j.State, j.FailureClass, j.Reason, log)
	}
	assertNoSandboxEver(ctx, t, e, id, log, watch)
}

// A lockfile resolving to the public registry builds unchanged: the alias
// makes the gateway fetch it from the lab's Verdaccio (the lab has no route
// out; nothing may reach the forbidden host).
func TestGatewayRegistryAliasBuildsAPublicLockfile(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)
	dir := copyExample(t, "hello")
	lock := filepath.Join(dir, "package-lock.json")
	b, err := os.ReadFile(lock)
	if err != nil {
		t.Fatal(err)
	}
	public := strings.ReplaceAll(string(b), harness.RegistryURL, "https://registry.npmjs.org/")
	if public == string(b) {
		t.Fatalf("the hello lockfile does not resolve to %s", harness.RegistryURL)
	}
	if err := os.WriteFile(lock, []byte(public), 0o644); err != nil {
		t.Fatal(err)
	}
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	before := len(e.Lab.ForbiddenPackets())
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: %s (%s); log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
	}
	if p := e.Lab.ForbiddenPackets(); len(p) != before {
		t.Errorf("the forbidden host received %d packet(s)", len(p)-before)
	}
}
