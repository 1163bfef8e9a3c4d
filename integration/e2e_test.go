package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/snapshots"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/internal/tarball"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// Values a build must never see or leak, fresh for every run so that no
// expected output can be baked in. The build secret contains characters that
// URL-encoding changes, so the encoded checks differ from the raw one.
var (
	runTag          = randHex(3)
	deploySecret    = "dpl_live_" + randHex(12)
	buildSecret     = "npm_rd/" + randHex(10) + "+e2e=" + randHex(4)
	fakeRunnerToken = "crr_" + randHex(6) + "." + randHex(20)
	webSecret       = "web_" + randHex(12)
)

// Lanes route jobs to agents: each agent has the label lane=<lane>, each
// job spec the same label, and a job only goes to a runner whose labels
// include all of the job's.
const (
	laneMain  = "main"
	laneKill  = "kill"
	laneLease = "lease"
	lanePair  = "pair"
)

// suite is the state shared by the tests of one test binary run: the
// cleanroom binary, one harness environment (started by the first test that
// needs it, closed by the residue test or TestMain), its agents, and every
// job submitted, so the residue check can attribute what it finds.
var suite struct {
	bin      string
	binDir   string
	repo     string
	buildErr error
	before   *lab.RootState

	mu          sync.Mutex
	started     bool
	env         *harness.Env
	envErr      error
	fbdBase     int // forbidden-host packets recorded before any job
	agents      map[string]*harness.Agent
	agentNames  []string
	jobs        []string
	residueDone bool
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every test calls testutil.RequiresRoot: it skips with a reason,
		// or fails under CI=true.
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	st, err := lab.SnapshotRoot(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: snapshotting the root namespace: %v\n", err)
		return 1
	}
	suite.before = &st
	repo, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	suite.repo = repo
	tmp, err := os.MkdirTemp("", "cleanroom-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	suite.binDir = tmp

	code := m.Run()

	suite.mu.Lock()
	done := suite.residueDone
	suite.mu.Unlock()
	if !done {
		// The residue test was filtered out: check here, so a run of a
		// single scenario still proves it left nothing behind.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if problems := closeAndCheckResidue(ctx, nil); len(problems) > 0 {
			fmt.Fprintf(os.Stderr, "--- FAIL: residue after the end-to-end tests:\n  %s\n", strings.Join(problems, "\n  "))
			code = 1
		}
	}
	return code
}

// env returns the shared environment, starting it on first use.
func env(t *testing.T) *harness.Env {
	t.Helper()
	testutil.RequiresRoot(t)
	addr := testutil.ContainerdAddress(t)
	suite.mu.Lock()
	defer suite.mu.Unlock()
	if suite.bin == "" && suite.buildErr == nil {
		suite.bin, suite.buildErr = buildBinary()
	}
	if suite.buildErr != nil {
		t.Fatal(suite.buildErr)
	}
	if suite.residueDone {
		t.Fatal("the shared environment was already closed by the residue check")
	}
	if !suite.started {
		suite.started = true
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		var progress io.Writer
		if testing.Verbose() {
			progress = os.Stderr
		}
		start := time.Now()
		pg, err := suiteStore()
		if err != nil {
			suite.envErr = err
			t.Fatal(err)
		}
		suite.env, suite.envErr = harness.Start(ctx, harness.Options{
			Bin: suite.bin, Repo: suite.repo, Containerd: addr, Name: "e2e", Progress: progress, Postgres: pg,
			Secrets: fmt.Sprintf("secrets:\n  - name: NPM_READ_TOKEN\n    value: %q\n    scope: build\n"+
				"  - name: DEPLOY_TOKEN\n    value: %q\n    scope: deploy\n"+
				"  - name: WEB_TOKEN\n    value: %q\n    scope: build\n    teams: [web]\n", buildSecret, deploySecret, webSecret),
			// The agent's own environment holds a deploy secret and a
			// runner-token-looking value: a build must never see either.
			AgentEnv: []string{"DEPLOY_TOKEN=" + deploySecret, "CLEANROOM_RUNNER_TOKEN=" + fakeRunnerToken},
			// Short leases, so a killed agent's job is re-queued in seconds.
			LeaseTTL: 5 * time.Second,
		})
		if suite.envErr == nil {
			suite.fbdBase = len(suite.env.Lab.ForbiddenPackets())
			t.Logf("environment up in %.1fs (lab %s, %s, %d coordinator(s) on %s)", time.Since(start).Seconds(), suite.env.Lab.ID, suite.env.Dir,
				len(suite.env.URLs), suite.env.Store)
		}
	}
	if suite.envErr != nil {
		t.Fatalf("starting the end-to-end environment: %v", suite.envErr)
	}
	return suite.env
}

// storeEnv picks the suite's store: "sqlite" runs it on one coordinator
// over SQLite (the README quickstart and make demo always do); otherwise it
// runs on two coordinators over PostgreSQL ($CLEANROOM_TEST_POSTGRES).
const storeEnv = "CLEANROOM_E2E_STORE"

// suiteStore returns the PostgreSQL server DSN the suite's coordinators
// use, or "" for SQLite: when $CLEANROOM_E2E_STORE is sqlite, or when
// $CLEANROOM_TEST_POSTGRES is unset outside CI. In CI (CI=true) a missing
// server is an error: CI runs the suite on PostgreSQL.
func suiteStore() (string, error) {
	switch os.Getenv(storeEnv) {
	case "sqlite":
		return "", nil
	case "", "postgres":
	default:
		return "", fmt.Errorf("%s=%q: want sqlite or postgres", storeEnv, os.Getenv(storeEnv))
	}
	dsn := os.Getenv(pgtest.EnvDSN)
	if dsn == "" && (os.Getenv("CI") == "true" || os.Getenv(storeEnv) == "postgres") {
		return "", fmt.Errorf("%s is not set: the end-to-end suite runs on PostgreSQL with two coordinators in CI (scripts/test.sh starts scripts/postgres.sh; %s=sqlite picks SQLite)", pgtest.EnvDSN, storeEnv)
	}
	return dsn, nil
}

