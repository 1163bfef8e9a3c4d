package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// env is a real coordinator on 127.0.0.1 (SQLite in a temp dir) plus
// helpers to register and run agents against it.
type env struct {
	t     testing.TB
	dir   string
	addr  string
	URL   string
	admin *api.Client
	cfg   coordinator.Config
	stop  context.CancelFunc
	done  chan error
	tr    *http.Transport
}

func newEnv(t testing.TB, ttl time.Duration, tweaks ...func(*coordinator.Config)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), tr: &http.Transport{}}
	tok := coordinator.NewAdminToken()
	e.cfg = coordinator.Config{DataDir: filepath.Join(e.dir, "coord"), AdminToken: tok, LeaseTTL: ttl, ReapInterval: ttl / 5}
	for _, tweak := range tweaks {
		tweak(&e.cfg)
	}
	e.start("127.0.0.1:0")
	e.admin = api.NewClient(e.URL, tok)
	e.admin.HTTP = &http.Client{Transport: e.tr}
	t.Cleanup(func() { e.Stop(); e.tr.CloseIdleConnections() })
	return e
}

func (e *env) start(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		e.t.Fatalf("listening: %v", err)
	}
	e.addr, e.URL = ln.Addr().String(), "http://"+ln.Addr().String()
	srv, err := coordinator.New(context.Background(), e.cfg)
	if err != nil {
		ln.Close()
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.stop, e.done = cancel, make(chan error, 1)
	go func() { e.done <- srv.Serve(ctx, ln, "", "") }()
}

func (e *env) Stop() {
	if e.stop != nil {
		e.stop()
		<-e.done
		e.stop = nil
	}
}

