package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
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
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// ---- assertions ------------------------------------------------------------

// assertSandboxGone checks that a finished job's sandbox, namespace, host
// veth and cgroups no longer exist.
func assertSandboxGone(ctx context.Context, t *testing.T, e *harness.Env, id string) {
	t.Helper()
	for what, left := range jobLeftovers(ctx, t, e, id) {
		t.Errorf("job %s ended but its %s still exist: %v", id, what, left)
	}
}

// jobLeftovers finds what of a job's sandbox still exists: containers and
// snapshots labelled with it, namespaces and cgroups named after it, and
// host veths whose alias names it. Matching by label and name prefix keeps
// this valid if per-attempt names are ever added.
func jobLeftovers(ctx context.Context, t *testing.T, e *harness.Env, id string) map[string][]string {
	t.Helper()
	left := map[string][]string{}
	add := func(what string, l []string) {
		if len(l) > 0 {
			left[what] = l
		}
	}
	add("containers", jobContainers(ctx, t, id))
	add("namespaces", lab.OurNamespaces("cr-"+id))
	var cgs []string
	for _, pat := range []string{"/sys/fs/cgroup/*/cleanroom/cr-" + id + "*", "/sys/fs/cgroup/cleanroom/cr-" + id + "*"} {
		m, _ := filepath.Glob(pat)
		cgs = append(cgs, m...)
	}
	add("cgroups", cgs)
	add("host veths", labLinksOf(ctx, t, e, id))
	return left
}

// jobContainers lists containers and snapshots labelled with the job.
func jobContainers(ctx context.Context, t *testing.T, id string) []string {
	t.Helper()
	cd, err := containerd.New(testutil.ContainerdAddress(t), containerd.WithDefaultNamespace("cleanroom"))
	if err != nil {
		t.Fatalf("connecting to containerd: %v", err)
	}
	defer cd.Close()
	filter := fmt.Sprintf("labels.%q==%q", sandbox.LabelJob, id)
	ctrs, err := cd.Containers(ctx, filter)
	if err != nil {
		t.Fatalf("listing containers: %v", err)
	}
	var out []string
	for _, c := range ctrs {
		out = append(out, "container "+c.ID())
	}
	err = cd.SnapshotService(containerd.DefaultSnapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		out = append(out, "snapshot "+info.Name)
		return nil
	}, filter)
	if err != nil {
		t.Fatalf("listing snapshots: %v", err)
	}
	return out
}

// assertNoSandboxEver checks that a refused job never got a sandbox: no
// containerd event ever named its container or snapshot, its log has no
// sandbox or network line, and no egress event exists for it.
func assertNoSandboxEver(ctx context.Context, t *testing.T, e *harness.Env, id, log string, watch func() []string) {
	t.Helper()
	for _, s := range []string{"[cleanroom] sandbox ", "$ npm ci", "egress allowed only to"} {
		if strings.Contains(log, s) {
			t.Errorf("job %s's log contains %q: a refused job must not get a network or sandbox; log:\n%s", id, s, log)
		}
	}
	if _, events := egress(ctx, t, e, "--job", id); len(events) > 0 {
		t.Errorf("job %s has %d egress event(s) though it never ran", id, len(events))
	}
	for _, ev := range watch() {
		if strings.Contains(ev, sandbox.ContainerID(id)) {
			t.Errorf("containerd saw %s for the refused job %s", ev, id)
		}
	}
	assertSandboxGone(ctx, t, e, id)
}

// watchContainerd records every containerd event (topic and payload) in the
// cleanroom namespace from now on; the returned function stops and returns
// them.
func watchContainerd(ctx context.Context, t *testing.T) func() []string {
	t.Helper()
	cd, err := containerd.New(testutil.ContainerdAddress(t), containerd.WithDefaultNamespace("cleanroom"))
	if err != nil {
		t.Fatalf("connecting to containerd: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	ch, errs := cd.Subscribe(wctx, `namespace=="cleanroom"`)
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev := <-ch:
				if ev == nil {
					return
				}
				s := ev.Topic
				if ev.Event != nil {
					s += " " + string(ev.Event.GetValue())
				}
				mu.Lock()
				seen = append(seen, s)
				mu.Unlock()
			case <-errs:
				return
			case <-wctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	stop := func() []string {
		once.Do(func() {
			time.Sleep(200 * time.Millisecond) // let in-flight events arrive
			cancel()
			<-done
			cd.Close()
		})
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
	t.Cleanup(func() { stop() })
	return stop
}

// labLinksOf lists links in the lab host namespace whose alias names job.
func labLinksOf(ctx context.Context, t *testing.T, e *harness.Env, job string) []string {
	t.Helper()
	out, err := e.Lab.Exec(ctx, e.Lab.HostNS, "ip", "-o", "-d", "link", "show")
	if err != nil {
		t.Errorf("listing links of the lab host: %v: %s", err, out)
		return nil
	}
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "cleanroom job="+job); i >= 0 {
			rest := line[i+len("cleanroom job="+job):]
			if rest == "" || rest[0] == ' ' || rest[0] == '\\' {
				links = append(links, strings.Fields(line)[1])
			}
		}
	}
	return links
}

// containerdAddr is testutil.ContainerdAddress for code without a *testing.T
// (TestMain's residue check).
func containerdAddr() string {
	if a := os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"); a != "" {
		return a
	}
	return "/run/containerd/containerd.sock"
}