// buildBinary returns $CLEANROOM_BIN, or builds cmd/cleanroom from this
// checkout once per test binary run.
func buildBinary() (string, error) {
	if bin := os.Getenv("CLEANROOM_BIN"); bin != "" {
		return filepath.Abs(bin)
	}
	bin := filepath.Join(suite.binDir, "cleanroom")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/cleanroom")
	cmd.Dir = suite.repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building cleanroom: %w\n%s", err, out)
	}
	return bin, nil
}

// agentFor returns the agent called name, registering and starting it on
// first use. Names carry the run tag: sandbox GC is scoped by agent name.
func agentFor(t *testing.T, e *harness.Env, name string, o harness.AgentOptions) *harness.Agent {
	t.Helper()
	suite.mu.Lock()
	defer suite.mu.Unlock()
	if a, ok := suite.agents[name]; ok {
		return a
	}
	o.Name = "e2e-" + runTag + "-" + name
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	a, err := e.AddAgent(ctx, o)
	if err != nil {
		t.Fatalf("starting agent %s: %v", o.Name, err)
	}
	if suite.agents == nil {
		suite.agents = map[string]*harness.Agent{}
	}
	suite.agents[name] = a
	suite.agentNames = append(suite.agentNames, o.Name)
	return a
}

// ---- the scenarios ---------------------------------------------------------

// A clean build produces its artifacts, an SBOM and signed provenance that
// `cleanroom verify` accepts — and rejects once one byte of an artifact
// changes.
func TestHelloBuildsWithVerifiableProvenance(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)

	watch := watchContainerd(ctx, t)
	dir := copyExample(t, "hello")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: state %s (%s), want succeeded; log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
	}
	// The containerd watch that proves "no sandbox" for refused jobs does
	// see this job's sandbox.
	if !slices.ContainsFunc(watch(), func(ev string) bool {
		return strings.HasPrefix(ev, "/containers/create ") && strings.Contains(ev, sandbox.ContainerID(id))
	}) {
		t.Errorf("containerd reported no /containers/create for %s", sandbox.ContainerID(id))
	}
	if j.RunnerID != a.RunnerID() {
		t.Errorf("job ran on runner %s, want %s (labels route it)", j.RunnerID, a.RunnerID())
	}
	assertSandboxGone(ctx, t, e, id)

	out := filepath.Join(t.TempDir(), "artifacts")
	cli(ctx, t, e, "artifacts", id, "-o", out)
	files := listFiles(t, out)
	for _, want := range []string{"dist/index.js", "sbom.cdx.json", "provenance.intoto.jsonl"} {
		if !slices.Contains(files, want) {
			t.Fatalf("downloaded artifacts %v lack %s", files, want)
		}
	}
	var subjects []string
	for _, f := range files {
		if f != "provenance.intoto.jsonl" {
			subjects = append(subjects, filepath.Join(out, f))
		}
	}
	prov := filepath.Join(out, "provenance.intoto.jsonl")
	pub := filepath.Join(filepath.Dir(a.Config), "agent.pub")
	verify := func(extra ...string) (string, int) {
		args := append(append([]string{"verify"}, subjects...), "--provenance", prov, "--key", pub)
		stdout, stderr, code := e.CLI(ctx, append(args, extra...)...)
		return stdout + stderr, code
	}
	if msg, code := verify("--source", j.Source.SHA256, "--builder", e.AgentURLs[0]+"/runners/"+a.RunnerID()); code != 0 {
		t.Fatalf("verify of the untouched artifacts failed (exit %d): %s", code, msg)
	}

	// One byte of one artifact changes: verification must fail, naming it.
	art := filepath.Join(out, "dist", "index.js")
	b, err := os.ReadFile(art)
	if err != nil || len(b) == 0 {
		t.Fatalf("reading %s: %v (%d bytes)", art, err, len(b))
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(art, b, 0o644); err != nil {
		t.Fatal(err)
	}
	msg, code := verify()
	if code == 0 {
		t.Fatalf("verify passed after one byte of dist/index.js changed: %s", msg)
	}
	if !strings.Contains(msg, "index.js") {
		t.Errorf("verify failed but does not name the changed artifact: %s", msg)
	}
}