// register runs agent.Register and returns the written config.
func (e *env) register(name string, concurrency int, labels map[string]string) *agent.Config {
	e.t.Helper()
	ctx := context.Background()
	tok, err := e.admin.CreateToken(ctx, api.TokenRequest{Uses: 1, Expires: api.Duration(time.Hour)})
	if err != nil {
		e.t.Fatal(err)
	}
	cfgPath := filepath.Join(e.dir, name, "agent.yaml")
	cfg, err := agent.Register(ctx, agent.RegisterOptions{URL: e.URL, Token: tok.Token, Name: name, Labels: labels,
		Concurrency: concurrency, ConfigPath: cfgPath, HTTP: &http.Client{Transport: e.tr}})
	if err != nil {
		e.t.Fatal(err)
	}
	loaded, err := agent.LoadConfig(cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	if loaded.RunnerID != cfg.RunnerID {
		e.t.Fatalf("config round trip: %+v", loaded)
	}
	return loaded
}

// runAgent starts an agent; the returned stop function stops it gracefully
// and returns Run's error.
func (e *env) runAgent(cfg *agent.Config, ex agent.Executor, tweak func(*agent.Agent)) (*agent.Agent, func() error) {
	e.t.Helper()
	a, err := agent.New(cfg, ex, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	a.Client().HTTP = &http.Client{Transport: e.tr}
	a.ClaimWait = 2 * time.Second
	a.ReportTimeout = 20 * time.Second
	if tweak != nil {
		tweak(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	e.t.Cleanup(func() { stop() })
	return a, stop
}

func (e *env) upload(files map[string]string, spec api.JobSpec) api.Job {
	e.t.Helper()
	var ents []entry
	for n, b := range files {
		ents = append(ents, entry{name: n, typ: tar.TypeReg, body: b})
	}
	data := tarGz(e.t, ents)
	h := sha256.Sum256(data)
	j, err := e.admin.SubmitUpload(context.Background(), spec, hex.EncodeToString(h[:]), bytes.NewReader(data))
	if err != nil {
		e.t.Fatal(err)
	}
	return j
}

func (e *env) waitState(id string, timeout time.Duration, states ...string) api.Job {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := e.admin.GetJob(context.Background(), id)
		if err == nil {
			for _, s := range states {
				if j.State == s {
					return j
				}
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("job %s is %s (%v), want %v", id, j.State, err, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) logOf(id string) string {
	var buf bytes.Buffer
	e.admin.ReadLog(context.Background(), id, 0, false, &buf)
	return buf.String()
}

var spec = api.JobSpec{Build: api.Build{Script: "npm run build"}}

func TestAgentRunsAnUploadedJobAndReportsEverything(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("a1", 1, nil)
	var wsSeen string
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		wsSeen = ws
		b, err := os.ReadFile(filepath.Join(ws, "package.json"))
		if err != nil {
			return agent.Result{}, err
		}
		fmt.Fprintf(out, "building %s\n", b)
		rep.Event(api.EgressEvent{Proto: "dns", Domain: "exfil.example", Verdict: api.VerdictDeny, Rule: "default-deny"})
		os.WriteFile(filepath.Join(ws, "app.js"), []byte("built"), 0o644)
		return agent.Result{Artifacts: []agent.Artifact{{Name: "dist/app.js", Path: filepath.Join(ws, "app.js")}}}, nil
	})
	_, stop := e.runAgent(cfg, ex, nil)
	j := e.upload(map[string]string{"package.json": `{"name":"app"}`}, spec)
	got := e.waitState(j.ID, 10*time.Second, api.StateSucceeded, api.StateFailed)
	if got.State != api.StateSucceeded || got.RunnerID != cfg.RunnerID {
		t.Fatalf("job = %+v\nlog:\n%s", got, e.logOf(j.ID))
	}
	if log := e.logOf(j.ID); !strings.Contains(log, `building {"name":"app"}`) {
		t.Fatalf("log = %q", log)
	}
	arts, _ := e.admin.ListArtifacts(context.Background(), j.ID)
	if len(arts) != 1 || arts[0].Name != "dist/app.js" {
		t.Fatalf("artifacts = %+v", arts)
	}
	var evs []api.EgressEvent
	e.admin.QueryEgress(context.Background(), api.EgressFilter{Job: j.ID}, func(ev api.EgressEvent) error { evs = append(evs, ev); return nil })
	if len(evs) != 1 || evs[0].Domain != "exfil.example" || evs[0].Runner != cfg.RunnerID {
		t.Fatalf("events = %+v", evs)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(wsSeen); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("workspace %s left behind: %v", wsSeen, err)
	}
}

// fetchingExec is an executor that fetches git sources (SourceFetcher):
// it writes what it was asked for into the workspace, and a link that
// leaves it when link is set.
type fetchingExec struct {
	agent.ExecutorFunc
	link bool
}

func (f fetchingExec) FetchGit(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) error {
	fmt.Fprintf(out, "[cleanroom] fetching %s in a cage\n", job.Source.URL)
	rep.Event(api.EgressEvent{Proto: "tcp", Dst: "10.0.0.9:443", Verdict: api.VerdictAllow})
	if f.link {
		if err := os.Symlink("/etc", filepath.Join(ws, "etc")); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(ws, "v.txt"), []byte(job.Source.Commit[:7]), 0o644)
}

// A git source is fetched by the executor's cage, with its log lines and
// egress events under the job; the links check still applies.
func TestAgentFetchesGitThroughTheExecutor(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("g", 1, nil)
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		b, _ := os.ReadFile(filepath.Join(ws, "v.txt"))
		fmt.Fprintf(out, "v=%s\n", b)
		return agent.Result{}, nil
	})
	e.runAgent(cfg, fetchingExec{ExecutorFunc: ex}, nil)
	commit := "0123456789abcdef0123456789abcdef01234567"
	j, err := e.admin.SubmitGit(context.Background(), spec, api.Source{Kind: api.SourceGit, URL: "https://git.example/app.git", Commit: commit})
	if err != nil {
		t.Fatal(err)
	}
	e.waitState(j.ID, 20*time.Second, api.StateSucceeded)
	if log := e.logOf(j.ID); !strings.Contains(log, "v=0123456") || !strings.Contains(log, "fetching https://git.example/app.git in a cage") {
		t.Fatalf("log = %q", log)
	}
	var evs []api.EgressEvent
	e.admin.QueryEgress(context.Background(), api.EgressFilter{Job: j.ID}, func(ev api.EgressEvent) error { evs = append(evs, ev); return nil })
	if len(evs) != 1 || evs[0].Dst != "10.0.0.9:443" {
		t.Fatalf("the fetch's egress events are not the job's: %+v", evs)
	}
}

// A git source is refused before the executor runs when the executor
// cannot fetch git in a cage (the job loop never clones on the host
// itself), or when the fetched tree has a link leaving the workspace.
func TestAgentRefusesGitSources(t *testing.T) {
	tests := []struct {
		name       string
		exec       func(agent.ExecutorFunc) agent.Executor
		wantReason string
	}{
		{"executor without a cage", func(f agent.ExecutorFunc) agent.Executor { return f }, "git sources are not supported"},
		{"link leaving the workspace", func(f agent.ExecutorFunc) agent.Executor { return fetchingExec{ExecutorFunc: f, link: true} }, "unsafe"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			e := newEnv(t, 5*time.Second)
			cfg := e.register("g", 1, nil)
			var ran atomic.Bool
			e.runAgent(cfg, tc.exec(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
				ran.Store(true)
				return agent.Result{}, nil
			}), nil)
			j, err := e.admin.SubmitGit(context.Background(), spec, api.Source{Kind: api.SourceGit, URL: "https://git.example/app.git", Commit: strings.Repeat("a", 40)})
			if err != nil {
				t.Fatal(err)
			}
			got := e.waitState(j.ID, 10*time.Second, api.StateFailed, api.StateSucceeded)
			if got.State != api.StateFailed || !strings.Contains(got.Reason, tc.wantReason) || ran.Load() {
				t.Fatalf("job = %+v, executor ran = %v; want failed saying %q", got, ran.Load(), tc.wantReason)
			}
		})
	}
}

func TestAgentRefusesAnArchiveThatEscapes(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("x", 1, nil)
	var ran atomic.Bool
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		ran.Store(true)
		return agent.Result{}, nil
	})
	e.runAgent(cfg, ex, nil)
	data := tarGz(t, []entry{{name: "../../evil", typ: tar.TypeReg, body: "x"}})
	h := sha256.Sum256(data)
	j, err := e.admin.SubmitUpload(context.Background(), spec, hex.EncodeToString(h[:]), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	got := e.waitState(j.ID, 10*time.Second, api.StateFailed, api.StateSucceeded)
	if got.State != api.StateFailed || !strings.Contains(got.Reason, "unsafe archive") || ran.Load() {
		t.Fatalf("job = %+v, executor ran = %v", got, ran.Load())
	}
}

