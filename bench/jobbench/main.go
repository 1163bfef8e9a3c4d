// Command jobbench is `make bench`'s full-job benchmark: a whole cleanroom
// job on examples/hello next to the same work done directly with the host's
// node and npm, interleaved in one run so machine noise hits both alike.
//
//	cleanroom: `cleanroom submit examples/hello --wait`, timed from submit to
//	           exit (upload, claim, gate, network policy, sandbox, npm ci,
//	           build, artifacts/SBOM/provenance, teardown, result)
//	host:      `npm ci && npm run build` in a fresh temp copy of
//	           examples/hello, run with the host's node/npm inside the lab's
//	           agent host namespace against the same registry, with an empty
//	           user config and an empty npm cache each time
//
// It brings up the integration harness (lab network, Verdaccio seeded with
// the examples' packages, coordinator, one agent), prints medians, the
// ratio (target ≤ 1.3×, docs/architecture.md "Performance targets"), min/max, the load
// average, where the job's time goes (from its log lines, stamped as they
// stream in, and the coordinator's timestamps) and submit → claimed latency.
// Everything it starts is stopped and the lab is removed at the end, also on
// error or Ctrl-C. Root only; scripts/bench-job.sh runs it.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

func main() {
	o := opts{}
	flag.IntVar(&o.n, "n", 10, "measured iterations (each: one cleanroom job, one host npm ci && npm run build)")
	flag.IntVar(&o.warmup, "warmup", 1, "untimed iterations of each first (they also verify both sides work)")
	flag.StringVar(&o.bin, "bin", "bin/cleanroom", "cleanroom binary")
	flag.StringVar(&o.repo, "repo", ".", "checkout with examples/")
	flag.StringVar(&o.example, "example", "hello", "example project under examples/")
	flag.StringVar(&o.containerd, "containerd", os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"), "containerd socket the agent uses")
	flag.StringVar(&o.taskset, "baseline-cpus", "", "pin the host baseline to this CPU list (taskset -c), e.g. 0 to mirror a job spec's cpus: 1; empty: no pinning")
	flag.BoolVar(&o.verbose, "v", false, "print each job's log with arrival times")
	flag.BoolVar(&o.gateway, "gateway", false, "cold vs warm registry-gateway cache mode on examples/webapp (see gateway.go); -example then defaults to webapp")
	flag.DurationVar(&o.registryRTT, "registry-rtt", 0, "-gateway: put a relay modelling this round-trip time (e.g. 40ms) in front of the lab registry, for both the jobs' gateway and the host npm ci (see gateway.go); 0: the lab registry as it is (~0 ms)")
	flag.StringVar(&o.hostNode, "host-node", "", "-gateway: folder whose bin/ has the node and npm the host side runs (e.g. the sandbox image's, unpacked); empty: the host's own from PATH")
	flag.Parse()
	if o.gateway && !flagSet("example") {
		o.example = "webapp"
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "jobbench: needs root (lab namespaces, containerd)")
		os.Exit(1)
	}
	if o.n < 1 {
		fmt.Fprintln(os.Stderr, "jobbench: -n must be at least 1")
		os.Exit(2)
	}
	// The context ends on the first Ctrl-C/SIGTERM; later signals stay
	// caught (stop runs last) so the clean-up cannot be interrupted.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if o.gateway {
		err = runGateway(ctx, o)
	} else {
		err = run(ctx, o)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "jobbench:", err)
		os.Exit(1)
	}
}

type opts struct {
	n, warmup                               int
	bin, repo, example, containerd, taskset string
	verbose                                 bool
	gateway                                 bool          // -gateway: cold/warm cache mode (gateway.go)
	hostNode                                string        // -host-node: the host side's node and npm (gateway.go)
	registryRTT                             time.Duration // -registry-rtt: modelled registry latency (gateway.go)
}

// line is one line of the CLI's output and when it arrived here.
type line struct {
	at     time.Time
	stderr bool
	text   string
}

// jobRun is one measured cleanroom job.
type jobRun struct {
	id                 string
	start, end         time.Time
	created, started   time.Time // coordinator: job created, claimed
	finished           time.Time // coordinator: result stored
	install, build     time.Duration
	lines              []line
	marks              map[string]time.Time // first arrival of each marker line
	installOK, buildOK bool
}

// hostRun is one measured host-side npm ci && npm run build.
type hostRun struct {
	total, install, build time.Duration
}