// A dependency's postinstall tries every exfiltration channel, the
// registry's included: each attempt is denied and audited under the right
// job (the only allowed traffic is the job's registry gateway, which
// refuses every registry request but the lockfile's tarballs), nothing
// reaches the forbidden host or the registry itself, and no secret — deploy secret, runner token, or the granted build
// secret in any encoding — appears in the log or the audit trail. The
// coordinator's /metrics, scraped before and after, counts the job and
// every denied attempt by rule, with no job or runner id in any label.
func TestEvilPostinstallIsContainedAndAudited(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)
	metricsURL := forward(t, e)

	dir := copyExample(t, "evil-postinstall")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	fbd := len(e.Lab.ForbiddenPackets())
	before, _ := scrape(t, metricsURL)
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded {
		// The malware swallows every error and exits 0: the build itself
		// succeeds unless something in the product broke.
		t.Errorf("job %s: state %s (%s), want succeeded; log:\n%s", id, j.State, j.Reason, log)
	}
	if !strings.Contains(log, "[telemetry-helper] postinstall done") {
		t.Fatalf("the malicious postinstall did not run to its end; log:\n%s", log)
	}
	assertSandboxGone(ctx, t, e, id)

	rawEvents, events := egress(ctx, t, e, "--job", id)
	for _, ev := range events {
		if ev.Job != id || ev.Runner != a.RunnerID() || !strings.HasPrefix(ev.Sandbox, "cr-"+id+"-") {
			t.Errorf("event attributed to job %q runner %q sandbox %q, want %s, %s, cr-%s-<attempt>: %+v", ev.Job, ev.Runner, ev.Sandbox, id, a.RunnerID(), id, ev)
		}
		if ev.Verdict == api.VerdictAllow && !gatewayFlow(ev) {
			t.Errorf("allowed egress to something other than the job's registry gateway: %+v", ev)
		}
	}
	wants := []struct {
		what  string
		match func(api.EgressEvent) bool
	}{
		{"dns query for *.exfil.example", func(ev api.EgressEvent) bool {
			return ev.Proto == "dns" && strings.HasSuffix(strings.TrimSuffix(ev.Domain, "."), ".exfil.example")
		}},
		{"tcp 10.231.253.2:80 (HTTP POST)", dst("tcp", "10.231.253.2:80")},
		{"tcp 10.231.253.2:4444", dst("tcp", "10.231.253.2:4444")},
		{"udp 10.231.253.2:5353", dst("udp", "10.231.253.2:5353")},
		{"udp 198.51.100.53:53 (public resolver)", dst("udp", "198.51.100.53:53")},
		{"tcp 169.254.169.254:80 rule metadata-deny", func(ev api.EgressEvent) bool {
			return dst("tcp", "169.254.169.254:80")(ev) && ev.Rule == "metadata-deny"
		}},
		{"tcp [fd00:bad::2]:443", dst("tcp", "[fd00:bad::2]:443")},
		// The registry itself: its name is no longer answered, its
		// address no longer reachable (only the gateway is).
		{"dns query for the registry's name", func(ev api.EgressEvent) bool {
			return ev.Proto == "dns" && strings.TrimSuffix(ev.Domain, ".") == lab.RegistryName
		}},
		{"tcp 10.231.254.2:4873 (the registry by address)", dst("tcp", fmt.Sprintf("%s:%d", lab.RegistryIP, lab.RegistryPort))},
		{"icmp 10.231.253.2", func(ev api.EgressEvent) bool {
			return ev.Proto == "icmp" && strings.TrimSuffix(ev.Dst, ":0") == "10.231.253.2"
		}},
	}
	for _, w := range wants {
		found := false
		for _, ev := range events {
			if ev.Verdict == api.VerdictDeny && ev.Job == id && w.match(ev) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("no denied egress event for %s in `egress --job %s --json`:\n%s", w.what, id, rawEvents)
		}
	}
	if p := e.Lab.ForbiddenPackets()[fbd:]; len(p) > 0 {
		t.Errorf("the forbidden host received %d packet(s): %v", len(p), p)
	}
	// The registry channel, tried on the registry the malware found in its
	// environment and npmrc (the job's gateway): each request refused with
	// a 403 naming the rule, in the log and as an audited http event; the
	// npmrc held no credential.
	for _, r := range []struct{ log, method, path, rule string }{
		{"registry adduser: PUT /-/user/org.couchdb.user:telemetry-", "PUT", "/-/user/org.couchdb.user:telemetry-", "registry-write"},
		{"registry publish: PUT /@cleanroom-demo%2ftelemetry-helper", "PUT", "/@cleanroom-demo/telemetry-helper", "registry-write"},
		{"registry search: GET /-/v1/search?text=", "GET", "/-/v1/search", "registry-api"},
		{"registry tarball not in the lockfile: GET /typescript/-/typescript-5.6.3.tgz", "GET", "/typescript/-/typescript-5.6.3.tgz", "not-in-lockfile"},
		{"registry packument of another name: GET /typescript", "GET", "/typescript", "not-in-lockfile"},
	} {
		if !logLineWith(log, "[telemetry-helper] "+r.log, "refused: HTTP 403 (rule "+r.rule+")") {
			t.Errorf("the log does not show %q refused with a 403 naming rule %s; log:\n%s", r.log, r.rule, log)
		}
		if !slices.ContainsFunc(events, func(ev api.EgressEvent) bool {
			return ev.Proto == "http" && ev.Verdict == api.VerdictDeny && ev.Status == 403 && ev.Rule == r.rule &&
				ev.Method == r.method && (ev.Path == r.path || strings.HasPrefix(ev.Path, r.path) && r.path != "/typescript")
		}) {
			t.Errorf("no denied http event %s %s… with rule %s in `egress --job %s --json`:\n%s", r.method, r.path, r.rule, id, rawEvents)
		}
	}
	if !strings.Contains(log, "[telemetry-helper] registry: /run/cleanroom/npmrc names http://") || !strings.Contains(log, ", 0 credential line(s)") {
		t.Errorf("the log does not show the malware reading an npmrc that names the gateway and holds no credential; log:\n%s", log)
	}
	checkMetricsMoved(t, before, metricsURL, events, id, a.RunnerID())

	// Secrets: none may appear, in any encoding, in the log, the events
	// the coordinator serves, or the agent's own audit file.
	audit, err := os.ReadFile(filepath.Join(a.DataDir(), "egress.jsonl"))
	if err != nil {
		t.Errorf("reading the agent's audit log: %v", err)
	}
	runnerToken := configRunnerToken(t, a)
	texts := map[string]string{"job log": log, "egress events": rawEvents, "agent egress.jsonl": string(audit)}
	for name, value := range map[string]string{
		"deploy secret (agent env)":      deploySecret,
		"runner-token-like value (env)":  fakeRunnerToken,
		"runner token (agent config)":    runnerToken,
		"granted build secret (NPM_...)": buildSecret,
	} {
		for where, text := range texts {
			if form, ok := leaks(text, value); ok {
				t.Errorf("the %s appears in the %s (%s)", name, where, form)
			}
		}
	}
	if key, err := os.ReadFile(filepath.Join(filepath.Dir(a.Config), "agent.key")); err == nil {
		for _, line := range strings.Split(string(key), "\n") {
			if len(line) >= 16 && !strings.HasPrefix(line, "-----") && strings.Contains(log+rawEvents, line) {
				t.Errorf("the agent's signing key appears in the log or events")
			}
		}
	}
	// The malware did print the granted secret: it must show as the marker.
	if !strings.Contains(log, "env: NPM_READ_TOKEN="+"[REDACTED]") {
		t.Errorf("the log does not show the granted secret as [REDACTED] where the malware printed it; log:\n%s", log)
	}
}