// blocking is an executor that writes a line and waits for ctx.
// redactingExec fails with an error that carries a secret, as a step's
// error message might, and knows how to redact it.
type redactingExec struct{ secret string }

func (r redactingExec) Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
	return agent.Result{Artifacts: []agent.Artifact{{Name: "gone-" + r.secret, Path: filepath.Join(ws, "missing")}}},
		fmt.Errorf("fetching https://ci:%s@git.example/app.git: refused", r.secret)
}

func (r redactingExec) RedactString(s string) string {
	return strings.ReplaceAll(s, r.secret, "[REDACTED]")
}

func TestAgentRedactsItsOwnLinesAndTheReason(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	cfg := e.register("a1", 1, nil)
	const secret = "hunter2-deploy-token"
	_, stop := e.runAgent(cfg, redactingExec{secret: secret}, nil)
	defer stop()
	j := e.upload(map[string]string{"package.json": `{"name":"app"}`}, spec)
	got := e.waitState(j.ID, 10*time.Second, api.StateFailed, api.StateSucceeded)
	log := e.logOf(j.ID)
	if got.State != api.StateFailed || strings.Contains(got.Reason, secret) || !strings.Contains(got.Reason, "ci:[REDACTED]@") {
		t.Fatalf("reason %q (state %s)", got.Reason, got.State)
	}
	if strings.Contains(log, secret) || !strings.Contains(log, "ci:[REDACTED]@") || !strings.Contains(log, "artifact gone-[REDACTED]") {
		t.Fatalf("log:\n%s", log)
	}
}

// sizedExec is an executor with limits, which the agent advertises.
type sizedExec struct{ agent.ExecutorFunc }

func (sizedExec) Capacity() api.Resources { return api.Resources{Memory: 2 << 30, CPUs: 2} }

func TestAgentClaimsOnlyJobsThatFitItsLimits(t *testing.T) {
	e := newEnv(t, 5*time.Second)
	cfg := e.register("a1", 1, nil)
	ran := make(chan string, 4)
	ex := sizedExec{agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		ran <- job.ID
		return agent.Result{}, nil
	})}
	_, stop := e.runAgent(cfg, ex, nil)
	defer stop()
	big := spec
	big.Resources = api.Resources{Memory: 8 << 30}
	tooBig := e.upload(map[string]string{"package.json": `{}`}, big)
	fits := e.upload(map[string]string{"package.json": `{}`}, spec)
	e.waitState(fits.ID, 10*time.Second, api.StateSucceeded)
	if j, err := e.admin.GetJob(context.Background(), tooBig.ID); err != nil || j.State != api.StateQueued {
		t.Fatalf("job asking 8GiB of a 2GiB runner: %+v %v (want it left queued for a bigger runner)", j, err)
	}
	if id := <-ran; id != fits.ID {
		t.Fatalf("executor ran %s", id)
	}
}

