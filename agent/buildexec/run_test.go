package buildexec

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/cleanroom-ci/cleanroom/secrets"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// These tests run the executor's phases against fake sandboxes and
// networks (no root, no containerd): they pin the order that is the
// security argument. The root tests (integration/) run the real ones.

const testRegistry = "http://registry.cleanroom.test:4873/"

// world records what the executor asked of the fakes, in order.
type world struct {
	mu     sync.Mutex
	calls  []string
	netErr error // Setup fails with it
	sbErr  error // Create fails with it
	// exits maps a step's argv[0] to its exit code (default 0).
	exits map[string]int
	// prints maps a step's argv[0] to what it writes to its output, in
	// writes of these chunks.
	prints map[string][]string
	// violate, when set, makes the network report a denied attempt as the
	// build step starts.
	violate    bool
	violations chan netpolicy.Event
	// auditFails, when set, makes the network report a failed audit reader
	// as the build step starts.
	auditFails  bool
	auditFailed chan error
	netCfg      netpolicy.Config
	sbOpts      sandbox.Options
	ws          string
	// The gateway: Check and Prefetch fail with checkErr and prefetchErr,
	// the host-end listener with listenErr; serveFailure is what the job's
	// endpoint reports as its Failure once the install step ran.
	checkErr, prefetchErr, listenErr, serveFailure error
	// prefetchTakes is how long Prefetch takes.
	prefetchTakes    time.Duration
	gwJob            gateway.Job
	gwEvent          *api.EgressEvent // the endpoint sends it when it starts
	stepEnv          map[string][]string
	npmrcAtFirstStep string
	installed        bool
}

func (w *world) record(s string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, s)
}

func (w *world) log() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

func (w *world) has(s string) bool { return slices.Contains(w.log(), s) }

func (w *world) index(s string) int { return slices.Index(w.log(), s) }

func (w *world) Setup(_ context.Context, cfg netpolicy.Config) (jobNetwork, error) {
	w.record("network setup")
	w.netCfg = cfg
	if w.netErr != nil {
		return nil, w.netErr
	}
	w.violations = make(chan netpolicy.Event, 1)
	w.auditFailed = make(chan error, 1)
	return &fakeNetwork{w}, nil
}

func (w *world) Create(_ context.Context, o sandbox.Options) (jobSandbox, error) {
	w.record("sandbox create")
	w.sbOpts = o
	if w.sbErr != nil {
		return nil, w.sbErr
	}
	return &fakeSandbox{w: w, killed: make(chan struct{})}, nil
}

func (w *world) Check(_ context.Context, j gateway.Job) error {
	w.record("gateway check")
	w.gwJob = j
	return w.checkErr
}

func (w *world) Prefetch(context.Context, gateway.Job, func(int, int)) error {
	w.record("gateway prefetch")
	time.Sleep(w.prefetchTakes)
	return w.prefetchErr
}

func (w *world) Serve(ln net.Listener, j gateway.Job) (jobGateway, error) {
	w.record("gateway serve")
	if w.gwEvent != nil {
		j.OnEvent(*w.gwEvent)
	}
	return &fakeJobGateway{w: w, ln: ln}, nil
}

type fakeJobGateway struct {
	w  *world
	ln net.Listener
}

func (g *fakeJobGateway) URL() string { return "http://" + g.ln.Addr().String() + "/" }
func (g *fakeJobGateway) Failure() error {
	g.w.mu.Lock()
	defer g.w.mu.Unlock()
	if g.w.installed {
		return g.w.serveFailure
	}
	return nil
}
func (g *fakeJobGateway) Close() error { g.w.record("gateway close"); return g.ln.Close() }

func (w *world) ImageDigest(context.Context, string) (string, error) {
	return "sha256:" + strings.Repeat("cd", 32), nil
}

type fakeNetwork struct{ w *world }

func (n *fakeNetwork) Allowed() []netpolicy.Destination {
	return []netpolicy.Destination{{Host: "registry.cleanroom.test", IPs: []net.IP{net.IPv4(10, 0, 0, 1)}, Port: 4873}}
}
func (n *fakeNetwork) Violations() <-chan netpolicy.Event { return n.w.violations }
func (n *fakeNetwork) AuditFailed() <-chan error          { return n.w.auditFailed }
func (n *fakeNetwork) ListenHostEnd(int) (net.Listener, error) {
	if n.w.listenErr != nil {
		return nil, n.w.listenErr
	}
	return net.Listen("tcp", "127.0.0.1:0")
}
func (n *fakeNetwork) Close(context.Context) error {
	n.w.record("network close")
	return nil
}