// checkMetricsMoved scrapes /metrics after a job has ended and compares it
// with before: the job was claimed and counted as succeeded, each of its
// stored events was counted under its verdict and rule (at least once: a
// batch posted twice is counted twice), and no label names the job or the
// runner.
func checkMetricsMoved(t *testing.T, before map[string]float64, base string, events []api.EgressEvent, jobID, runnerID string) {
	t.Helper()
	after, raw := scrape(t, base)
	moved := func(series string, atLeast float64) {
		t.Helper()
		if _, ok := after[series]; !ok {
			t.Errorf("/metrics has no series %s", series)
			return
		}
		if d := after[series] - before[series]; d < atLeast {
			t.Errorf("%s moved by %v during the job, want at least %v", series, d, atLeast)
		}
	}
	moved(`cleanroom_jobs{state="succeeded"}`, 1)
	moved(`cleanroom_claim_duration_seconds_count{outcome="job"}`, 1)
	moved(`cleanroom_queue_wait_seconds_count`, 1)
	byRule := map[[2]string]float64{}
	for _, ev := range events {
		byRule[[2]string{ev.Verdict, ev.Rule}]++
	}
	for _, rule := range []string{"default-deny", "metadata-deny", "dns-refused"} {
		if byRule[[2]string{api.VerdictDeny, rule}] == 0 {
			t.Errorf("the job has no denied event with rule %s", rule)
		}
	}
	for vr, n := range byRule {
		moved(fmt.Sprintf(`cleanroom_egress_events_total{rule=%q,verdict=%q}`, vr[1], vr[0]), n)
	}
	// Ids are unbounded: as label values they would grow the series
	// without limit (Prometheus naming conventions).
	for _, id := range []string{jobID, runnerID} {
		if strings.Contains(raw, id) {
			t.Errorf("/metrics names %s in a label", id)
		}
	}
}

// The install-script policy in a real sandbox: the same malicious
// dependency, not on the job's allow-list, has its postinstall skipped (the
// log names it), so none of its output or egress attempts happen, and the
// build itself still succeeds.
func TestInstallScriptNotAllowedDoesNotRun(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 3*time.Minute)

	dir := copyExample(t, "evil-postinstall")
	editSpec(t, dir, func(s map[string]any) {
		s["labels"] = map[string]any{"lane": laneMain}
		delete(s, "install_scripts")
	})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 2*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: state %s, reason %q; want succeeded; log:\n%s", id, j.State, j.Reason, log)
	}
	if !strings.Contains(log, "install scripts of @cleanroom-demo/telemetry-helper@1.0.0 NOT run") {
		t.Errorf("the log does not report the skipped install script; log:\n%s", log)
	}
	if strings.Contains(log, "[telemetry-helper]") || strings.Contains(log, "npm rebuild") {
		t.Errorf("the not-allowed postinstall ran; log:\n%s", log)
	}
	if _, denied := egress(ctx, t, e, "--job", id, "--denied"); len(denied) > 0 {
		t.Errorf("%d denied egress attempts from a job whose malicious script must not have run: %+v", len(denied), denied)
	}
	assertSandboxGone(ctx, t, e, id)
}

// A job that asks for a deploy-scope secret is refused before any sandbox
// (or network) exists.
func TestDeploySecretRefusedBeforeSandbox(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)
	watch := watchContainerd(ctx, t)

	dir := copyExample(t, "deploy-secret")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, "DEPLOY_TOKEN") || !strings.Contains(j.Reason, "deploy") {
		t.Errorf("job %s: state %s, reason %q; want failed naming DEPLOY_TOKEN and its deploy scope", id, j.State, j.Reason)
	}
	assertNoSandboxEver(ctx, t, e, id, log, watch)
}

// A lockfile entry resolved from a foreign host is refused by the gate,
// naming the entry and the host: by the CLI at the developer's desk before
// anything is uploaded, and — for a pipeline that posts to the API directly
// — by the agent, before any sandbox exists.
func TestForeignLockfileRefused(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)
	watch := watchContainerd(ctx, t)

	dir := copyExample(t, "foreign-lockfile")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	jobCount := func() int {
		var jobs []api.Job
		if err := json.Unmarshal([]byte(cli(ctx, t, e, "jobs", "--json", "--limit", "1000")), &jobs); err != nil {
			t.Fatal(err)
		}
		return len(jobs)
	}
	before := jobCount()
	if _, errOut, code := e.CLI(ctx, "submit", dir, "--json"); code != 65 || !strings.Contains(errOut, "evil.example.com") || !strings.Contains(errOut, "node_modules/picocolors") {
		t.Errorf("cleanroom submit of a foreign lockfile: exit %d, stderr %q; want 65 (refused) naming the entry and the host", code, errOut)
	}
	if after := jobCount(); after != before {
		t.Errorf("the CLI's refusal still created a job (%d jobs before, %d after)", before, after)
	}

	// Past the CLI (a pipeline posting to the API): the agent's gate.
	base, stop, err := e.Forward()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var archive bytes.Buffer
	if err := tarball.WriteDir(&archive, dir, tarball.Options{Gzip: true, SkipDirs: []string{"node_modules", ".git"}}); err != nil {
		t.Fatal(err)
	}
	var spec api.JobSpec
	if b, err := os.ReadFile(filepath.Join(dir, "cleanroom.yaml")); err != nil || yaml.Unmarshal(b, &spec) != nil {
		t.Fatalf("reading the example's spec: %v", err)
	}
	sum := sha256.Sum256(archive.Bytes())
	posted, err := api.NewClient(base, e.Admin).SubmitUpload(ctx, spec, hex.EncodeToString(sum[:]), &archive)
	if err != nil {
		t.Fatal(err)
	}
	id := posted.ID
	suite.mu.Lock()
	suite.jobs = append(suite.jobs, id)
	suite.mu.Unlock()
	j := waitTerminal(ctx, t, e, id, time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed {
		t.Errorf("job %s: state %s, want failed", id, j.State)
	}
	for _, want := range []string{"node_modules/picocolors", "evil.example.com"} {
		if !strings.Contains(j.Reason, want) || !strings.Contains(log, want) {
			t.Errorf("reason %q / log do not name %s; log:\n%s", j.Reason, want, log)
		}
	}
	assertNoSandboxEver(ctx, t, e, id, log, watch)
}

