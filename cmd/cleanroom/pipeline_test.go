package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

const testRegistry = "http://registry.test:4873/"

// startCoordinatorWith is startCoordinator with changes to its config.
func startCoordinatorWith(t *testing.T, change func(*coordinator.Config)) (string, string) {
	t.Helper()
	admin := coordinator.NewAdminToken()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := coordinator.Config{DataDir: t.TempDir(), AdminToken: admin, LeaseTTL: 30 * time.Second}
	change(&cfg)
	srv, err := coordinator.New(context.Background(), cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, "", "") }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serving: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), admin
}

// registerRunner registers a runner and returns its client.
func registerRunner(t *testing.T, url, admin string) *api.Client {
	t.Helper()
	ctx := context.Background()
	tok, err := api.NewClient(url, admin).CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	reg, err := api.NewClient(url, "").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: "r", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(url, reg.RunnerToken)
}

// claim claims one job for runner, reporting testRegistry; nil when none
// came within wait.
func claim(t *testing.T, runner *api.Client, wait time.Duration) *api.Claim {
	t.Helper()
	resp, err := runner.Claim(context.Background(), api.ClaimRequest{Slots: 1, Wait: api.Duration(wait), Registries: []string{testRegistry}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Claims) == 0 {
		return nil
	}
	return &resp.Claims[0]
}

func lockfile(registry string) string {
	return `{"name":"app","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{` +
		`"":{"name":"app","version":"1.0.0","dependencies":{"ms":"2.1.3"}},` +
		`"node_modules/ms":{"version":"2.1.3","resolved":"` + registry + `ms/-/ms-2.1.3.tgz",` +
		`"integrity":"sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="}}}`
}

// writeProject writes files below a new directory.
func writeProject(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// dirtyProject is a project with everything submit must not upload.
func dirtyProject(t *testing.T) string {
	return writeProject(t, map[string]string{
		"cleanroom.yaml":        "build: npm run build\nartifacts: [dist/]\n",
		"package.json":          `{"name":"app","version":"1.0.0"}`,
		"package-lock.json":     lockfile(testRegistry),
		"src/index.js":          "console.log(1)\n",
		".env":                  "DEPLOY_KEY=live-secret\n",
		".env.production":       "DEPLOY_KEY=live-secret\n",
		".env.example":          "DEPLOY_KEY=\n",
		".npmrc":                "registry=" + testRegistry + "\n//registry.test:4873/:_authToken=npm_personal_token\n",
		".gitignore":            "coverage/\n*.log\n",
		"coverage/lcov.info":    "c",
		"debug.log":             "d",
		"web/.gitignore":        "local-config.json\n",
		"web/local-config.json": "{}",
		"web/app.js":            "1",
		".cleanroomignore":      "fixtures/large/\n",
		"fixtures/large/a.bin":  "big",
		"dist/app.js":           "stale build output",
		"node_modules/ms/i.js":  "x",
	})
}

func archiveNames(t *testing.T, tgz []byte) []string {
	t.Helper()
	return testutil.TarGzNames(t, bytes.NewReader(tgz))
}

func exitOf(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if !errors.As(err, &ee) {
		t.Fatalf("running the CLI: %v", err)
	}
	return ee.ExitCode()
}

// The archive the coordinator stores holds neither secrets, nor ignored
// files, nor the stale build output; --dry-run says so and sends nothing.
func TestSubmitUploadsNoSecretsIgnoredFilesOrStaleOutputs(t *testing.T) {
	url, admin := startCoordinator(t)
	ctx := context.Background()
	runner := registerRunner(t, url, admin)
	claim(t, runner, 10*time.Millisecond) // online, with its registries
	dir := dirtyProject(t)

	dry, out, errOut := cliCmd(t, url, admin, "submit", "--dry-run", dir)
	if err := dry.Run(); err != nil {
		t.Fatalf("submit --dry-run: %v\n%s", err, errOut)
	}
	for _, want := range []string{"would upload 9 files", ".env  ", "environment file", ".npmrc", "holds credentials", "dist/", "artifacts",
		"coverage/", "ignored by .gitignore:1: coverage/", "web/local-config.json", "ignored by web/.gitignore:1", "fixtures/large/", ".cleanroomignore:1"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--dry-run output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out.String(), "npm_personal_token") {
		t.Errorf("--dry-run prints the credential:\n%s", out)
	}
	if jobs, err := api.NewClient(url, admin).ListJobs(ctx, api.JobFilter{}); err != nil || len(jobs) != 0 {
		t.Fatalf("after --dry-run the coordinator has jobs %v (%v), want none", jobs, err)
	}

	sub, out, errOut := cliCmd(t, url, admin, "submit", dir)
	if err := sub.Run(); err != nil {
		t.Fatalf("submit: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut.String(), "uploading 9 files") || !strings.Contains(errOut.String(), "lockfile package-lock.json: 1 packages") {
		t.Errorf("submit stderr does not give the count and the gate's verdict:\n%s", errOut)
	}
	c := claim(t, runner, 10*time.Second)
	if c == nil || c.Job.ID != strings.TrimSpace(out.String()) {
		t.Fatalf("claimed %+v, want job %s", c, out)
	}
	var src bytes.Buffer
	if _, err := runner.DownloadSource(ctx, c.Job.ID, c.Lease.Token, &src); err != nil {
		t.Fatal(err)
	}
	got := archiveNames(t, src.Bytes())
	want := []string{".cleanroomignore", ".env.example", ".gitignore", "cleanroom.yaml", "fixtures/", "package-lock.json", "package.json",
		"src/", "src/index.js", "web/", "web/.gitignore", "web/app.js"}
	if !slices.Equal(got, want) {
		t.Fatalf("stored archive has %q\nwant %q", got, want)
	}
	if bytes.Contains(src.Bytes(), []byte("live-secret")) || bytes.Contains(src.Bytes(), []byte("npm_personal_token")) {
		t.Fatal("the stored archive holds a secret")
	}
}

// A lockfile from a registry the runners do not allow is refused at the
// desk, with the violations the agent would print, before any upload.
func TestSubmitRefusesAForeignLockfileBeforeUploading(t *testing.T) {
	url, admin := startCoordinator(t)
	runner := registerRunner(t, url, admin)
	claim(t, runner, 10*time.Millisecond)
	dir := writeProject(t, map[string]string{
		"cleanroom.yaml":    "build: npm run build\n",
		"package.json":      `{"name":"app","version":"1.0.0"}`,
		"package-lock.json": lockfile("https://registry.npmjs.org/"),
	})
	sub, _, errOut := cliCmd(t, url, admin, "submit", dir)
	if code := exitOf(t, sub.Run()); code != exitRefused {
		t.Fatalf("submit exit %d, want %d (refused); stderr:\n%s", code, exitRefused, errOut)
	}
	if !strings.Contains(errOut.String(), "package-lock.json rejected by policy: 1 violation(s)") || !strings.Contains(errOut.String(), "node_modules/ms") {
		t.Errorf("stderr does not list the violation:\n%s", errOut)
	}
	if jobs, _ := api.NewClient(url, admin).ListJobs(context.Background(), api.JobFilter{}); len(jobs) != 0 {
		t.Fatalf("a refused project was submitted: %v", jobs)
	}
	os.Remove(filepath.Join(dir, "package-lock.json"))
	sub, _, errOut = cliCmd(t, url, admin, "submit", dir)
	if code := exitOf(t, sub.Run()); code != exitRefused || !strings.Contains(errOut.String(), "no package-lock.json") {
		t.Fatalf("submit without a lockfile: exit %d, want %d; stderr:\n%s", code, exitRefused, errOut)
	}
}

// Every failure class exits with its documented code, through the real CLI
// against a real coordinator; a build's own exit code passes through.
func TestExitCodesOfEveryFailureClass(t *testing.T) {
	url, admin := startCoordinatorWith(t, func(c *coordinator.Config) {
		c.LeaseTTL, c.ReapInterval = time.Second, 100*time.Millisecond
		c.MaxUpload = 200
	})
	ctx := context.Background()
	adminCl := api.NewClient(url, admin)
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String()
	dead.Close()
	spec := filepath.Join(t.TempDir(), "cleanroom.yaml")
	os.WriteFile(spec, []byte("build: npm run build\nmax_attempts: 1\n"), 0o644)
	git := []string{"submit", "--git", "https://git.example/app.git", "--commit", strings.Repeat("a", 40), "--spec", spec}
	big := writeProject(t, map[string]string{"cleanroom.yaml": "build: npm run build\n", "package.json": "{}",
		"package-lock.json": lockfile(testRegistry), "blob": strings.Repeat("x\n", 100000)})
	random := func() string {
		b := make([]byte, 4096)
		rand.Read(b)
		return string(b)
	}
	os.WriteFile(filepath.Join(big, "random"), []byte(random()), 0o644)

	// jobAction runs against the job submit --wait created (found by listing).
	type jobAction func(t *testing.T, runner *api.Client)
	// finishAs claims the job and reports the result an agent would, with
	// its failure class.
	finishAs := func(state string, exit int, reason, class string) jobAction {
		return func(t *testing.T, runner *api.Client) {
			c := claim(t, runner, 10*time.Second)
			if c == nil {
				t.Fatal("no job to claim")
			}
			if err := runner.Result(ctx, c.Job.ID, api.ResultRequest{Token: c.Lease.Token, State: state, ExitCode: exit, Reason: reason, Class: class}); err != nil {
				t.Fatal(err)
			}
		}
	}
	finish := func(state string, exit int) jobAction { return finishAs(state, exit, "build step failed", "") }
	tests := []struct {
		name   string
		url    string
		token  string
		args   []string
		action jobAction
		want   int
		stderr string
		stdout string // with --json: in the one result object
	}{
		{"usage: no directory", url, admin, []string{"submit"}, nil, exitUsage, "give either", ""},
		{"usage: unknown flag", url, admin, []string{"submit", "--frobnicate"}, nil, exitUsage, "unknown flag", ""},
		{"auth: wrong token", url, "cr_wrong", git, nil, exitAuth, "unauthorized", ""},
		{"unreachable", deadURL, admin, []string{"status", "j1"}, nil, exitUnreachable, "connection refused", ""},
		{"unreachable while following", deadURL, admin, []string{"logs", "-f", "--retry-for", "2s", "j1"}, nil, exitUnreachable, "giving up", ""},
		{"refused: upload over the coordinator's cap (400)", url, admin, []string{"submit", big}, nil, exitRefused, "upload larger than", ""},
		{"build failure passes its exit code through", url, admin, append(slices.Clone(git), "--wait"), finish(api.StateFailed, 3), 3, "failed: build step failed", ""},
		{"build failure with a code of cleanroom's passes through", url, admin, append(slices.Clone(git), "--wait", "--json"),
			finishAs(api.StateFailed, 65, "build step failed: exit 65", api.ClassBuild), 65, "failed: build step failed", `"failure_class": "build"`},
		{"refused by the runner's policy", url, admin, append(slices.Clone(git), "--wait", "--json"),
			finishAs(api.StateFailed, 1, "lockfile rejected: 1 violation(s)", api.ClassRefused), exitRefused, "refused: lockfile rejected", `"failure_class": "refused"`},
		{"ended by policy while running", url, admin, append(slices.Clone(git), "--wait"),
			finishAs(api.StateFailed, 137, "egress violation", api.ClassPolicy), exitPolicy, "ended by policy: egress violation", ""},
		{"runner could not set up the sandbox", url, admin, append(slices.Clone(git), "--wait"),
			finishAs(api.StateFailed, 1, "creating the sandbox: image not found", api.ClassInfrastructure), exitInternal, "failed in cleanroom: creating the sandbox", ""},
		{"the job's own timeout", url, admin, append(slices.Clone(git), "--wait", "--json"),
			finishAs(api.StateFailed, 143, "timed out after 30m0s", api.ClassTimeout), exitTimeout, "timed out: timed out after 30m0s", `"failure_class": "timeout"`},
		{"agent shut down under the job", url, admin, append(slices.Clone(git), "--wait"),
			finishAs(api.StateCanceled, -1, "agent shutting down", api.ClassInfrastructure), exitInternal, "agent shutting down", ""},
		{"success", url, admin, append(slices.Clone(git), "--wait"), finish(api.StateSucceeded, 0), 0, "", ""},
		{"canceled", url, admin, append(slices.Clone(git), "--wait"), func(t *testing.T, _ *api.Client) {
			jobs, _ := adminCl.ListJobs(ctx, api.JobFilter{State: api.StateQueued})
			if len(jobs) != 1 {
				t.Fatalf("queued jobs %v", jobs)
			}
			if _, err := adminCl.CancelJob(ctx, jobs[0].ID); err != nil {
				t.Fatal(err)
			}
		}, exitCanceled, "canceled", ""},
		{"lost", url, admin, append(slices.Clone(git), "--wait"), func(t *testing.T, runner *api.Client) {
			if claim(t, runner, 10*time.Second) == nil { // and never heard of again
				t.Fatal("no job to claim")
			}
		}, exitLost, "lost", ""},
		{"timeout", url, admin, append(slices.Clone(git), "--wait", "--wait-timeout", "1500ms"), nil, exitTimeout, "--wait-timeout", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var runner *api.Client
			if tt.action != nil {
				runner = registerRunner(t, url, admin)
			}
			cmd, out, errOut := cliCmd(t, tt.url, tt.token, tt.args...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-waited
			})
			if tt.action != nil {
				if tt.name == "canceled" {
					time.Sleep(500 * time.Millisecond) // submitted
				}
				tt.action(t, runner)
			}
			var err error
			select {
			case err = <-waited:
				waited <- err
			case <-time.After(30 * time.Second):
				t.Fatal("the CLI did not end")
			}
			if code := exitOf(t, err); code != tt.want || !strings.Contains(errOut.String(), tt.stderr) {
				t.Fatalf("%v: exit %d, want %d; stderr (want %q):\n%s", tt.args, code, tt.want, tt.stderr, errOut)
			}
			if !strings.Contains(out.String(), tt.stdout) {
				t.Fatalf("stdout = %s, want it to contain %s", out, tt.stdout)
			}
			if tt.stdout != "" { // status and jobs --json show the class too
				var res result
				if err := json.Unmarshal(out.Bytes(), &res); err != nil {
					t.Fatal(err)
				}
				for _, args := range [][]string{{"status", res.ID}, {"jobs", "--json"}} {
					c, o, e := cliCmd(t, url, admin, args...)
					want := regexp.MustCompile(`failure class:\s+` + res.FailureClass + "\n")
					if args[0] == "jobs" {
						want = regexp.MustCompile(regexp.QuoteMeta(tt.stdout))
					}
					if err := c.Run(); err != nil || !want.MatchString(o.String()) {
						t.Fatalf("%v: %v, stdout (want %q):\n%s%s", args, err, want, o, e)
					}
				}
			}
			// Leave no job behind for the next case to claim.
			jobs, _ := adminCl.ListJobs(ctx, api.JobFilter{State: api.StateQueued})
			for _, j := range jobs {
				adminCl.CancelJob(ctx, j.ID)
			}
			if runner != nil {
				adminCl.RemoveRunner(ctx, "r")
			}
		})
	}
}

// submit --wait --json prints the log on stderr and exactly one JSON object
// on stdout; while queued it says why.
func TestSubmitWaitJSONPrintsOneObjectAndSaysWhyQueued(t *testing.T) {
	url, admin := startCoordinator(t)
	ctx := context.Background()
	spec := filepath.Join(t.TempDir(), "cleanroom.yaml")
	os.WriteFile(spec, []byte("build: npm run build\nlabels: {gpu: \"yes\"}\n"), 0o644)
	cmd, out, errOut := cliCmd(t, url, admin, "submit", "--git", "https://git.example/app.git", "--commit", strings.Repeat("b", 40), "--spec", spec, "--wait", "--json")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-waited
	})
	runner := registerRunner(t, url, admin)
	claim(t, runner, 1500*time.Millisecond) // no gpu: the job stays queued
	adminCl := api.NewClient(url, admin)
	var id string
	deadline := time.Now().Add(10 * time.Second)
	for id == "" && time.Now().Before(deadline) {
		if jobs, _ := adminCl.ListJobs(ctx, api.JobFilter{}); len(jobs) == 1 {
			id = jobs[0].ID
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // the CLI polls once a second
	// Now a runner with the label takes it.
	tok, _ := adminCl.CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1})
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	reg, err := api.NewClient(url, "").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: "gpu", Labels: map[string]string{"gpu": "yes"}, PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	gpu := api.NewClient(url, reg.RunnerToken)
	c := claim(t, gpu, 10*time.Second)
	if c == nil || c.Job.ID != id {
		t.Fatalf("claimed %+v, want %s", c, id)
	}
	line := api.AgentLine("building on gpu")
	if _, err := gpu.AppendLog(ctx, id, c.Lease.Token, 0, []byte(line)); err != nil {
		t.Fatal(err)
	}
	if err := gpu.Result(ctx, id, api.ResultRequest{Token: c.Lease.Token, State: api.StateSucceeded, LogSize: int64(len(line))}); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-waited:
		waited <- err
	case <-time.After(30 * time.Second):
		t.Fatal("submit --wait did not end")
	}
	if err != nil {
		t.Fatalf("submit --wait --json: %v\n%s", err, errOut)
	}
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	var res map[string]any
	if err := dec.Decode(&res); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, out)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("stdout has more than one JSON value:\n%s", out)
	}
	if res["id"] != id || res["state"] != api.StateSucceeded || res["cleanroom_exit"] != float64(0) {
		t.Errorf("result = %v", res)
	}
	if _, ok := res["artifacts"].([]any); !ok {
		t.Errorf("result has no artifacts list: %v", res)
	}
	for _, want := range []string{"queued: no runner online has labels gpu=yes (1 online)", "[cleanroom] building on gpu"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}
