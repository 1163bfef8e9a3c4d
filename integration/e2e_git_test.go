package integration

// This file sorts before e2e_test.go on purpose: go test runs files in name
// order, and TestNoResidueAfterAllScenarios there must run last.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

const (
	laneGit = "git"
	// gitMaxBytes is the git agent's git.max_bytes: the hello repository
	// fits, the "big" one does not.
	gitMaxBytes = 2 << 20
)

var gitSuite struct {
	once   sync.Once
	srv    *lab.GitServer
	err    error
	agent  *harness.Agent
	commit map[string]string
}

// gitEnv returns the shared environment with the lab's git server (the
// hello example and a repository bigger than the git agent's limit) and an
// agent whose only git host is that server.
func gitEnv(t *testing.T) (*harness.Env, *harness.Agent, map[string]string) {
	t.Helper()
	e := env(t)
	gitSuite.once.Do(func() {
		ctx := timeout(t, 2*time.Minute)
		if gitSuite.srv, gitSuite.err = e.StartGit(); gitSuite.err != nil {
			return
		}
		gitSuite.commit = map[string]string{}
		hello := copyExample(t, "hello")
		editSpec(t, hello, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneGit} })
		big := copyExample(t, "hello")
		editSpec(t, big, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneGit} })
		// Random bytes do not compress: the pack alone is over the limit.
		blob := make([]byte, 2*gitMaxBytes)
		_, _ = rand.Read(blob)
		if gitSuite.err = os.WriteFile(filepath.Join(big, "blob.bin"), blob, 0o644); gitSuite.err != nil {
			return
		}
		for name, dir := range map[string]string{"hello": hello, "big": big} {
			if gitSuite.commit[name], gitSuite.err = gitSuite.srv.AddRepo(ctx, name, dir); gitSuite.err != nil {
				return
			}
		}
		gitSuite.agent = agentFor(t, e, "git", harness.AgentOptions{
			Labels: "lane=" + laneGit,
			Hosts:  map[string]string{lab.GitName: lab.RegistryIP.String()},
			Git: agent.GitConfig{
				Hosts:    []string{net.JoinHostPort(lab.GitName, "8443")},
				CAFile:   gitSuite.srv.CAFile,
				MaxBytes: gitMaxBytes,
			},
		})
	})
	if gitSuite.err != nil {
		t.Fatalf("setting up the lab git server: %v", gitSuite.err)
	}
	if gitSuite.agent == nil {
		t.Fatal("the git agent did not start (see the first test that tried)")
	}
	return e, gitSuite.agent, gitSuite.commit
}

// submitGit submits a git source with the hello example's spec (lane git).
func submitGit(ctx context.Context, t *testing.T, e *harness.Env, url, commit string) string {
	t.Helper()
	spec := filepath.Join(t.TempDir(), "cleanroom.yaml")
	writeYAML(t, spec, map[string]any{"build": "npm run build", "artifacts": []string{"dist/"}, "timeout": "5m",
		"labels": map[string]any{"lane": laneGit}})
	var j api.Job
	if err := json.Unmarshal([]byte(cli(ctx, t, e, "submit", "--git", url, "--commit", commit, "--spec", spec, "--json")), &j); err != nil || j.ID == "" {
		t.Fatalf("submit --git --json: no job: %v", err)
	}
	suite.mu.Lock()
	suite.jobs = append(suite.jobs, j.ID)
	suite.mu.Unlock()
	return j.ID
}