// If the network policy cannot be enforced — here forward mode on a host
// whose forwarding is off — the job fails saying so, no step runs (the
// sandbox created alongside the network is destroyed unused), and nothing is
// left behind. The "host" is the lab's host namespace; the root namespace's
// ip_forward is never touched.
func TestNetworkFailureRunsNothing(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)
	sysctl := func(v string) {
		t.Helper()
		if out, err := e.Lab.Exec(ctx, e.Lab.HostNS, "sh", "-c", "echo "+v+" > /proc/sys/net/ipv4/ip_forward"); err != nil {
			t.Fatalf("setting ip_forward=%s in the lab host namespace: %v: %s", v, err, out)
		}
	}
	sysctl("0")
	defer sysctl("1")

	dir := copyExample(t, "hello")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, "network policy could not be enforced") || !strings.Contains(j.Reason, "ip_forward") {
		t.Errorf("job %s: state %s, reason %q; want failed: network policy could not be enforced (ip_forward)", id, j.State, j.Reason)
	}
	if strings.Contains(log, "$ npm ci") || strings.Contains(log, "$ /bin/sh") {
		t.Errorf("a step ran although the network policy failed; log:\n%s", log)
	}
	assertSandboxGone(ctx, t, e, id)
}

// A build that outlives the spec's timeout is killed and the job fails with
// a reason that says so, quickly, and its sandbox is gone.
func TestTimeoutKillsBuild(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)

	dir := minimalProject(t, map[string]any{"build": "sleep 60", "timeout": "3s", "labels": map[string]any{"lane": laneMain}})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 60*time.Second)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, "timed out") {
		t.Fatalf("job %s: state %s, reason %q; want failed, timed out; log:\n%s", id, j.State, j.Reason, log)
	}
	if !strings.Contains(log, "$ /bin/sh -c sleep 60") {
		t.Errorf("the build step never started (the timeout should hit the running build); log:\n%s", log)
	}
	if took := j.FinishedAt.Sub(j.CreatedAt); took > 20*time.Second {
		t.Errorf("a job with a 3s timeout took %s from submission to its end, want at most ~20s", took.Round(100*time.Millisecond))
	} else {
		t.Logf("submitted → failed (timed out) in %s", took.Round(100*time.Millisecond))
	}
	assertSandboxGone(ctx, t, e, id)
}

// `cleanroom cancel` stops a running build within the grace period, and the
// job ends canceled with its sandbox gone.
func TestCancelRunningJob(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)

	dir := minimalProject(t, map[string]any{"build": "sleep 60", "timeout": "5m", "labels": map[string]any{"lane": laneMain}})
	id := submit(ctx, t, e, dir)
	waitLog(ctx, t, e, id, "$ /bin/sh -c sleep 60", time.Minute)
	t0 := time.Now()
	cli(ctx, t, e, "cancel", id)
	j := waitTerminal(ctx, t, e, id, 45*time.Second)
	took := time.Since(t0)
	if j.State != api.StateCanceled {
		t.Fatalf("job %s: state %s (%s), want canceled; log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
	}
	// The sandbox step's grace between SIGTERM and SIGKILL is 10 s.
	if took > 15*time.Second {
		t.Errorf("cancel → canceled took %s, want within the 10s grace period (+5s slack)", took.Round(100*time.Millisecond))
	} else {
		t.Logf("cancel → canceled in %s", took.Round(100*time.Millisecond))
	}
	assertSandboxGone(ctx, t, e, id)
}

// With on_violation: kill, the first denied attempt ends the job.
func TestViolationKillEndsJob(t *testing.T) {
	e := env(t)
	a := agentFor(t, e, "kill", harness.AgentOptions{Labels: "lane=" + laneKill, OnViolation: "kill"})
	ctx := timeout(t, 4*time.Minute)

	dir := copyExample(t, "evil-postinstall")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneKill} })
	fbd := len(e.Lab.ForbiddenPackets())
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, "egress violation") {
		t.Fatalf("job %s: state %s, reason %q; want failed, egress violation; log:\n%s", id, j.State, j.Reason, log)
	}
	if j.RunnerID != a.RunnerID() {
		t.Errorf("job ran on %s, want the kill-policy agent %s", j.RunnerID, a.RunnerID())
	}
	if strings.Contains(log, "[telemetry-helper] postinstall done") {
		t.Errorf("the malware ran to its end although the first violation should have ended the job; log:\n%s", log)
	}
	_, events := egress(ctx, t, e, "--job", id, "--denied")
	if len(events) == 0 {
		t.Errorf("no denied event recorded for the violation that ended the job")
	}
	if p := e.Lab.ForbiddenPackets()[fbd:]; len(p) > 0 {
		t.Errorf("the forbidden host received %d packet(s): %v", len(p), p)
	}
	assertSandboxGone(ctx, t, e, id)
}

