package buildexec

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// The gateway phases against a fake gateway: what it is handed, where it
// sits in the order, what the sandbox gets (the gateway's address, no
// credential) and how each of its failures ends the job.

func TestGatewayServesTheJobAndIsItsOnlyRegistry(t *testing.T) {
	w := &world{}
	res, log := run(t, newFakeExecutor(t, w, func(c *Config) { c.GatewayScopes = []string{"@acme"} }), w, api.JobSpec{MinReleaseAge: api.Duration(3600e9)})
	if res.State != api.StateSucceeded {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	// Order: the check before anything exists, the endpoint once the
	// network does and before the first step; closed after the sandbox's
	// processes are gone and before the network goes.
	check, setup, serve, install := w.index("gateway check"), w.index("network setup"), w.index("gateway serve"), w.index("run npm")
	if check < 0 || setup < check || serve < setup || install < serve {
		t.Errorf("order: %v", w.log())
	}
	stop, gwClose, netClose := w.index("stop all"), w.index("gateway close"), w.index("network close")
	if gwClose < stop || netClose < gwClose {
		t.Errorf("teardown order: %v (want stop all, gateway close, network close)", w.log())
	}
	// Handed the lockfile's entries, attributed like netpolicy's events.
	j := w.gwJob
	if len(j.Entries) != 1 || j.Entries[0].Name != "left-pad" || j.Entries[0].Version != "1.3.0" || !strings.HasPrefix(j.Entries[0].Integrity, "sha512-") ||
		j.Job != "j-1" || j.Runner != "r-1" || j.Sandbox != "cr-j-1-1" || j.MinReleaseAge.Hours() != 1 || j.OnEvent == nil {
		t.Errorf("gateway job = %+v", j)
	}
	// The network's only registry destination is the gateway.
	if w.netCfg.Policy.Gateway != DefaultGatewayPort {
		t.Errorf("policy = %+v, want the gateway's port", w.netCfg.Policy)
	}
	// npm finds the gateway by environment (above a project's .npmrc) and
	// npmrc; neither the sandbox's environment nor its npmrc holds a
	// credential or the real registry.
	url := ""
	for _, kv := range w.stepEnv["npm"] {
		if v, ok := strings.CutPrefix(kv, "npm_config_registry="); ok {
			url = v
		}
	}
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !slices.Contains(w.stepEnv["/bin/sh"], "npm_config_replace_registry_host=always") {
		t.Errorf("step env = %v", w.stepEnv)
	}
	want := "registry=" + url + "\nreplace-registry-host=always\n@acme:registry=" + url + "\n"
	if w.npmrcAtFirstStep != want {
		t.Errorf("npmrc at the first step = %q, want %q", w.npmrcAtFirstStep, want)
	}
	for _, kv := range w.sbOpts.Env {
		if strings.Contains(kv, "registry") || strings.Contains(strings.ToLower(kv), "token") {
			t.Errorf("sandbox env names a registry or token: %q", kv)
		}
	}
	if !strings.Contains(log, "registry: only through the gateway at "+url) {
		t.Errorf("log: %s", log)
	}
}

func TestGatewayRefusalsAndFailuresEndTheJob(t *testing.T) {
	tooNew := &gateway.RefusedError{Refusals: []gateway.Refusal{{Entry: gateway.Entry{Name: "left-pad", Version: "1.3.0"}, Rule: gateway.RuleReleaseTooNew, Reason: "published 1m0s ago"}}}
	altered := &gateway.RefusedError{Refusals: []gateway.Refusal{{Entry: gateway.Entry{Name: "left-pad", Version: "1.3.0"}, Rule: gateway.RuleIntegrityMismatch, Reason: "tarball sha512 differs from the lockfile's"}}}
	tests := []struct {
		name     string
		w        *world
		class    string
		reason   []string
		madeAny  bool   // network/sandbox were made (and must be gone)
		lastStep string // the last step that ran ("" = none)
	}{
		{"release too new: refused before anything exists", &world{checkErr: tooNew}, api.ClassRefused,
			[]string{"left-pad@1.3.0", "release-too-new", "published 1m0s ago"}, false, ""},
		{"upstream unreachable: infrastructure, nothing made", &world{checkErr: errors.New("upstream http://registry.cleanroom.test:4873/: dial tcp: connection refused")}, api.ClassInfrastructure,
			[]string{"registry gateway", "connection refused"}, false, ""},
		{"tarball altered in the registry: refused before install", &world{prefetchErr: altered}, api.ClassRefused,
			[]string{"left-pad@1.3.0", "integrity-mismatch"}, true, ""},
		{"tarball altered, as the gateway reports it", &world{prefetchErr: &gateway.IntegrityError{Entry: gateway.Entry{Name: "left-pad", Version: "1.3.0"}, Want: "sha512-a", Got: "sha512-b"}}, api.ClassRefused,
			[]string{"left-pad@1.3.0", "integrity-mismatch"}, true, ""},
		{"no listener on the host end", &world{listenErr: errors.New("address already in use")}, api.ClassInfrastructure,
			[]string{"could not listen", "address already in use"}, true, ""},
		{"failure while serving: the job fails with it", &world{serveFailure: errors.New("left-pad@1.3.0: integrity-mismatch")}, api.ClassPolicy,
			[]string{"registry gateway: left-pad@1.3.0: integrity-mismatch"}, true, "run npm"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, log := run(t, newFakeExecutor(t, tc.w, nil), tc.w, api.JobSpec{})
			if res.State != api.StateFailed || res.Class != tc.class {
				t.Fatalf("result = %+v, want failed (%s)\n%s", res, tc.class, log)
			}
			for _, s := range tc.reason {
				if !strings.Contains(res.Reason, s) || !strings.Contains(log, s) {
					t.Errorf("reason %q / log does not name %q:\n%s", res.Reason, s, log)
				}
			}
			var steps []string
			for _, c := range tc.w.log() {
				if strings.HasPrefix(c, "run ") {
					steps = append(steps, c)
				}
			}
			if last := ""; len(steps) > 0 {
				last = steps[len(steps)-1]
				if last != tc.lastStep || len(steps) > 1 {
					t.Errorf("steps run: %v, want at most %q", steps, tc.lastStep)
				}
			} else if tc.lastStep != "" {
				t.Errorf("no step ran, want %q", tc.lastStep)
			}
			made := tc.w.has("network setup") || tc.w.has("sandbox create")
			if made != tc.madeAny {
				t.Errorf("made network/sandbox = %v, want %v: %v", made, tc.madeAny, tc.w.log())
			}
			if made && (!tc.w.has("network close") || !tc.w.has("destroy")) {
				t.Errorf("not torn down: %v", tc.w.log())
			}
		})
	}
}