func run(ctx context.Context, o opts) (retErr error) {
	var err error
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		return err
	}
	if o.repo, err = filepath.Abs(o.repo); err != nil {
		return err
	}
	src := filepath.Join(o.repo, "examples", o.example)
	if _, err := os.Stat(filepath.Join(src, "package-lock.json")); err != nil {
		return fmt.Errorf("example %s: %w", o.example, err)
	}
	if _, err := os.Stat(o.bin); err != nil {
		return fmt.Errorf("cleanroom binary: %w (build it first: go build -o bin/cleanroom ./cmd/cleanroom)", err)
	}
	nodeV, _ := exec.Command("node", "--version").Output()
	npmV, _ := exec.Command("npm", "--version").Output()
	if len(nodeV) == 0 || len(npmV) == 0 {
		return errors.New("the host baseline needs node and npm on PATH (make deps installs them)")
	}
	load0 := loadavg()

	fmt.Println("starting the harness: lab network, registry, coordinator, one agent")
	t := time.Now()
	env, err := startHarness(ctx, o, "jobbench")
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, stopHarness(env)) }()
	a, err := env.AddAgent(ctx, harness.AgentOptions{Name: "bench-agent"})
	if err != nil {
		return err
	}
	fmt.Printf("  agent %s running (%.1fs in all)\n", a.Name, time.Since(t).Seconds())
	dumpAgent := func() {
		if ctx.Err() != nil {
			return // interrupted: nothing to diagnose
		}
		out := a.Output()
		if len(out) > 4000 {
			out = "…" + out[len(out)-4000:]
		}
		fmt.Fprintf(os.Stderr, "--- agent log (tail) ---\n%s\n---\n", out)
	}

	b := &baseline{
		ns: env.Lab.HostNSPath(), src: src, taskset: o.taskset,
		registry: fmt.Sprintf("http://%s:%d/", lab.RegistryIP, lab.RegistryPort),
		replace:  fmt.Sprintf("%s:%d", lab.RegistryName, lab.RegistryPort),
	}
	fmt.Printf("host baseline: node %s, npm %s in %s; registry %s (lockfile host %s rewritten with --replace-registry-host), empty --userconfig/--globalconfig and --cache each run%s\n",
		strings.TrimSpace(string(nodeV)), strings.TrimSpace(string(npmV)), env.Lab.HostNS, b.registry, b.replace,
		map[bool]string{true: ", pinned to CPUs " + o.taskset, false: ""}[o.taskset != ""])

	// Warm-up: untimed, and a check that each side does what we think.
	for i := 0; i < o.warmup; i++ {
		fmt.Printf("warm-up %d/%d\n", i+1, o.warmup)
		j, err := submit(ctx, env, o, src)
		if err != nil {
			dumpAgent()
			return fmt.Errorf("warm-up job: %w", err)
		}
		fmt.Printf("  cleanroom job %s: %.2fs\n", j.id, j.end.Sub(j.start).Seconds())
		h, fetched, err := b.run(ctx, true)
		if err != nil {
			return fmt.Errorf("warm-up host baseline: %w", err)
		}
		if len(fetched) == 0 {
			return errors.New("host baseline: npm logged no fetches; cannot verify it used the lab registry")
		}
		for _, u := range fetched {
			if !strings.HasPrefix(u, b.registry) {
				return fmt.Errorf("host baseline fetched %s, not from %s", u, b.registry)
			}
		}
		fmt.Printf("  host npm ci && npm run build: %.2fs; verified: all %d fetches went to %s (e.g. %s), dist/ built\n",
			h.total.Seconds(), len(fetched), b.registry, fetched[0])
	}

	var jobs []*jobRun
	var hosts []hostRun
	for i := 0; i < o.n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		j, err := submit(ctx, env, o, src)
		if err != nil {
			dumpAgent()
			return fmt.Errorf("iteration %d: cleanroom job: %w", i+1, err)
		}
		jobs = append(jobs, j)
		h, _, err := b.run(ctx, false)
		if err != nil {
			return fmt.Errorf("iteration %d: host baseline: %w", i+1, err)
		}
		hosts = append(hosts, h)
		fmt.Printf("%2d/%d  cleanroom %6.2fs (install %5.2fs, build %5.2fs, claim %5.1fms)   host %6.2fs (npm ci %5.2fs, build %5.2fs)   load %s\n",
			i+1, o.n, j.end.Sub(j.start).Seconds(), j.install.Seconds(), j.build.Seconds(), ms(j.started.Sub(j.created)),
			h.total.Seconds(), h.install.Seconds(), h.build.Seconds(), loadavg())
	}
	report(o, jobs, hosts, load0)
	return nil
}