// Two agents with two slots each run twenty jobs at once: every job
// succeeds, every log holds only its own marker, and every egress event is
// attributed to the job that made the attempt.
func TestManyJobsOnTwoAgentsNoCrossTalk(t *testing.T) {
	e := env(t)
	a1 := agentFor(t, e, "pair-1", harness.AgentOptions{Labels: "lane=" + lanePair, Concurrency: 2})
	a2 := agentFor(t, e, "pair-2", harness.AgentOptions{Labels: "lane=" + lanePair, Concurrency: 2})
	ctx := timeout(t, 4*time.Minute)

	type pj struct {
		id, mark string
		port     int
	}
	const n = 20
	jobs := make([]pj, n)
	owner := map[int]string{}
	fbd := len(e.Lab.ForbiddenPackets())
	start := time.Now()
	for i := range jobs {
		mark := fmt.Sprintf("MK%02dX%s", i, strings.ToUpper(randHex(3)))
		port := 21000 + i
		// The marker is printed lower-cased by the shell, so the output
		// line (unlike the echoed command) exists only if the build ran.
		// The build pauses after its denied attempt: an attempt in the
		// job's last second is TestDeniedAttemptAtBuildEndIsAudited's
		// subject; here every event must exist to check its attribution.
		build := fmt.Sprintf(`node -e 's=require("net").connect(%d,"10.231.253.2");s.on("error",e=>console.log("egress %d:",e.code));s.on("connect",()=>{console.log("egress %d: CONNECTED");s.destroy()})'; echo "marker=$(echo %s | tr A-Z a-z)"; sleep 1.5`,
			port, port, port, mark)
		dir := minimalProject(t, map[string]any{"build": build, "timeout": "2m", "labels": map[string]any{"lane": lanePair}})
		jobs[i] = pj{id: submit(ctx, t, e, dir), mark: mark, port: port}
		owner[port] = jobs[i].id
	}
	final := map[string]api.Job{}
	deadline := time.Now().Add(3 * time.Minute)
	for len(final) < n {
		for _, j := range jobs {
			if _, ok := final[j.id]; ok {
				continue
			}
			if s := status(ctx, t, e, j.id); api.Terminal(s.State) {
				final[j.id] = s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d jobs ended within 3 minutes", len(final), n)
		}
		sleepCtx(ctx, 300*time.Millisecond)
	}
	t.Logf("%d jobs on 2 agents × 2 slots ended %s after the first submission", n, time.Since(start).Round(100*time.Millisecond))

	runners := map[string]int{}
	for _, j := range jobs {
		s := final[j.id]
		runners[s.RunnerID]++
		log := jobLog(ctx, t, e, j.id)
		if s.State != api.StateSucceeded {
			t.Errorf("job %s: state %s (%s); log:\n%s", j.id, s.State, s.Reason, log)
			continue
		}
		if !strings.Contains(log, "marker="+strings.ToLower(j.mark)) {
			t.Errorf("job %s: its own marker %s is not in its log:\n%s", j.id, strings.ToLower(j.mark), log)
		}
		for _, o := range jobs {
			if o.id != j.id && (strings.Contains(log, o.mark) || strings.Contains(log, strings.ToLower(o.mark))) {
				t.Errorf("job %s's log contains the marker of job %s", j.id, o.id)
			}
		}
		_, events := egress(ctx, t, e, "--job", j.id)
		own := false
		for _, ev := range events {
			if ev.Job != j.id || ev.Runner != s.RunnerID {
				t.Errorf("job %s: event attributed to job %s runner %s (ran on %s): %+v", j.id, ev.Job, ev.Runner, s.RunnerID, ev)
			}
			host, port, ok := splitDst(ev.Dst)
			if !ok || host != lab.ForbiddenIP.String() {
				continue
			}
			if port != j.port {
				t.Errorf("job %s (port %d) has an event for port %d, which job %s tried: %+v", j.id, j.port, port, owner[port], ev)
			} else if ev.Proto == "tcp" && ev.Verdict == api.VerdictDeny {
				own = true
			}
		}
		if !own {
			t.Errorf("job %s: no denied tcp event for its own attempt to 10.231.253.2:%d", j.id, j.port)
		}
	}
	// And from the other side: across all events, each port's attempts
	// belong to the one job that made them.
	_, all := egress(ctx, t, e, "--denied")
	for _, ev := range all {
		host, port, ok := splitDst(ev.Dst)
		if ok && host == lab.ForbiddenIP.String() && owner[port] != "" && ev.Job != owner[port] {
			t.Errorf("an attempt to port %d (job %s) is attributed to job %s: %+v", port, owner[port], ev.Job, ev)
		}
	}
	if runners[a1.RunnerID()] == 0 || runners[a2.RunnerID()] == 0 {
		t.Errorf("jobs per runner %v: both agents should have run some", runners)
	}
	if p := e.Lab.ForbiddenPackets()[fbd:]; len(p) > 0 {
		t.Errorf("the forbidden host received %d packet(s): %v", len(p), p)
	}
}

// A denied attempt in the last moment of a build is audited like any other:
// the job's end must not outrun the audit trail.
func TestDeniedAttemptAtBuildEndIsAudited(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 2*time.Minute)

	const port = 20999
	// The build's last act is one refused connection; the job ends right
	// after it.
	build := fmt.Sprintf(`node -e 's=require("net").connect(%d,"10.231.253.2");s.on("error",e=>console.log("egress:",e.code))'`, port)
	dir := minimalProject(t, map[string]any{"build": build, "timeout": "2m", "labels": map[string]any{"lane": laneMain}})
	id := submit(ctx, t, e, dir)
	j := waitTerminal(ctx, t, e, id, time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded || !strings.Contains(log, "egress: ECONNREFUSED") {
		t.Fatalf("job %s: state %s (%s); want succeeded with the attempt refused; log:\n%s", id, j.State, j.Reason, log)
	}
	raw, events := egress(ctx, t, e, "--job", id)
	want := fmt.Sprintf("%s:%d", lab.ForbiddenIP, port)
	if !slices.ContainsFunc(events, func(ev api.EgressEvent) bool {
		return ev.Proto == "tcp" && ev.Dst == want && ev.Verdict == api.VerdictDeny
	}) {
		t.Errorf("the build's denied connection to %s (refused, per its log) is not in the audit log of job %s:\n%s", want, id, raw)
	}
}

// An agent killed with SIGKILL mid-job loses its lease; the job is re-queued
// and another agent runs it to success; when the killed agent comes back,
// its start-up GC removes the sandbox and namespace it left behind. It runs
// after the other scenarios: what a crashed agent leaves can stop agents
// from starting on this host.
func TestKilledAgentJobRequeuedAndLeftoversCollected(t *testing.T) {
	e := env(t)
	first := agentFor(t, e, "lease-a", harness.AgentOptions{Labels: "lane=" + laneLease})
	ctx := timeout(t, 3*time.Minute)

	dir := minimalProject(t, map[string]any{"build": "sleep 30", "timeout": "5m", "labels": map[string]any{"lane": laneLease}})
	id := submit(ctx, t, e, dir)
	waitLog(ctx, t, e, id, "$ /bin/sh -c sleep 30", time.Minute)
	if j := status(ctx, t, e, id); j.RunnerID != first.RunnerID() || j.State != api.StateRunning {
		t.Fatalf("job %s: state %s on %s, want running on %s", id, j.State, j.RunnerID, first.RunnerID())
	}
	if err := first.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, first.Proc, 10*time.Second)
	killedAt := time.Now()
	// What the killed agent leaves: the container (its build still
	// running under containerd) and the job's network namespace.
	before := jobLeftovers(ctx, t, e, id)
	if len(before["containers"]) == 0 || len(before["namespaces"]) == 0 {
		t.Errorf("right after SIGKILL the job's container or namespace is already gone (%v): the GC check below proves nothing", before)
	}

	second := agentFor(t, e, "lease-b", harness.AgentOptions{Labels: "lane=" + laneLease})
	j := waitTerminal(ctx, t, e, id, 90*time.Second)
	t.Logf("killed → %s in %s (attempt %d, runner %s)", j.State, time.Since(killedAt).Round(100*time.Millisecond), j.Attempts, j.RunnerID)
	if j.State != api.StateSucceeded || j.RunnerID != second.RunnerID() || j.Attempts != 2 {
		t.Errorf("job %s: state %s (%s) on %s after %d attempt(s); want succeeded on the second agent %s at attempt 2; log:\n%s",
			id, j.State, j.Reason, j.RunnerID, j.Attempts, second.RunnerID(), jobLog(ctx, t, e, id))
	}

	rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := e.Restart(rctx, first); err != nil {
		t.Errorf("restarting the killed agent: %v", err)
	}
	for what, left := range jobLeftovers(ctx, t, e, id) {
		t.Errorf("after the killed agent's restart (start-up GC), the job's %s still exist: %v (ip netns list: %s)", what, left, netnsList())
	}
	if !strings.Contains(first.Output(), "reclaimed what a previous run left behind") {
		t.Errorf("the restarted agent's log does not report reclaiming anything:\n%s", first.Output())
	}
}