// The gateway gets every tarball npm ci fetches and nothing npm installs
// from elsewhere.
func TestGatewayEntriesAreTheLockfilesRegistryTarballs(t *testing.T) {
	lf := &supplychain.Lockfile{Packages: []supplychain.Package{
		{Path: "node_modules/a", Name: "a", Version: "1.0.0", Resolved: testRegistry + "a/-/a-1.0.0.tgz", Integrity: "sha512-x"},
		{Path: "node_modules/b", Name: "b", Version: "2.0.0", Resolved: "https://registry.npmjs.org/b/-/b-2.0.0.tgz", Integrity: "sha1-y"},
		{Path: "node_modules/c", Name: "c", Version: "3.0.0", Integrity: "sha512-z"},
		{Path: "node_modules/a/node_modules/bundled", Name: "bundled", Version: "1.0.0", InBundle: true},
		{Path: "node_modules/ws", Name: "ws", Resolved: "packages/ws", Link: true},
		{Path: "packages/ws", Name: "ws", Version: "0.1.0"},
		{Path: "node_modules/local", Name: "local", Version: "1.0.0", Resolved: "file:vendor/local-1.0.0.tgz"},
		{Path: "node_modules/g", Name: "g", Version: "1.0.0", Resolved: "git+https://git.corp/g.git#abc"},
	}}
	var got []string
	for _, e := range gatewayEntries(lf) {
		got = append(got, e.Name+"@"+e.Version+" "+e.Integrity)
	}
	want := []string{"a@1.0.0 sha512-x", "b@2.0.0 sha1-y", "c@3.0.0 sha512-z"}
	if !slices.Equal(got, want) {
		t.Errorf("entries = %v, want %v", got, want)
	}
}

// The log says how long the job waited for the prefetch after its network
// and sandbox were ready: with a cold cache that is its download time,
// which the install step alone does not show (benchmarks add the two).
func TestGatewayLogsTheJobsWaitForThePrefetch(t *testing.T) {
	w := &world{prefetchTakes: 300 * time.Millisecond}
	res, log := run(t, newFakeExecutor(t, w, nil), w, api.JobSpec{})
	if res.State != api.StateSucceeded {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	m := regexp.MustCompile(`verified against their integrity in the shared cache \(\S+; the job waited (\S+) for it\)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no prefetch wait in the log:\n%s", log)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil || d < 200*time.Millisecond || d > 300*time.Millisecond+time.Second {
		t.Errorf("the job waited %s (%v), want about the prefetch's 300ms", m[1], err)
	}
}

// The gateway's events land in the agent's local audit log with the
// network's (DATA_DIR/egress.jsonl); a log that cannot be opened fails the
// job before anything exists.
func TestGatewayEventsLandInTheLocalAuditLog(t *testing.T) {
	dataDir := t.TempDir()
	ev := api.EgressEvent{Job: "j-1", Proto: "http", Method: "PUT", Path: "/-/user/org.couchdb.user:x", Status: 403, Verdict: api.VerdictDeny, Rule: gateway.RuleRegistryWrite}
	w := &world{gwEvent: &ev}
	res, log := run(t, newFakeExecutor(t, w, func(c *Config) { c.DataDir = dataDir }), w, api.JobSpec{})
	if res.State != api.StateSucceeded {
		t.Fatalf("result = %+v\n%s", res, log)
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "egress.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var got api.EgressEvent
	if err := json.Unmarshal(b, &got); err != nil || got.Method != "PUT" || got.Rule != gateway.RuleRegistryWrite || got.Status != 403 {
		t.Errorf("egress.jsonl = %q (%v), want the gateway's event", b, err)
	}

	dataDir = t.TempDir()
	if err := os.Mkdir(filepath.Join(dataDir, "egress.jsonl"), 0o700); err != nil {
		t.Fatal(err)
	}
	w = &world{gwEvent: &ev}
	res, log = run(t, newFakeExecutor(t, w, func(c *Config) { c.DataDir = dataDir }), w, api.JobSpec{})
	if res.State != api.StateFailed || !strings.Contains(res.Reason, "registry gateway events cannot be audited") || w.has("network setup") || w.has("sandbox create") {
		t.Errorf("result = %+v, calls %v, want failed before any network or sandbox\n%s", res, w.log(), log)
	}
}