// --- cleanroom side ----------------------------------------------------------

var (
	jobIDRe   = regexp.MustCompile(`job (j-[0-9a-zA-Z]+) submitted`)
	stepDone  = regexp.MustCompile(`\[cleanroom\] (install|build) step done in (\S+)`)
	markerRes = []struct {
		key string
		re  *regexp.Regexp
	}{
		{"submitted", regexp.MustCompile(`^job j-\S+ submitted`)},
		{"first", regexp.MustCompile(`^\[cleanroom\] job j-\S+ attempt`)},
		{"gate", regexp.MustCompile(`^\[cleanroom\] lockfile `)},
		{"network", regexp.MustCompile(`^\[cleanroom\] egress allowed only to`)},
		{"sandbox", regexp.MustCompile(`^\[cleanroom\] sandbox `)},
		{"install-start", regexp.MustCompile(`^\[cleanroom\] \$ npm ci`)},
		{"install-done", regexp.MustCompile(`^\[cleanroom\] install step done`)},
		{"build-done", regexp.MustCompile(`^\[cleanroom\] build step done`)},
		{"artifacts", regexp.MustCompile(`^\[cleanroom\] \d+ artifact\(s\), SBOM`)},
	}
)

// submit runs `cleanroom submit DIR --wait` in the lab host namespace the way
// harness.Env.CLI does (same binary, namespace, URL and admin token), but
// streams its output so each log line can be stamped as it arrives: that is
// where the phase breakdown comes from. Env.CLI then reads the job's
// coordinator timestamps.
func submit(ctx context.Context, env *harness.Env, o opts, dir string) (*jobRun, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+env.Lab.HostNSPath(), "--", o.bin, "submit", dir, "--wait")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.Dir, "CLEANROOM_URL=" + env.URL, "CLEANROOM_TOKEN=" + env.Admin}
	if o.containerd != "" {
		cmd.Env = append(cmd.Env, "CLEANROOM_CONTAINERD_ADDRESS="+o.containerd)
	}
	ownGroup(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	j := &jobRun{marks: map[string]time.Time{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	read := func(r io.Reader, isErr bool) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			l := line{at: time.Now(), stderr: isErr, text: sc.Text()}
			mu.Lock()
			j.lines = append(j.lines, l)
			mu.Unlock()
		}
	}
	j.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	wg.Add(2)
	go read(stdout, false)
	go read(stderr, true)
	wg.Wait()
	werr := cmd.Wait()
	j.end = time.Now()
	for _, l := range j.lines {
		if j.id == "" {
			if m := jobIDRe.FindStringSubmatch(l.text); m != nil {
				j.id = m[1]
			}
		}
		if m := stepDone.FindStringSubmatch(l.text); m != nil {
			d, err := time.ParseDuration(m[2])
			if err == nil {
				if m[1] == "install" {
					j.install, j.installOK = d, true
				} else {
					j.build, j.buildOK = d, true
				}
			}
		}
		for _, mk := range markerRes {
			if _, seen := j.marks[mk.key]; !seen && mk.re.MatchString(l.text) {
				j.marks[mk.key] = l.at
			}
		}
	}
	if o.verbose || werr != nil {
		for _, l := range j.lines {
			fmt.Printf("    +%7.3fs %s\n", l.at.Sub(j.start).Seconds(), l.text)
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if werr != nil {
		return j, fmt.Errorf("cleanroom submit --wait: %v (job %q)", werr, j.id)
	}
	if j.id == "" {
		return nil, errors.New("no job id in the submit output")
	}
	if !j.installOK || !j.buildOK {
		return nil, fmt.Errorf("job %s: no install/build step durations in its log", j.id)
	}
	out, errOut, code := env.CLI(ctx, "status", j.id, "--json")
	if code != 0 {
		return nil, fmt.Errorf("cleanroom status %s: %s", j.id, errOut)
	}
	var st api.Job
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("parsing cleanroom status %s --json: %w", j.id, err)
	}
	if st.State != api.StateSucceeded || st.StartedAt == nil || st.FinishedAt == nil {
		return nil, fmt.Errorf("job %s: state %s (%s)", j.id, st.State, st.Reason)
	}
	j.created, j.started, j.finished = st.CreatedAt, *st.StartedAt, *st.FinishedAt
	return j, nil
}

// --- host side ---------------------------------------------------------------

type baseline struct {
	ns, src, taskset  string
	registry, replace string
	// cache, when set, is the npm cache every run shares (a warm cache);
	// empty: a fresh, empty one each run.
	cache string
	// node, when set, is a folder whose bin/ holds the node and npm to run
	// (first on PATH); empty: the host's own.
	node string
}

// path is the PATH the host side's npm runs with.
func (b *baseline) path() string {
	if b.node == "" {
		return os.Getenv("PATH")
	}
	return filepath.Join(b.node, "bin") + string(os.PathListSeparator) + os.Getenv("PATH")
}

// versions are the node and npm versions the host side runs.
func (b *baseline) versions() (node, npm string, err error) {
	for _, v := range []struct {
		cmd string
		out *string
	}{{"node", &node}, {"npm", &npm}} {
		cmd := exec.Command(v.cmd, "--version")
		cmd.Env = []string{"PATH=" + b.path(), "HOME=" + os.TempDir(), "npm_config_update_notifier=false"}
		if b.node != "" {
			// exec.Command looks the name up in our own PATH.
			cmd.Path = filepath.Join(b.node, "bin", v.cmd)
		}
		out, err := cmd.Output()
		if err != nil {
			return "", "", fmt.Errorf("host side: %s --version: %w", v.cmd, err)
		}
		*v.out = strings.TrimSpace(string(out))
	}
	return node, npm, nil
}

var fetchRe = regexp.MustCompile(`npm http fetch GET \d+ (\S+)`)

// run copies the example into a fresh temp dir and runs npm ci, then npm run
// build, with the host's npm inside the lab host namespace. With verify it
// logs npm's HTTP requests (untimed warm-up) and returns the fetched URLs.
func (b *baseline) run(ctx context.Context, verify bool) (hostRun, []string, error) {
	var h hostRun
	dir, err := os.MkdirTemp("", "cleanroom-jobbench-host-")
	if err != nil {
		return h, nil, err
	}
	defer os.RemoveAll(dir)
	proj, cache, home := filepath.Join(dir, "project"), filepath.Join(dir, "npm-cache"), filepath.Join(dir, "home")
	userCfg, globalCfg := filepath.Join(dir, "npmrc"), filepath.Join(dir, "global-npmrc")
	if b.cache != "" {
		cache = b.cache
		if err := os.MkdirAll(cache, 0o700); err != nil {
			return h, nil, err
		}
	} else if err := os.Mkdir(cache, 0o700); err != nil {
		return h, nil, err
	}
	for _, d := range []string{home} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return h, nil, err
		}
	}
	for _, f := range []string{userCfg, globalCfg} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return h, nil, err
		}
	}
	if err := copyProject(b.src, proj); err != nil {
		return h, nil, fmt.Errorf("copying %s: %w", b.src, err)
	}
	// The same settings the sandbox gets (secrets.BuildEnv and the image's
	// /etc/npmrc), nothing from the host's own npm configuration.
	env := []string{
		"PATH=" + b.path(), "HOME=" + home, "CI=true", "LANG=C.UTF-8",
		"npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false",
	}
	npm := func(args ...string) (time.Duration, string, error) {
		argv := []string{"--net=" + b.ns, "--"}
		if b.taskset != "" {
			argv = append(argv, "taskset", "-c", b.taskset)
		}
		argv = append(argv, "npm")
		argv = append(argv, args...)
		argv = append(argv, "--userconfig", userCfg, "--globalconfig", globalCfg, "--cache", cache,
			"--registry", b.registry, "--replace-registry-host", b.replace)
		if verify {
			argv = append(argv, "--loglevel", "http")
		}
		cmd := exec.CommandContext(ctx, "nsenter", argv...)
		cmd.Dir, cmd.Env = proj, env
		ownGroup(cmd)
		t := time.Now()
		out, err := cmd.CombinedOutput()
		d := time.Since(t)
		if ctx.Err() != nil {
			return d, string(out), ctx.Err()
		}
		if err != nil {
			return d, string(out), fmt.Errorf("npm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return d, string(out), nil
	}
	t := time.Now()
	d, out, err := npm("ci")
	if err != nil {
		return h, nil, err
	}
	h.install = d
	if d, _, err = npm("run", "build"); err != nil {
		return h, nil, err
	}
	h.build = d
	h.total = time.Since(t)
	var fetched []string
	for _, m := range fetchRe.FindAllStringSubmatch(out, -1) {
		fetched = append(fetched, m[1])
	}
	if verify {
		if _, err := os.Stat(filepath.Join(proj, "dist")); err != nil {
			return h, fetched, fmt.Errorf("npm run build made no dist/: %w", err)
		}
	}
	return h, fetched, nil
}

// copyProject copies the project's files (no node_modules, .git or dist).
func copyProject(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			switch d.Name() {
			case "node_modules", ".git", "dist":
				if rel != "." {
					return filepath.SkipDir
				}
			}
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

// ownGroup runs cmd in its own process group and, when ctx ends, kills that
// group (npm's children too: sh, tsc), never anything we did not start.
func ownGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
}

// --- report ------------------------------------------------------------------

func report(o opts, jobs []*jobRun, hosts []hostRun, load0 string) {
	n := len(jobs)
	cr := collect(jobs, func(j *jobRun) time.Duration { return j.end.Sub(j.start) })
	hs := make([]time.Duration, n)
	hi, hb := make([]time.Duration, n), make([]time.Duration, n)
	for i, h := range hosts {
		hs[i], hi[i], hb[i] = h.total, h.install, h.build
	}
	ci := collect(jobs, func(j *jobRun) time.Duration { return j.install })
	cb := collect(jobs, func(j *jobRun) time.Duration { return j.build })

	fmt.Printf("\niterations: %d (interleaved, after %d untimed warm-up)\n", n, o.warmup)
	fmt.Printf("%-44s %10s %10s %10s %8s\n", "", "median", "min", "max", "ratio")
	row := func(name string, v []time.Duration, base []time.Duration) {
		r := ""
		if base != nil && median(base) > 0 {
			r = fmt.Sprintf("%.2f×", float64(median(v))/float64(median(base)))
		}
		fmt.Printf("%-44s %9.2fs %9.2fs %9.2fs %8s\n", name, median(v).Seconds(), minD(v).Seconds(), maxD(v).Seconds(), r)
	}
	row("cleanroom submit --wait (submit → exit)", cr, hs)
	row("host npm ci && npm run build", hs, nil)
	row("  install: job's npm ci step", ci, hi)
	row("  install: host npm ci", hi, nil)
	row("  build: job's build step", cb, hb)
	row("  build: host npm run build", hb, nil)
	ratio := float64(median(cr)) / float64(median(hs))
	verdict := "within"
	if ratio > 1.3 {
		verdict = "OVER"
	}
	fmt.Printf("full job / host ratio (medians):             %.2f×   target ≤ 1.30× (%s)\n", ratio, verdict)

	claim := collect(jobs, func(j *jobRun) time.Duration { return j.started.Sub(j.created) })
	fmt.Printf("submit → claimed (status created_at → started_at): median %.1f ms, min %.1f, max %.1f   target < 50 ms\n",
		ms(median(claim)), ms(minD(claim)), ms(maxD(claim)))

	// Where a job's time goes. Log-line times are when the line reached
	// the CLI (the agent batches log writes for ~50 ms, then one HTTP
	// round trip), so each boundary is late by about the same amount.
	fmt.Printf("\nwhere a job's time goes (median of each phase; log lines stamped on arrival at the CLI,\n" +
		"which the agent ships in ~50 ms batches: phases under ~60 ms are at that resolution):\n")
	type phase struct {
		name     string
		from, to func(j *jobRun) (time.Time, bool)
	}
	at := func(k string) func(j *jobRun) (time.Time, bool) {
		return func(j *jobRun) (time.Time, bool) { t, ok := j.marks[k]; return t, ok }
	}
	fixed := func(f func(j *jobRun) time.Time) func(j *jobRun) (time.Time, bool) {
		return func(j *jobRun) (time.Time, bool) { return f(j), true }
	}
	start := fixed(func(j *jobRun) time.Time { return j.start })
	created := fixed(func(j *jobRun) time.Time { return j.created })
	started := fixed(func(j *jobRun) time.Time { return j.started })
	finished := fixed(func(j *jobRun) time.Time { return j.finished })
	end := fixed(func(j *jobRun) time.Time { return j.end })
	phases := []phase{
		{"CLI start, pack, upload, create job", start, created},
		{"queued → claimed by the agent", created, started},
		{"claimed → first job log line at the CLI", started, at("first")},
		{"source fetch + extract + lockfile gate", at("first"), at("gate")},
		{"network policy (netns, veth, rules, DNS)", at("gate"), at("network")},
		{"sandbox create (container, snapshot)", at("network"), at("sandbox")},
		{"npm ci step (wall, incl. exec overhead)", at("install-start"), at("install-done")},
		{"npm run build step (wall)", at("install-done"), at("build-done")},
		{"artifacts + SBOM + signed provenance", at("build-done"), at("artifacts")},
		{"teardown, uploads, result stored", at("artifacts"), finished},
		{"result stored → CLI exits", finished, end},
	}
	var sum time.Duration
	for _, p := range phases {
		var v []time.Duration
		for _, j := range jobs {
			f, ok1 := p.from(j)
			t, ok2 := p.to(j)
			if ok1 && ok2 {
				v = append(v, t.Sub(f))
			}
		}
		if len(v) == 0 {
			fmt.Printf("  %-44s %10s\n", p.name, "n/a")
			continue
		}
		sum += median(v)
		fmt.Printf("  %-44s %8.0f ms   (min %.0f, max %.0f)\n", p.name, ms(median(v)), ms(minD(v)), ms(maxD(v)))
	}
	fmt.Printf("  %-44s %8.0f ms   (sum of the medians)\n", "total", ms(sum))
	fmt.Printf("  reported by the job log: install step %.2fs, build step %.2fs (medians)\n", median(ci).Seconds(), median(cb).Seconds())
	// A step's wall time minus what the step reports. The reported time
	// already includes creating and starting the step's containerd task
	// (each step is a new task); outside it are the spec update, deleting
	// the task (shim exit) and the difference in log delivery delay.
	var ei, eb []time.Duration
	for _, j := range jobs {
		s, ok1 := j.marks["install-start"]
		d, ok2 := j.marks["install-done"]
		b, ok3 := j.marks["build-done"]
		if ok1 && ok2 && ok3 {
			ei = append(ei, d.Sub(s)-j.install)
			eb = append(eb, b.Sub(d)-j.build)
		}
	}
	if len(ei) > 0 {
		fmt.Printf("  per-step time outside the reported step time (spec update, task delete, log delivery): install %.0f ms, build %.0f ms (medians)\n",
			ms(median(ei)), ms(median(eb)))
	}
	over := make([]time.Duration, n)
	for i, j := range jobs {
		over[i] = j.end.Sub(j.start) - j.install - j.build
	}
	fmt.Printf("  everything but the two steps (cleanroom's own overhead): median %.2fs (min %.2f, max %.2f)\n",
		median(over).Seconds(), minD(over).Seconds(), maxD(over).Seconds())
	fmt.Printf("\nload average: %s at start, %s at end (%d CPUs)\n", load0, loadavg(), runtime.NumCPU())
}

func collect(jobs []*jobRun, f func(*jobRun) time.Duration) []time.Duration {
	v := make([]time.Duration, len(jobs))
	for i, j := range jobs {
		v[i] = f(j)
	}
	return v
}

func median(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minD(v []time.Duration) time.Duration {
	m := v[0]
	for _, d := range v {
		m = min(m, d)
	}
	return m
}

func maxD(v []time.Duration) time.Duration {
	m := v[0]
	for _, d := range v {
		m = max(m, d)
	}
	return m
}

// flagSet reports whether the named flag was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// prefixWriter indents the harness's progress lines.
type prefixWriter struct {
	w      io.Writer
	prefix string
}

// startHarness starts the lab, the registry and the coordinator, its
// progress indented on stdout.
func startHarness(ctx context.Context, o opts, name string) (*harness.Env, error) {
	env, err := harness.Start(ctx, harness.Options{
		Bin: o.bin, Repo: o.repo, Containerd: o.containerd, Name: name,
		Progress: prefixWriter{os.Stdout, "  "},
	})
	if err != nil {
		return nil, fmt.Errorf("starting the harness: %w", err)
	}
	return env, nil
}

// stopHarness closes env and says how long that took.
func stopHarness(env *harness.Env) error {
	t := time.Now()
	err := env.Close()
	fmt.Printf("harness stopped and lab removed (%.1fs)\n", time.Since(t).Seconds())
	if err != nil {
		return fmt.Errorf("cleaning up the harness: %w", err)
	}
	return nil
}

func (p prefixWriter) Write(b []byte) (int, error) {
	s := strings.TrimRight(string(b), "\n")
	_, err := fmt.Fprintln(p.w, p.prefix+strings.ReplaceAll(s, "\n", "\n"+p.prefix))
	return len(b), err
}