// TestNoResidueAfterAllScenarios must stay the last test of the file: it
// stops the shared environment and proves that nothing of it is left —
// containers, snapshots, namespaces, veths, mounts, cgroups — and that the
// root namespace's firewall is exactly as it was.
func TestNoResidueAfterAllScenarios(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := timeout(t, 2*time.Minute)
	for _, p := range closeAndCheckResidue(ctx, t) {
		t.Error(p)
	}
}

// ---- residue ---------------------------------------------------------------

// userNSClaimDir is where agents claim their user-namespace ranges
// (sandbox.UserNSConfig.ClaimDir's default).
const userNSClaimDir = "/run/cleanroom/userns"

// closeAndCheckResidue closes the shared environment (if it was started)
// and returns every leftover it can attribute to this run. What other runs
// on the machine leave is logged through t (when given), not failed on.
func closeAndCheckResidue(ctx context.Context, t *testing.T) []string {
	logf := func(format string, args ...any) {
		if t != nil {
			t.Logf(format, args...)
		}
	}
	suite.mu.Lock()
	suite.residueDone = true
	e, started := suite.env, suite.started
	jobs := slices.Clone(suite.jobs)
	agentNames := slices.Clone(suite.agentNames)
	agentPIDs := map[string]bool{}
	for _, a := range suite.agents {
		if a.Cmd != nil && a.Cmd.Process != nil {
			agentPIDs[strconv.Itoa(a.Cmd.Process.Pid)] = true
		}
	}
	fbdBase := suite.fbdBase
	suite.mu.Unlock()
	var problems []string
	if !started || e == nil {
		return nil
	}
	if p := e.Lab.ForbiddenPackets()[fbdBase:]; len(p) > 0 {
		problems = append(problems, fmt.Sprintf("the forbidden host received %d packet(s) during the run: %v", len(p), p))
	}
	labID, dir := e.Lab.ID, e.Dir
	// A relay left open on purpose: Close must stop it.
	relay, _, relayErr := e.Forward()
	if relayErr != nil {
		problems = append(problems, fmt.Sprintf("forwarding the coordinator: %v", relayErr))
	}
	if err := e.Close(); err != nil {
		problems = append(problems, fmt.Sprintf("closing the environment: %v", err))
	}
	if relayErr == nil {
		if c, err := net.DialTimeout("tcp", strings.TrimPrefix(relay, "http://"), time.Second); err == nil {
			c.Close()
			problems = append(problems, "the coordinator relay "+relay+" still accepts connections after Close")
		}
	}
	mine := map[string]bool{}
	for _, id := range jobs {
		mine[id] = true
	}
	ours := func(agent, job string) bool { return slices.Contains(agentNames, agent) || mine[job] }

	// containerd: containers and snapshots labelled cleanroom.job.
	if cd, err := containerd.New(containerdAddr(), containerd.WithDefaultNamespace("cleanroom")); err != nil {
		problems = append(problems, fmt.Sprintf("connecting to containerd: %v", err))
	} else {
		defer cd.Close()
		filter := fmt.Sprintf("labels.%q", sandbox.LabelJob)
		ctrs, err := cd.Containers(ctx, filter)
		if err != nil {
			problems = append(problems, fmt.Sprintf("listing containers: %v", err))
		}
		for _, c := range ctrs {
			l, _ := c.Labels(ctx)
			if ours(l[sandbox.LabelAgent], l[sandbox.LabelJob]) {
				problems = append(problems, "container left: "+c.ID())
			} else {
				logf("not ours, ignored: container %s (agent %s)", c.ID(), l[sandbox.LabelAgent])
			}
		}
		err = cd.SnapshotService(containerd.DefaultSnapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			if ours(info.Labels[sandbox.LabelAgent], info.Labels[sandbox.LabelJob]) {
				problems = append(problems, "snapshot left: "+info.Name)
			} else {
				logf("not ours, ignored: snapshot %s", info.Name)
			}
			return nil
		}, filter)
		if err != nil {
			problems = append(problems, fmt.Sprintf("listing snapshots: %v", err))
		}
	}

	// User-namespace range claims (a file holding the agent's pid): an
	// agent removes its own when it stops.
	if ents, err := os.ReadDir(userNSClaimDir); err == nil {
		for _, ent := range ents {
			b, err := os.ReadFile(filepath.Join(userNSClaimDir, ent.Name()))
			if err == nil && agentPIDs[strings.TrimSpace(string(b))] {
				problems = append(problems, "user-namespace range claim left by a stopped agent: "+filepath.Join(userNSClaimDir, ent.Name()))
			}
		}
	}

	// Network namespaces: the jobs' cr-<job> and the lab's crlab-<id>-*.
	for _, ns := range lab.OurNamespaces("cr-", lab.Prefix) {
		job := jobOfName(ns)
		if mine[job] || strings.HasPrefix(ns, lab.Prefix+labID) {
			problems = append(problems, "network namespace left: /run/netns/"+ns)
		} else {
			logf("not ours, ignored: /run/netns/%s", ns)
		}
	}

	// Root namespace: no sandbox veth (crv*) of ours, no lab veth.
	if out, err := exec.CommandContext(ctx, "ip", "-o", "-d", "link", "show").CombinedOutput(); err != nil {
		problems = append(problems, fmt.Sprintf("listing root links: %v: %s", err, out))
	} else {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			name := strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")
			if !strings.HasPrefix(name, "crv") && name != "vreg" && name != "vfbd" {
				continue
			}
			job := ""
			if i := strings.Index(line, "cleanroom job="); i >= 0 {
				job = jobOfName(strings.Fields(line[i+len("cleanroom job="):])[0])
			}
			if job == "" || mine[job] || name == "vreg" || name == "vfbd" {
				problems = append(problems, "link in the root namespace: "+strings.TrimSpace(line))
			} else {
				logf("not ours, ignored: root link %s (job %s)", name, job)
			}
		}
	}

	// Mounts under the environment's folder (agents' data dirs, workspaces).
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
				problems = append(problems, "mount left: "+f[4])
			}
		}
	}
	if _, err := os.Stat(dir); err == nil && os.Getenv("CLEANROOM_KEEP_LOGS") == "" {
		problems = append(problems, "environment folder left: "+dir)
	}

	// cgroups of the jobs' sandboxes.
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/cleanroom/cr-*")
	more, _ := filepath.Glob("/sys/fs/cgroup/cleanroom/cr-*")
	for _, cg := range append(cgs, more...) {
		if mine[jobOfName(filepath.Base(cg))] {
			problems = append(problems, "cgroup left: "+cg)
		} else {
			logf("not ours, ignored: cgroup %s", cg)
		}
	}

	// containerd shims still serving a sandbox of ours (a container can be
	// deleted while its shim lives on).
	shims := shimsOf(mine)
	for deadline := time.Now().Add(5 * time.Second); len(shims) > 0 && time.Now().Before(deadline); shims = shimsOf(mine) {
		time.Sleep(250 * time.Millisecond) // a shim may still be exiting
	}
	for _, s := range shims {
		problems = append(problems, "containerd shim left (PID, command): "+s)
	}

	// The root namespace's firewall, exactly as before.
	if suite.before != nil {
		after, err := lab.SnapshotRoot(ctx)
		if err != nil {
			problems = append(problems, fmt.Sprintf("snapshotting the root namespace: %v", err))
		} else if after.Firewall != suite.before.Firewall {
			problems = append(problems, (lab.RootState{Firewall: suite.before.Firewall}).Diff(lab.RootState{Firewall: after.Firewall}))
		} else if d := suite.before.Diff(after); d != "" {
			logf("root links changed during the run (other tests on this machine?):\n%s", d)
		}
	}
	if len(problems) > 0 {
		// Reported above; now remove it, so a product bug does not leave
		// this machine dirty for the next run.
		for _, s := range sweep(ctx, mine, agentNames) {
			logf("swept: %s", s)
		}
	}
	return problems
}