// shimsOf lists running containerd shims whose -id names a sandbox of one
// of the jobs, as "PID cmdline".
func shimsOf(jobs map[string]bool) []string {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "containerd-shim") {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-id" && jobs[jobOfName(args[i+1])] {
				out = append(out, filepath.Base(filepath.Dir(p))+" "+strings.Join(args, " "))
			}
		}
	}
	return out
}

// sweep removes what this run's jobs and agents left behind after the
// residue check has reported it: their sandbox processes and shims (by PID,
// found through the jobs' cgroups and shim command lines), containers and
// snapshots, cgroups and network namespaces. It returns what it removed.
func sweep(ctx context.Context, jobs map[string]bool, agents []string) []string {
	var done []string
	kill := func(pid, what string) {
		var n int
		if _, err := fmt.Sscan(pid, &n); err == nil && n > 1 && syscall.Kill(n, syscall.SIGKILL) == nil {
			done = append(done, "killed "+what+" "+pid)
		}
	}
	var cgs []string
	for job := range jobs {
		for _, pat := range []string{"/sys/fs/cgroup/*/cleanroom/cr-" + job, "/sys/fs/cgroup/cleanroom/cr-" + job} {
			m, _ := filepath.Glob(pat)
			cgs = append(cgs, m...)
		}
	}
	for _, cg := range cgs {
		_ = filepath.WalkDir(cg, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Name() == "cgroup.procs" {
				b, _ := os.ReadFile(p)
				for _, pid := range strings.Fields(string(b)) {
					kill(pid, "sandbox process")
				}
			}
			return nil
		})
	}
	for _, s := range shimsOf(jobs) {
		kill(strings.Fields(s)[0], "shim")
	}
	if cd, err := containerd.New(containerdAddr(), containerd.WithDefaultNamespace("cleanroom")); err == nil {
		filter := fmt.Sprintf("labels.%q", sandbox.LabelJob)
		ours := func(l map[string]string) bool {
			return jobs[l[sandbox.LabelJob]] || slices.Contains(agents, l[sandbox.LabelAgent])
		}
		ctrs, _ := cd.Containers(ctx, filter)
		for _, c := range ctrs {
			if l, err := c.Labels(ctx); err != nil || !ours(l) {
				continue
			}
			if task, err := c.Task(ctx, nil); err == nil {
				_ = task.Kill(ctx, syscall.SIGKILL)
				_, _ = task.Delete(ctx, containerd.WithProcessKill)
			}
			if err := c.Delete(ctx, containerd.WithSnapshotCleanup); err == nil {
				done = append(done, "deleted container "+c.ID())
			}
		}
		sn := cd.SnapshotService(containerd.DefaultSnapshotter)
		var names []string
		_ = sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			if ours(info.Labels) {
				names = append(names, info.Name)
			}
			return nil
		}, filter)
		for _, n := range names {
			if sn.Remove(ctx, n) == nil {
				done = append(done, "removed snapshot "+n)
			}
		}
		cd.Close()
	}
	// cgroups can go once their processes are reaped: deepest first.
	deadline := time.Now().Add(5 * time.Second)
	for _, cg := range cgs {
		for {
			var dirs []string
			_ = filepath.WalkDir(cg, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			var err error
			for i := len(dirs) - 1; i >= 0; i-- {
				if e := syscall.Rmdir(dirs[i]); e != nil && !errors.Is(e, syscall.ENOENT) {
					err = e
				}
			}
			if err == nil {
				done = append(done, "removed cgroup "+cg)
				break
			}
			if time.Now().After(deadline) {
				done = append(done, fmt.Sprintf("could not remove cgroup %s: %v", cg, err))
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for job := range jobs {
		nss, _ := filepath.Glob("/run/netns/cr-" + job + "-*")
		for _, nsPath := range nss {
			ns := filepath.Base(nsPath)
			if out, err := exec.CommandContext(ctx, "ip", "netns", "del", ns).CombinedOutput(); err == nil {
				done = append(done, "deleted namespace "+ns)
			} else {
				done = append(done, fmt.Sprintf("could not delete namespace %s: %v: %s", ns, err, out))
			}
		}
	}
	return done
}

func netnsList() string {
	out, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	return strings.TrimSpace(string(out))
}

// gatewayFlow reports whether an allowed event is one the policy allows:
// the job's registry gateway, as a request it served (proto http) or as
// the sandbox's connection to it (the host end of the job's veth at the
// gateway's port). The registry itself is never a sandbox's destination.
func gatewayFlow(ev api.EgressEvent) bool {
	if ev.Proto == "http" {
		return true
	}
	host, port, ok := splitDst(ev.Dst)
	return ok && ev.Proto == "tcp" && ev.Rule == "allow-registry" && port == agent.DefaultGatewayPort && host != lab.RegistryIP.String()
}

// logLineWith reports whether one line of log holds a, then b after it.
func logLineWith(log, a, b string) bool {
	for _, l := range strings.Split(log, "\n") {
		if i := strings.Index(l, a); i >= 0 && strings.Contains(l[i+len(a):], b) {
			return true
		}
	}
	return false
}

func dst(proto, addr string) func(api.EgressEvent) bool {
	return func(ev api.EgressEvent) bool { return ev.Proto == proto && ev.Dst == addr }
}

func splitDst(d string) (string, int, bool) {
	h, p, err := net.SplitHostPort(d)
	if err != nil {
		return "", 0, false
	}
	var port int
	if _, err := fmt.Sscan(p, &port); err != nil {
		return "", 0, false
	}
	return h, port, true
}

// leaks reports whether value appears in text raw, base64-encoded (standard
// alphabet, each of the three alignments it can have inside a longer blob),
// URL-encoded (query and path forms) or hex-encoded (either case), and
// which form was found.
func leaks(text, value string) (string, bool) {
	if value == "" {
		return "", false
	}
	forms := map[string]string{
		"raw":       value,
		"url-query": url.QueryEscape(value),
		"url-path":  url.PathEscape(value),
	}
	for k := 0; k < 3; k++ {
		full := base64.StdEncoding.EncodeToString(append(make([]byte, k), value...))
		lo, hi := (8*k+5)/6, 8*(k+len(value))/6
		forms[fmt.Sprintf("base64, %d-byte offset", k)] = full[lo:hi]
	}
	for name, f := range forms {
		if len(f) >= 8 && strings.Contains(text, f) {
			return name, true
		}
	}
	if strings.Contains(strings.ToLower(text), hex.EncodeToString([]byte(value))) {
		return "hex", true
	}
	return "", false
}

// configRunnerToken reads runner_token from the agent's config file.
func configRunnerToken(t *testing.T, a *harness.Agent) string {
	t.Helper()
	b, err := os.ReadFile(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		RunnerToken string `yaml:"runner_token"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil || c.RunnerToken == "" {
		t.Fatalf("no runner_token in %s: %v", a.Config, err)
	}
	return c.RunnerToken
}

// forward relays the root namespace's loopback to the coordinator
// (harness.Env.Forward) for this test: a browser or a scraper can use the
// returned base URL; the relay stops when the test ends.
func forward(t *testing.T, e *harness.Env) string {
	t.Helper()
	base, stop, err := e.Forward()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return base
}

// scrape reads the coordinator's /metrics through a relay (base), lints
// it as `promtool check metrics` would, and returns series → value
// (testutil.ParseMetrics) and the raw exposition.
func scrape(t *testing.T, base string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping /metrics: %d %v: %s", resp.StatusCode, err, body)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("linting /metrics: %v", err)
	}
	for _, p := range problems {
		t.Errorf("/metrics lint: %s: %s", p.Metric, p.Text)
	}
	return testutil.ParseMetrics(t, string(body)), string(body)
}

// ---- CLI helpers -------------------------------------------------------------

// cli runs the CLI and fails the test on a non-zero exit.
func cli(ctx context.Context, t *testing.T, e *harness.Env, args ...string) string {
	t.Helper()
	out, errOut, code := e.CLI(ctx, args...)
	if code != 0 {
		t.Fatalf("cleanroom %s: exit %d: %s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func submit(ctx context.Context, t *testing.T, e *harness.Env, dir string, flags ...string) string {
	t.Helper()
	var j api.Job
	if err := json.Unmarshal([]byte(cli(ctx, t, e, append([]string{"submit", dir, "--json"}, flags...)...)), &j); err != nil || j.ID == "" {
		t.Fatalf("submit --json: no job: %v", err)
	}
	suite.mu.Lock()
	suite.jobs = append(suite.jobs, j.ID)
	suite.mu.Unlock()
	return j.ID
}

func status(ctx context.Context, t *testing.T, e *harness.Env, id string) api.Job {
	t.Helper()
	var j api.Job
	if err := json.Unmarshal([]byte(cli(ctx, t, e, "status", id, "--json")), &j); err != nil {
		t.Fatalf("status --json %s: %v", id, err)
	}
	return j
}

// waitTerminal polls the job's status until it ends, or fails the test
// after within.
func waitTerminal(ctx context.Context, t *testing.T, e *harness.Env, id string, within time.Duration) api.Job {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		j := status(ctx, t, e, id)
		if api.Terminal(j.State) {
			if j.FinishedAt == nil {
				now := time.Now()
				j.FinishedAt = &now
			}
			return j
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("job %s still %s after %s; log:\n%s", id, j.State, within, jobLog(context.WithoutCancel(ctx), t, e, id))
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

// waitLog polls the job's log until it contains s.
func waitLog(ctx context.Context, t *testing.T, e *harness.Env, id, s string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		log := jobLog(ctx, t, e, id)
		if strings.Contains(log, s) {
			return
		}
		if j := status(ctx, t, e, id); api.Terminal(j.State) {
			t.Fatalf("job %s ended (%s: %s) before its log showed %q:\n%s", id, j.State, j.Reason, s, log)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("job %s: %q not in its log after %s:\n%s", id, s, within, log)
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
}

func jobLog(ctx context.Context, t *testing.T, e *harness.Env, id string) string {
	t.Helper()
	return cli(ctx, t, e, "logs", id)
}

// egress runs `cleanroom egress --json ARGS` and returns the raw output and
// the decoded events.
func egress(ctx context.Context, t *testing.T, e *harness.Env, args ...string) (string, []api.EgressEvent) {
	t.Helper()
	raw := cli(ctx, t, e, append([]string{"egress", "--json"}, args...)...)
	var events []api.EgressEvent
	dec := json.NewDecoder(strings.NewReader(raw))
	for {
		var ev api.EgressEvent
		if err := dec.Decode(&ev); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding egress events: %v\n%s", err, raw)
		}
		events = append(events, ev)
	}
	return raw, events
}

// ---- projects ----------------------------------------------------------------

// copyExample copies examples/NAME into a temp dir (never editing examples/
// in place), leaving out node_modules and dist.
func copyExample(t *testing.T, name string) string {
	t.Helper()
	src := filepath.Join(suite.repo, "examples", name)
	dst := filepath.Join(t.TempDir(), name)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() && (d.Name() == "node_modules" || d.Name() == "dist") {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatalf("copying example %s: %v", name, err)
	}
	return dst
}

// editSpec rewrites DIR/cleanroom.yaml through fn.
func editSpec(t *testing.T, dir string, fn func(map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "cleanroom.yaml")
	spec, err := harness.ReadSpec(path)
	if err != nil {
		t.Fatal(err)
	}
	fn(spec)
	writeYAML(t, path, spec)
}

// minimalProject is the hello example stripped of its dependencies (npm ci
// installs nothing, so a job is mostly sandbox lifecycle) with spec as its
// cleanroom.yaml.
func minimalProject(t *testing.T, spec map[string]any) string {
	t.Helper()
	dir := copyExample(t, "hello")
	const name = "cleanroom-e2e-minimal"
	pkg := map[string]any{"name": name, "version": "1.0.0", "private": true, "license": "Apache-2.0"}
	lock := map[string]any{"name": name, "version": "1.0.0", "lockfileVersion": 3, "requires": true,
		"packages": map[string]any{"": map[string]any{"name": name, "version": "1.0.0", "license": "Apache-2.0"}}}
	for file, v := range map[string]any{"package.json": pkg, "package-lock.json": lock} {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, file), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeYAML(t, filepath.Join(dir, "cleanroom.yaml"), spec)
	return dir
}

func writeYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// ---- small things ------------------------------------------------------------

// timeout bounds a test: its context ends after d (or with the test).
func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func waitExit(t *testing.T, p *harness.Proc, within time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("%s did not exit within %s", p.Name, within)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// jobOfName maps a sandbox, namespace or cgroup name ("cr-<job>-<attempt>")
// or a veth alias job ("<job>-<attempt>") to the job id.
func jobOfName(name string) string {
	name = strings.TrimPrefix(name, "cr-")
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			return name[:i]
		}
	}
	return name
}