func blocking(started chan<- string) agent.Executor {
	return agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		fmt.Fprintln(out, "started")
		if started != nil {
			started <- job.ID
		}
		<-ctx.Done()
		return agent.Result{ExitCode: 143}, nil
	})
}

func TestCancelReachesARunningJobAtOnce(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("c", 1, nil)
	started := make(chan string, 1)
	e.runAgent(cfg, blocking(started), nil)
	j := e.upload(map[string]string{"a": "b"}, spec)
	<-started
	t0 := time.Now()
	if _, err := e.admin.CancelJob(context.Background(), j.ID); err != nil {
		t.Fatal(err)
	}
	got := e.waitState(j.ID, 5*time.Second, api.StateCanceled)
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	if got.Reason != "canceled on request" || got.FailureClass != api.ClassCanceled {
		t.Fatalf("reason = %q, class %q", got.Reason, got.FailureClass)
	}
}

func TestJobTimeoutFailsTheJob(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("t", 1, nil)
	e.runAgent(cfg, blocking(nil), nil)
	s := spec
	s.Timeout = api.Duration(300 * time.Millisecond)
	j := e.upload(map[string]string{"a": "b"}, s)
	got := e.waitState(j.ID, 5*time.Second, api.StateFailed)
	if !strings.Contains(got.Reason, "timed out") || got.FailureClass != api.ClassTimeout {
		t.Fatalf("reason = %q, class %q", got.Reason, got.FailureClass)
	}
}

// The class tells the build's own failure from the agent's: an executor's
// failed result is the build's, an executor's error is cleanroom's.
func TestFailureClassOfExecutorOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		res   agent.Result
		err   error
		exit  int
		class string
	}{
		{"build exits 3", agent.Result{ExitCode: 3}, nil, 3, api.ClassBuild},
		{"executor's own class", agent.Result{ExitCode: 1, State: api.StateFailed, Class: api.ClassRefused}, nil, 1, api.ClassRefused},
		{"executor error", agent.Result{}, errors.New("host broke"), -1, api.ClassInfrastructure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.CheckGoroutines(t)
			e := newEnv(t, 5*time.Second)
			cfg := e.register("f", 1, nil)
			e.runAgent(cfg, agent.ExecutorFunc(func(context.Context, *api.Job, string, io.Writer, agent.Reporter) (agent.Result, error) {
				return tc.res, tc.err
			}), nil)
			j := e.upload(map[string]string{"a": "b"}, spec)
			got := e.waitState(j.ID, 5*time.Second, api.StateFailed)
			if got.FailureClass != tc.class || got.ExitCode == nil || *got.ExitCode != tc.exit {
				t.Fatalf("job = class %q, exit %v; want %q, %d", got.FailureClass, got.ExitCode, tc.class, tc.exit)
			}
		})
	}
}

func TestAgentRunsAtMostItsConcurrency(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("p", 2, nil)
	var cur, peak atomic.Int64
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(150 * time.Millisecond)
		cur.Add(-1)
		return agent.Result{}, nil
	})
	e.runAgent(cfg, ex, nil)
	var ids []string
	for i := 0; i < 6; i++ {
		ids = append(ids, e.upload(map[string]string{"i": fmt.Sprint(i)}, spec).ID)
	}
	for _, id := range ids {
		e.waitState(id, 10*time.Second, api.StateSucceeded)
	}
	if peak.Load() != 2 {
		t.Fatalf("peak concurrency %d, want 2", peak.Load())
	}
}