// A git source on the allowed lab git server is fetched in the cage — its
// connection and DNS answer audited under the job — and builds end to end,
// with the URL and commit in the signed provenance.
func TestGitSourceFromAllowedHostBuilds(t *testing.T) {
	e, a, commits := gitEnv(t)
	ctx := timeout(t, 4*time.Minute)
	url := harness.GitURL("hello")
	id := submitGit(ctx, t, e, url, commits["hello"])
	j := waitTerminal(ctx, t, e, id, 3*time.Minute)
	log := jobLog(ctx, t, e, id)
	if j.State != api.StateSucceeded {
		t.Fatalf("job %s: state %s (%s), want succeeded; log:\n%s", id, j.State, j.Reason, log)
	}
	for _, s := range []string{"in a network namespace of its own: egress only to 10.231.254.2:8443 (" + lab.GitName + ")",
		"git source checked out at " + commits["hello"], "build step done"} {
		if !strings.Contains(log, s) {
			t.Errorf("log lacks %q:\n%s", s, log)
		}
	}
	_, events := egress(ctx, t, e, "--job", id)
	gitDst := net.JoinHostPort(lab.RegistryIP.String(), "8443")
	if !slices.ContainsFunc(events, func(ev api.EgressEvent) bool {
		return ev.Proto == "tcp" && ev.Dst == gitDst && ev.Verdict == api.VerdictAllow && ev.Job == id && ev.Runner == a.RunnerID()
	}) {
		t.Errorf("no allowed tcp %s event under job %s: %+v", gitDst, id, events)
	}
	if !slices.ContainsFunc(events, func(ev api.EgressEvent) bool {
		return ev.Proto == "dns" && strings.TrimSuffix(ev.Domain, ".") == lab.GitName && ev.Verdict == api.VerdictAllow
	}) {
		t.Errorf("git's DNS lookup of %s did not go through the responder: %+v", lab.GitName, events)
	}
	assertSandboxGone(ctx, t, e, id)
	out := filepath.Join(t.TempDir(), "artifacts")
	cli(ctx, t, e, "artifacts", id, "-o", out)
	raw, err := os.ReadFile(filepath.Join(out, "provenance.intoto.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Payload []byte `json:"payload"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("decoding the provenance envelope: %v", err)
	}
	if !strings.Contains(string(env.Payload), commits["hello"]) || !strings.Contains(string(env.Payload), url) {
		t.Errorf("provenance does not name %s at %s:\n%s", url, commits["hello"], env.Payload)
	}
}

// A git source on a host that is not among the agent's git hosts: the
// attempt is refused in the cage's namespace (no packet reaches the
// forbidden host), it is in the job's egress log, and the job fails
// before any sandbox exists, saying why.
func TestGitSourceFromForbiddenHostIsRefusedAndAudited(t *testing.T) {
	e, _, commits := gitEnv(t)
	ctx := timeout(t, 3*time.Minute)
	tests := []struct {
		name, url string
		audited   func(api.EgressEvent) bool
	}{
		{"address", "https://" + lab.ForbiddenIP.String() + "/hello.git", func(ev api.EgressEvent) bool {
			return ev.Proto == "tcp" && ev.Dst == net.JoinHostPort(lab.ForbiddenIP.String(), "443") && ev.Verdict == api.VerdictDeny
		}},
		{"name", "https://exfil-git.example/hello.git", func(ev api.EgressEvent) bool {
			return ev.Proto == "dns" && strings.HasPrefix(ev.Domain, "exfil-git.example") && ev.Verdict == api.VerdictDeny
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fbd := len(e.Lab.ForbiddenPackets())
			watch := watchContainerd(ctx, t)
			id := submitGit(ctx, t, e, tc.url, commits["hello"])
			j := waitTerminal(ctx, t, e, id, 2*time.Minute)
			log := jobLog(ctx, t, e, id)
			t.Logf("job %s: %s: %s", id, j.State, j.Reason)
			if j.State != api.StateFailed || !strings.Contains(j.Reason, "is not among this runner's git hosts") {
				t.Errorf("job %s: %s (%s), want failed naming the git hosts; log:\n%s", id, j.State, j.Reason, log)
			}
			raw, events := egress(ctx, t, e, "--job", id)
			if !slices.ContainsFunc(events, func(ev api.EgressEvent) bool { return tc.audited(ev) && ev.Job == id }) {
				t.Errorf("the refused attempt is not in job %s's egress log:\n%s", id, raw)
			}
			for _, s := range []string{"[cleanroom] sandbox ", "$ npm ci"} {
				if strings.Contains(log, s) {
					t.Errorf("the job went on after its source was refused: %q in\n%s", s, log)
				}
			}
			for _, ev := range watch() {
				if strings.Contains(ev, id) {
					t.Errorf("containerd saw %s for job %s, whose source was refused", ev, id)
				}
			}
			sleepCtx(ctx, 500*time.Millisecond) // a late packet would be recorded by now
			if p := e.Lab.ForbiddenPackets()[fbd:]; len(p) > 0 {
				t.Errorf("the forbidden host received %d packet(s): %v", len(p), p)
			}
			assertSandboxGone(ctx, t, e, id)
		})
	}
}

// A repository bigger than the agent's git.max_bytes is refused while it
// is fetched, with a reason naming the limit.
func TestGitSourceBiggerThanTheLimitIsRefused(t *testing.T) {
	e, _, commits := gitEnv(t)
	ctx := timeout(t, 3*time.Minute)
	id := submitGit(ctx, t, e, harness.GitURL("big"), commits["big"])
	j := waitTerminal(ctx, t, e, id, 2*time.Minute)
	t.Logf("job %s: %s: %s", id, j.State, j.Reason)
	if j.State != api.StateFailed || !strings.Contains(j.Reason, "git.max_bytes") || !strings.Contains(j.Reason, api.ByteSize(gitMaxBytes).String()) {
		t.Errorf("job %s: %s (%s), want failed naming git.max_bytes; log:\n%s", id, j.State, j.Reason, jobLog(ctx, t, e, id))
	}
	assertSandboxGone(ctx, t, e, id)
}