type fakeSandbox struct {
	w        *world
	killed   chan struct{}
	killOnce sync.Once
}

func (s *fakeSandbox) ID() string            { return "cr-fake" }
func (s *fakeSandbox) WorkspacePath() string { return s.w.ws }
func (s *fakeSandbox) Run(ctx context.Context, st sandbox.Step) (sandbox.Result, error) {
	s.w.record("run " + st.Args[0])
	s.w.mu.Lock()
	if s.w.stepEnv == nil {
		s.w.stepEnv = map[string][]string{}
		b, _ := os.ReadFile(filepath.Join(s.w.sbOpts.Mounts[1].Source))
		s.w.npmrcAtFirstStep = string(b)
	}
	s.w.stepEnv[st.Args[0]] = st.Env
	s.w.installed = true
	s.w.mu.Unlock()
	if (s.w.violate || s.w.auditFails) && st.Args[0] == "/bin/sh" {
		if s.w.violate {
			s.w.violations <- netpolicy.Event{Proto: "tcp", Src: "10.0.0.2:1234", Dst: "169.254.169.254:80", Verdict: "deny"}
		} else {
			s.w.auditFailed <- errors.New("netpolicy: egress audit failed: nflog: reading: socket closed")
		}
		select { // a step that would run for ever, ended by the kill
		case <-s.killed:
			return sandbox.Result{ExitCode: 137, Reason: sandbox.ReasonKilledHost}, nil
		case <-time.After(10 * time.Second):
			return sandbox.Result{}, errors.New("the violation did not kill the sandbox")
		}
	}
	for _, chunk := range s.w.prints[st.Args[0]] {
		if _, err := io.WriteString(st.Stdout, chunk); err != nil {
			return sandbox.Result{}, err
		}
	}
	return sandbox.Result{ExitCode: s.w.exits[st.Args[0]], Duration: time.Millisecond}, nil
}
func (s *fakeSandbox) Kill(context.Context) error {
	s.w.record("kill")
	s.killOnce.Do(func() { close(s.killed) })
	return nil
}
func (s *fakeSandbox) StopAll(context.Context) error { s.w.record("stop all"); return nil }
func (s *fakeSandbox) Destroy(context.Context) error { s.w.record("destroy"); return nil }

type events struct {
	mu  sync.Mutex
	evs []api.EgressEvent
}

func (e *events) Event(ev api.EgressEvent) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