func TestGracefulStopLetsJobsFinishThenCancelsAfterGrace(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	tests := []struct {
		name      string
		jobTakes  time.Duration
		grace     time.Duration
		wantState string
	}{
		{"finishes within grace", 300 * time.Millisecond, 5 * time.Second, api.StateSucceeded},
		{"canceled after grace", time.Hour, 300 * time.Millisecond, api.StateCanceled},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.register(fmt.Sprintf("g%d", i), 1, nil)
			started := make(chan string, 1)
			ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
				started <- job.ID
				select {
				case <-time.After(tc.jobTakes):
					return agent.Result{}, nil
				case <-ctx.Done():
					return agent.Result{ExitCode: 143}, nil
				}
			})
			_, stop := e.runAgent(cfg, ex, func(a *agent.Agent) { a.GracePeriod = tc.grace })
			j := e.upload(map[string]string{"a": "b"}, spec)
			<-started
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			got, _ := e.admin.GetJob(context.Background(), j.ID)
			if got.State != tc.wantState {
				t.Fatalf("state after stop = %s (%s), want %s", got.State, got.Reason, tc.wantState)
			}
		})
	}
}

func TestAgentRidesOutACoordinatorRestartWithoutLosingLog(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 3*time.Second)
	cfg := e.register("r", 1, nil)
	release := make(chan struct{})
	started := make(chan string, 1)
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		started <- job.ID
		for i := 0; i < 20; i++ {
			fmt.Fprintf(out, "line %02d\n", i)
			if i == 10 {
				<-release
			}
			time.Sleep(20 * time.Millisecond)
		}
		rep.Event(api.EgressEvent{Proto: "tcp", Dst: "10.0.0.9:443", Verdict: api.VerdictDeny})
		return agent.Result{}, nil
	})
	e.runAgent(cfg, ex, nil)
	j := e.upload(map[string]string{"a": "b"}, spec)
	<-started
	time.Sleep(200 * time.Millisecond)
	e.Stop()
	close(release) // the job keeps writing while the coordinator is down
	time.Sleep(1 * time.Second)
	e.tr.CloseIdleConnections()
	e.start(e.addr)
	got := e.waitState(j.ID, 20*time.Second, api.StateSucceeded, api.StateFailed)
	if got.State != api.StateSucceeded || got.Attempts != 1 {
		t.Fatalf("job = %+v", got)
	}
	log := e.logOf(j.ID)
	for i := 0; i < 20; i++ {
		if n := strings.Count(log, fmt.Sprintf("line %02d\n", i)); n != 1 {
			t.Fatalf("line %d appears %d times in log:\n%s", i, n, log)
		}
	}
	var n int
	e.admin.QueryEgress(context.Background(), api.EgressFilter{Job: j.ID}, func(api.EgressEvent) error { n++; return nil })
	if n != 1 {
		t.Fatalf("events = %d", n)
	}
}

func TestRevokedRunnerStopsItsAgent(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("rv", 1, nil)
	a, err := agent.New(cfg, blocking(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	a.Client().HTTP = &http.Client{Transport: e.tr}
	a.ClaimWait = 500 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	time.Sleep(100 * time.Millisecond)
	if _, err := e.admin.RemoveRunner(context.Background(), "rv"); err != nil {
		t.Fatal(err)
	}
	// The waiting claim returns, the next one is refused: Run ends by itself.
	select {
	case err := <-done:
		if !errors.Is(err, agent.ErrRevoked) {
			t.Fatalf("Run = %v, want ErrRevoked", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent kept running after its runner was removed")
	}
}

func TestRegisterWritesConfigAndKeyPrivately(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newEnv(t, 5*time.Second)
	cfg := e.register("k", 3, map[string]string{"arch": "amd64"})
	for _, p := range []string{filepath.Join(e.dir, "k", "agent.yaml"), cfg.SigningKey} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v", p, fi.Mode(), err)
		}
	}
	priv, err := agent.LoadSigningKey(cfg.SigningKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err := e.admin.RunnerKey(context.Background(), cfg.RunnerID)
	if err != nil || !bytes.Equal(key.PublicKey, priv.Public().(ed25519.PublicKey)) {
		t.Fatalf("registered key differs: %v", err)
	}
	if cfg.Concurrency != 3 || cfg.Labels["arch"] != "amd64" {
		t.Fatalf("config = %+v", cfg)
	}
	_, err = agent.Register(context.Background(), agent.RegisterOptions{URL: e.URL, Token: "crg_x.y", Name: "k2", ConfigPath: filepath.Join(e.dir, "k", "agent.yaml")})
	if !errors.Is(err, agent.ErrConfigExists) {
		t.Fatalf("second register over the same config: %v", err)
	}
}