// project writes a workspace whose lockfile passes the gate.
func project(t *testing.T) string {
	t.Helper()
	ws := t.TempDir()
	sum := sha512.Sum512([]byte("left-pad"))
	lock := map[string]any{"name": "proj", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": map[string]any{
		"":                      map[string]any{"name": "proj", "version": "1.0.0"},
		"node_modules/left-pad": map[string]any{"version": "1.3.0", "resolved": testRegistry + "left-pad/-/left-pad-1.3.0.tgz", "integrity": "sha512-" + base64.StdEncoding.EncodeToString(sum[:])},
	}}
	b, err := json.Marshal(lock)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"package.json": []byte(`{"name":"proj","version":"1.0.0"}`), "package-lock.json": b} {
		if err := os.WriteFile(filepath.Join(ws, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return ws
}

func newFakeExecutor(t *testing.T, w *world, mutate func(*Config)) *Executor {
	t.Helper()
	_, priv := supplychain.GenerateKey()
	secretsFile := filepath.Join(t.TempDir(), "secrets.yaml")
	if err := os.WriteFile(secretsFile, []byte("secrets:\n  - {name: BUILD_TOKEN, value: build-token-123, scope: build}\n  - {name: DEPLOY_TOKEN, value: deploy-token-456, scope: deploy}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	store, err := secrets.LoadFile(secretsFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{RunnerID: "r-1", BuilderID: "https://coordinator.test/runners/r-1", Registries: []string{testRegistry}, Extra: []string{"git.corp:22"}, DataDir: t.TempDir(),
		NetStateDir: t.TempDir(), Secrets: store, Signing: priv}
	if mutate != nil {
		mutate(&cfg)
	}
	return newExecutor(cfg, w, w, w)
}

func run(t *testing.T, e *Executor, w *world, spec api.JobSpec) (Result, string) {
	t.Helper()
	w.ws = project(t)
	if spec.Build.Argv == nil && spec.Build.Script == "" {
		spec.Build.Script = "npm run build"
	}
	var out bytes.Buffer
	job := &api.Job{ID: "j-1", Spec: spec, Attempts: 1, Source: api.Source{Kind: api.SourceUpload, SHA256: strings.Repeat("ab", 32)}}
	res, err := e.Run(context.Background(), job, w.ws, &out, &events{})
	if err != nil {
		t.Fatalf("Run returned an error (teardown failed): %v", err)
	}
	return Result{res.State, res.ExitCode, res.Reason, res.Class}, out.String()
}

// Result is the part of agent.Result these tests compare.
type Result struct {
	State    string
	ExitCode int
	Reason   string
	Class    string
}

func TestRefusalsComeBeforeAnySandboxOrNetwork(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		spec   api.JobSpec
		prep   func(ws string)
		reason string
	}{
		{"deploy secret", nil, api.JobSpec{Secrets: []string{"DEPLOY_TOKEN"}}, nil, "DEPLOY_TOKEN"},
		{"unknown secret", nil, api.JobSpec{Secrets: []string{"NOPE"}}, nil, "NOPE"},
		{"resources over the runner's", func(c *Config) { c.Limits.MemoryBytes = 1 << 30 }, api.JobSpec{Resources: api.Resources{Memory: 8 << 30}}, nil, "more than this runner's limits"},
		{"extra the runner does not allow", nil, api.JobSpec{Network: api.NetworkSpec{Extra: []string{"evil.example:443"}}}, nil, "network policy"},
		{"unknown on_violation", nil, api.JobSpec{Network: api.NetworkSpec{OnViolation: "alert"}}, nil, "on_violation"},
		{"a registry credential of the gateway", func(c *Config) { c.UpstreamSecrets = []string{"BUILD_TOKEN"} }, api.JobSpec{Secrets: []string{"BUILD_TOKEN"}}, nil, "registry credential of this runner"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{}
			res, log := run(t, newFakeExecutor(t, w, tc.mutate), w, tc.spec)
			if res.State != api.StateFailed || res.ExitCode != 1 || !strings.Contains(res.Reason, tc.reason) || res.Class != api.ClassRefused {
				t.Errorf("result = %+v, want failed (refused) naming %q", res, tc.reason)
			}
			if !strings.Contains(log, "[cleanroom] refused: "+res.Reason) {
				t.Errorf("log does not say the refusal:\n%s", log)
			}
			if calls := w.log(); len(calls) != 0 {
				t.Errorf("refused job still made %v", calls)
			}
		})
	}
}

func TestLockfileGateRefusesBeforeAnything(t *testing.T) {
	w := &world{}
	e := newFakeExecutor(t, w, nil)
	ws := t.TempDir() // no lockfile
	if err := os.WriteFile(filepath.Join(ws, "package.json"), []byte(`{"name":"p"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := e.Run(context.Background(), &api.Job{ID: "j-1", Spec: api.JobSpec{Build: api.Build{Script: "x"}}}, ws, &out, &events{})
	if err != nil || res.State != api.StateFailed || !strings.Contains(res.Reason, "lockfile rejected") || res.Class != api.ClassRefused {
		t.Fatalf("res = %+v, %v", res, err)
	}
	if len(w.log()) != 0 {
		t.Errorf("made %v", w.log())
	}
}

func TestNetworkFailureRunsNoStepAndTearsTheSandboxDown(t *testing.T) {
	w := &world{netErr: errors.New("installing rules: iptables-restore: exit 1")}
	res, log := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{})
	if res.State != api.StateFailed || !strings.Contains(res.Reason, "network policy could not be enforced: installing rules") || res.Class != api.ClassInfrastructure {
		t.Fatalf("result = %+v", res)
	}
	if !strings.Contains(log, "so the job does not run") {
		t.Errorf("log: %s", log)
	}
	for _, c := range w.log() {
		if strings.HasPrefix(c, "run ") {
			t.Errorf("a step ran although the network failed: %v", w.log())
		}
	}
	if !w.has("sandbox create") || !w.has("destroy") {
		t.Errorf("the sandbox made concurrently was not destroyed: %v", w.log())
	}
}

func TestSandboxFailureRunsNoStepAndClosesTheNetwork(t *testing.T) {
	w := &world{sbErr: errors.New("image not found")}
	res, _ := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{})
	if res.State != api.StateFailed || res.Reason != "creating the sandbox: image not found" || res.Class != api.ClassInfrastructure {
		t.Fatalf("result = %+v", res)
	}
	if !w.has("network close") || w.has("destroy") {
		t.Errorf("calls = %v, want the network closed and no sandbox to destroy", w.log())
	}
}

func TestStepsRunAfterBothExistAndTeardownStopsFirst(t *testing.T) {
	w := &world{}
	res, log := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{Artifacts: []string{"package.json"}})
	if res.State != api.StateSucceeded || res.Class != "" {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	install, build := w.index("run npm"), w.index("run /bin/sh")
	if install < 0 || build < install {
		t.Fatalf("steps out of order: %v", w.log())
	}
	for _, before := range []string{"network setup", "sandbox create"} {
		if i := w.index(before); i < 0 || i > install {
			t.Errorf("%s not before the first step: %v", before, w.log())
		}
	}
	stop := w.index("stop all")
	if stop < build || w.index("destroy") < stop || w.index("network close") < stop {
		t.Errorf("teardown order: %v (want stop all before destroy and network close)", w.log())
	}
	if !strings.Contains(log, "egress allowed only to: 10.0.0.1:4873 (registry.cleanroom.test)") || !strings.Contains(log, "on_violation: deny") {
		t.Errorf("log: %s", log)
	}
	// The network got exactly the runner's registry and no extra: the job
	// named none.
	p := w.netCfg.Policy
	if strings.Join(p.Registries, ",") != testRegistry || len(p.Extra) != 0 || p.Kill {
		t.Errorf("policy = %+v", p)
	}
	if w.sbOpts.NetNS != netpolicy.NetNSPathFor("j-1-1") || w.sbOpts.Limits.DiskBytes != DefaultDiskLimit || w.sbOpts.Limits.MemoryBytes != sandbox.DefaultLimits.MemoryBytes {
		t.Errorf("sandbox options = %+v", w.sbOpts)
	}
	// The npmrc goes to the build user's host IDs, which only the sandbox
	// knows (its user-namespace slot); resolv.conf stays root's.
	for _, m := range w.sbOpts.Mounts {
		if m.BuildUser != (m.Destination == "/run/cleanroom/npmrc") {
			t.Errorf("mount %+v: only the npmrc is the build user's", m)
		}
	}
}

// The agent's lines are records; the build's output is stored as printed
// (escape sequences too), redacted, but cannot start a record.
func TestBuildOutputCannotFrameAnAgentLine(t *testing.T) {
	w := &world{prints: map[string][]string{"/bin/sh": {"\x1b[1A\x1b[2K\x1e[cleanroom] ✓ all good, token build-to", "ken-123\n"}}}
	res, log := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{})
	if res.State != api.StateSucceeded {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	want := "\x1e[cleanroom] $ /bin/sh -c npm run build\n\x1b[1A\x1b[2K␞[cleanroom] ✓ all good, token [REDACTED]\n\x1e[cleanroom] build step done in "
	if !strings.Contains(log, want) {
		t.Fatalf("log = %q, want it to contain %q", log, want)
	}
	for _, rec := range strings.Split(log, "\x1e")[1:] {
		rec, _, _ = strings.Cut(rec, "\n")
		if !strings.HasPrefix(rec, api.AgentPrefix) || strings.Contains(rec, "all good") {
			t.Errorf("record %q is not one of the agent's lines", rec)
		}
	}
}

func TestFailedStepPassesItsExitCodeAndStops(t *testing.T) {
	w := &world{exits: map[string]int{"npm": 3}}
	res, _ := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{})
	if res.State != api.StateFailed || res.ExitCode != 3 || res.Reason != "install step failed: exit 3" || res.Class != api.ClassBuild {
		t.Fatalf("result = %+v", res)
	}
	if w.has("run /bin/sh") {
		t.Errorf("the build ran after a failed install: %v", w.log())
	}
}

func TestKillModeViolationEndsTheJob(t *testing.T) {
	for _, tc := range []struct {
		name   string
		runner api.OnViolation
		job    api.OnViolation
	}{{"runner kill", api.OnViolationKill, ""}, {"job tightens to kill", api.OnViolationDeny, api.OnViolationKill}, {"job deny on a kill runner", api.OnViolationKill, api.OnViolationDeny}} {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{violate: true}
			e := newFakeExecutor(t, w, func(c *Config) { c.OnViolation = tc.runner })
			res, log := run(t, e, w, api.JobSpec{Network: api.NetworkSpec{OnViolation: tc.job}})
			if res.State != api.StateFailed || res.Reason != "egress violation" || res.Class != api.ClassPolicy || !w.has("kill") {
				t.Fatalf("result = %+v, calls %v", res, w.log())
			}
			if !strings.Contains(log, "ending the job now (on_violation: kill)") {
				t.Errorf("log: %s", log)
			}
		})
	}
}

func TestAuditFailureEndsTheJobInAnyMode(t *testing.T) {
	for _, mode := range []api.OnViolation{api.OnViolationDeny, api.OnViolationKill} {
		t.Run(string(mode), func(t *testing.T) {
			w := &world{auditFails: true}
			e := newFakeExecutor(t, w, func(c *Config) { c.OnViolation = mode })
			res, log := run(t, e, w, api.JobSpec{})
			if res.State != api.StateFailed || !strings.HasPrefix(res.Reason, "egress audit stopped: ") || !strings.Contains(res.Reason, "nflog") || res.Class != api.ClassPolicy || !w.has("kill") {
				t.Fatalf("result = %+v, calls %v", res, w.log())
			}
			if !strings.Contains(log, "nothing may run unaudited") {
				t.Errorf("log: %s", log)
			}
		})
	}
}

func TestArtifactsThatCannotBeCollectedFailAsInfrastructure(t *testing.T) {
	w := &world{}
	e := newFakeExecutor(t, w, func(c *Config) { c.Artifacts.MaxBytes = 1 })
	res, _ := run(t, e, w, api.JobSpec{Artifacts: []string{"package.json"}})
	if res.State != api.StateFailed || !strings.HasPrefix(res.Reason, "collecting artifacts: ") || res.Class != api.ClassInfrastructure {
		t.Fatalf("result = %+v", res)
	}
}

func TestObserveTimesSetupAndTeardownOfSandboxAndNetwork(t *testing.T) {
	tests := []struct {
		name string
		w    *world
		want []string
	}{
		{"job runs", &world{}, []string{"network setup ok", "network teardown ok", "sandbox setup ok", "sandbox teardown ok"}},
		{"network fails", &world{netErr: errors.New("no iptables")}, []string{"network setup error", "sandbox setup ok", "sandbox teardown ok"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var got []string
			e := newFakeExecutor(t, tc.w, func(c *Config) {
				c.Observe = func(o Observation) {
					outcome := "ok"
					if o.Err != nil {
						outcome = "error"
					}
					if o.Duration < 0 {
						t.Errorf("negative duration %v", o)
					}
					mu.Lock()
					got = append(got, o.Part+" "+o.Op+" "+outcome)
					mu.Unlock()
				}
			})
			run(t, e, tc.w, api.JobSpec{})
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("observations = %v, want %v", got, tc.want)
			}
		})
	}
}

// A script a submitter wrote cannot make its own lines into cleanroom's:
// the "$ …" line shows its newlines in their visible form, in one record.
func TestScriptNewlinesStayInsideTheCommandLine(t *testing.T) {
	w := &world{}
	_, log := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{Build: api.Build{Script: "npm run build\n✓ 0 egress attempts denied; job succeeded"}})
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "✓ 0 egress attempts denied") && !strings.Contains(line, "$ /bin/sh -c npm run build␊✓ 0 egress") {
			t.Errorf("the script's second line became a line of its own: %q", line)
		}
	}
	if !strings.Contains(log, "$ /bin/sh -c npm run build␊✓ 0 egress attempts denied") {
		t.Errorf("log: %s", log)
	}
}
