package main

// The -gateway mode: issue 12's side-by-side install benchmark on the
// real-world-sized example (examples/webapp, 373 packages), in one run:
//
//	cold: a job whose agent's registry-gateway cache (gateway.cache_dir) was
//	      emptied just before, next to host `npm ci` with an empty npm cache;
//	warm: the next job (cache filled by the cold one), next to host `npm ci`
//	      with a warm npm cache (primed in the warm-up, kept across runs);
//	the job's install warm vs cold.
//
// A job's install is the time it waited for the gateway's prefetch once its
// network and sandbox were ready ("the job waited … for it" in its log: with
// a cold cache, the download the sandbox creation did not hide) plus its npm
// ci step ("[cleanroom] install step done in …"), which then reads every
// tarball from the gateway's cache. The lockfile is the example's, unchanged:
// its https://registry.npmjs.org/ entries pass the gate as registry_aliases.
//
// Host runs use node and npm from -host-node (scripts/bench-gateway.sh
// unpacks the sandbox image's own node and npm there), else the host's,
// inside the lab host namespace against the same Verdaccio, with
// --replace-registry-host=always (the lockfile names the public registry),
// then `npm run build`.
//
// With -registry-rtt D, both sides reach Verdaccio through a relay in the
// registry namespace (lab.StartRelay, port relayPort) that models a link of
// round-trip time D: the agent's registry (its gateway's upstream) and the
// host npm's --registry are the relay's address. The lab's links have no
// latency (a cold download of every tarball takes about a second), so
// without it a cache has nothing to save; a real registry in another region,
// or one proxying the public registry, is tens of milliseconds away. The
// relay's connection count shows each side went through it.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

// gwRun is one iteration of the gateway mode.
type gwRun struct {
	cold, warm         *gwJob
	hostCold, hostWarm hostRun
}

func runGateway(ctx context.Context, o opts) (retErr error) {
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
	load0 := loadavg()

	fmt.Println("starting the harness: lab network, registry, coordinator")
	t := time.Now()
	env, err := startHarness(ctx, o, "gwbench")
	if err != nil {
		return err
	}
	defer func() { retErr = errors.Join(retErr, stopHarness(env)) }()
	if o.example == "webapp" {
		if err := env.SeedWebapp(ctx); err != nil {
			return err
		}
	}
	agentRegistry := harness.RegistryURL
	hostRegistry := fmt.Sprintf("http://%s:%d/", lab.RegistryIP, lab.RegistryPort)
	var relay *lab.Relay
	if o.registryRTT > 0 {
		relay, err = env.Lab.StartRelay(env.Lab.RegistryNS, fmt.Sprintf("%s:%d", lab.RegistryIP, relayPort),
			fmt.Sprintf("%s:%d", lab.RegistryIP, lab.RegistryPort), o.registryRTT)
		if err != nil {
			return err
		}
		agentRegistry = fmt.Sprintf("http://%s:%d/", lab.RegistryName, relayPort)
		hostRegistry = fmt.Sprintf("http://%s:%d/", lab.RegistryIP, relayPort)
		fmt.Printf("  registry relay %s → :%d in the registry namespace, modelled RTT %v (setup 1 RTT, each chunk RTT/2 each way)\n",
			relay.Addr(), lab.RegistryPort, o.registryRTT)
	}
	relayConns := func() int64 {
		if relay == nil {
			return 0
		}
		return relay.Conns()
	}

	// The agent, with the gateway's cache in a folder we can empty.
	cacheDir := filepath.Join(env.Dir, "gateway-cache")
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return err
	}
	extra := map[string]any{"gateway.cache_dir": cacheDir}
	if relay != nil {
		extra["network.registries"] = []string{agentRegistry}
	}
	a, err := env.AddAgent(ctx, harness.AgentOptions{Name: "gwbench-agent", Extra: extra})
	if err != nil {
		return err
	}
	fmt.Printf("  agent %s running (%.1fs in all)\n", a.Name, time.Since(t).Seconds())

	// The project the jobs and the host build: a copy of the example, its
	// lockfile unchanged.
	work, err := os.MkdirTemp("", "cleanroom-gwbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	proj := filepath.Join(work, o.example)
	if err := copyProject(src, proj); err != nil {
		return err
	}
	b := &baseline{ns: env.Lab.HostNSPath(), src: proj, taskset: o.taskset,
		registry: hostRegistry, replace: "always", node: o.hostNode}
	nodeV, npmV, err := b.versions()
	if err != nil {
		return err
	}
	fmt.Printf("  host side: node %s, npm %s (%s)\n", nodeV, npmV, cmp.Or(o.hostNode, "the host's own, from PATH"))
	warmCache := filepath.Join(work, "host-warm-npm-cache")
	bWarm := *b
	bWarm.cache = warmCache

	// The cache is emptied with the agent stopped: a running gateway keeps
	// an index of its cache in memory (its prefetch of an entry it holds
	// costs no disk access), so files removed under it would be found
	// missing only when served. The restart is not part of any timing.
	emptyCache := func() error {
		if err := a.Signal(syscall.SIGTERM); err != nil {
			return fmt.Errorf("stopping the agent to empty its cache: %w", err)
		}
		a.Wait()
		ents, err := os.ReadDir(cacheDir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(cacheDir, e.Name())); err != nil {
				return err
			}
		}
		if err := env.Restart(ctx, a); err != nil {
			return fmt.Errorf("restarting the agent with an empty cache: %w", err)
		}
		return nil
	}

	fmt.Println("warm-up")
	if err := emptyCache(); err != nil {
		return err
	}
	c0 := relayConns()
	j, err := submitGW(ctx, env, o, proj)
	if err != nil {
		return fmt.Errorf("warm-up job: %w", err)
	}
	if relay != nil {
		if relayConns() == c0 {
			return fmt.Errorf("the warm-up job's gateway made no connection through the registry relay (agent registry %s)", agentRegistry)
		}
		fmt.Printf("  the job's gateway fetched through the relay: %d connections\n", relayConns()-c0)
	}
	c0 = relayConns()
	fmt.Printf("  cleanroom job %s: %.2fs (install %.2fs: prefetch wait %.2fs + npm ci step %.2fs)\n",
		j.id, j.end.Sub(j.start).Seconds(), j.install.Seconds(), j.wait.Seconds(), j.step.Seconds())
	h, fetched, err := b.run(ctx, true)
	if err != nil {
		return fmt.Errorf("warm-up host baseline: %w", err)
	}
	for _, u := range fetched {
		if !strings.HasPrefix(u, b.registry) {
			return fmt.Errorf("host baseline fetched %s, not from %s", u, b.registry)
		}
	}
	if len(fetched) == 0 {
		return errors.New("host baseline: npm logged no fetches; cannot verify it used the lab registry")
	}
	fmt.Printf("  host npm ci (empty cache) && npm run build: %.2fs; all %d fetches went to %s\n", h.total.Seconds(), len(fetched), b.registry)
	if relay != nil {
		if relayConns() == c0 {
			return errors.New("host baseline: no connection through the registry relay")
		}
		fmt.Printf("  host npm went through the relay: %d connections\n", relayConns()-c0)
	}
	if h, _, err = bWarm.run(ctx, false); err != nil {
		return fmt.Errorf("priming the host's warm npm cache: %w", err)
	}
	fmt.Printf("  host npm cache primed in %s (%.2fs)\n", warmCache, h.total.Seconds())

	var runs []gwRun
	for i := 0; i < o.n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var r gwRun
		if err := emptyCache(); err != nil {
			return err
		}
		if r.cold, err = submitGW(ctx, env, o, proj); err != nil {
			return fmt.Errorf("iteration %d: cold job: %w", i+1, err)
		}
		if r.warm, err = submitGW(ctx, env, o, proj); err != nil {
			return fmt.Errorf("iteration %d: warm job: %w", i+1, err)
		}
		if r.hostCold, _, err = b.run(ctx, false); err != nil {
			return fmt.Errorf("iteration %d: host, empty cache: %w", i+1, err)
		}
		if r.hostWarm, _, err = bWarm.run(ctx, false); err != nil {
			return fmt.Errorf("iteration %d: host, warm cache: %w", i+1, err)
		}
		runs = append(runs, r)
		fmt.Printf("%2d/%d  job cold %6.2fs (install %5.2fs = wait %5.2fs + step %5.2fs)  warm %6.2fs (install %5.2fs = wait %5.2fs + step %5.2fs)   host npm ci cold %5.2fs  warm %5.2fs   load %s\n",
			i+1, o.n, r.cold.end.Sub(r.cold.start).Seconds(), r.cold.install.Seconds(), r.cold.wait.Seconds(), r.cold.step.Seconds(),
			r.warm.end.Sub(r.warm.start).Seconds(), r.warm.install.Seconds(), r.warm.wait.Seconds(), r.warm.step.Seconds(),
			r.hostCold.install.Seconds(), r.hostWarm.install.Seconds(), loadavg())
	}
	reportGateway(o, runs, load0)
	if relay != nil {
		fmt.Printf("registry relay: modelled RTT %v, %d connections in all\n", o.registryRTT, relay.Conns())
	}
	return nil
}

// relayPort is the registry relay's port (-registry-rtt), next to
// Verdaccio's on the registry host.
const relayPort = 4875

// gwJob is one job of the gateway mode: install is wait + step.
type gwJob struct {
	*jobRun
	wait, step time.Duration
}

// prefetchWaitRe is the agent's log line saying how long the job waited for
// the gateway's prefetch (agent/buildexec, serve).
var prefetchWaitRe = regexp.MustCompile(`in the shared cache \(\S+; the job waited (\S+) for it\)`)

// submitGW runs a job and splits its install into the wait for the
// gateway's prefetch and the npm ci step.
func submitGW(ctx context.Context, env *harness.Env, o opts, dir string) (*gwJob, error) {
	j, err := submit(ctx, env, o, dir)
	if err != nil {
		return nil, err
	}
	g := &gwJob{jobRun: j, step: j.install}
	for _, l := range j.lines {
		if m := prefetchWaitRe.FindStringSubmatch(l.text); m != nil {
			if g.wait, err = time.ParseDuration(m[1]); err != nil {
				return nil, fmt.Errorf("job %s: reading the prefetch wait %q: %w", j.id, m[1], err)
			}
			g.install = g.step + g.wait
			return g, nil
		}
	}
	return nil, fmt.Errorf("job %s: its log does not say how long it waited for the gateway's prefetch (an agent older than this benchmark?)", j.id)
}

func reportGateway(o opts, runs []gwRun, load0 string) {
	pick := func(f func(r gwRun) time.Duration) []time.Duration {
		v := make([]time.Duration, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		return v
	}
	coldI := pick(func(r gwRun) time.Duration { return r.cold.install })
	warmI := pick(func(r gwRun) time.Duration { return r.warm.install })
	coldJ := pick(func(r gwRun) time.Duration { return r.cold.end.Sub(r.cold.start) })
	warmJ := pick(func(r gwRun) time.Duration { return r.warm.end.Sub(r.warm.start) })
	hostC := pick(func(r gwRun) time.Duration { return r.hostCold.install })
	hostW := pick(func(r gwRun) time.Duration { return r.hostWarm.install })
	hostCT := pick(func(r gwRun) time.Duration { return r.hostCold.total })
	hostWT := pick(func(r gwRun) time.Duration { return r.hostWarm.total })

	coldW := pick(func(r gwRun) time.Duration { return r.cold.wait })
	coldS := pick(func(r gwRun) time.Duration { return r.cold.step })
	warmW := pick(func(r gwRun) time.Duration { return r.warm.wait })
	warmS := pick(func(r gwRun) time.Duration { return r.warm.step })
	lat := "the lab registry as it is (~0 ms)"
	if o.registryRTT > 0 {
		lat = fmt.Sprintf("registry %v away (modelled RTT, both sides)", o.registryRTT)
	}
	fmt.Printf("\n%s, %d iterations (interleaved, after 1 untimed warm-up), %s; job side: registry gateway, its cache emptied before each cold job\n", o.example, len(runs), lat)
	fmt.Printf("%-48s %9s %9s %9s %8s %s\n", "", "median", "min", "max", "ratio", "target")
	row := func(name string, v, base []time.Duration, target string) {
		r := ""
		if base != nil && median(base) > 0 {
			r = fmt.Sprintf("%.2f×", float64(median(v))/float64(median(base)))
		}
		fmt.Printf("%-48s %8.2fs %8.2fs %8.2fs %8s %s\n", name, median(v).Seconds(), minD(v).Seconds(), maxD(v).Seconds(), r, target)
	}
	row("cold: job's install (prefetch wait + npm ci)", coldI, hostC, "≤ 1.10× (vs host, empty cache)")
	row("  cold: wait for the gateway's prefetch", coldW, nil, "")
	row("  cold: job's npm ci step", coldS, nil, "")
	row("cold: host npm ci, empty npm cache", hostC, nil, "")
	row("warm: job's install (prefetch wait + npm ci)", warmI, hostW, "≤ 1.15× (vs host, warm cache)")
	row("  warm: wait for the gateway's prefetch", warmW, nil, "")
	row("  warm: job's npm ci step", warmS, nil, "")
	row("warm: host npm ci, warm npm cache", hostW, nil, "")
	fmt.Printf("%-48s %8.2f×   target ≥ 2× (warm install at least twice as fast)\n", "  cold / warm job install (medians)",
		float64(median(coldI))/float64(max(median(warmI), 1)))
	row("cold: whole job (submit → exit)", coldJ, hostCT, "(vs host npm ci && npm run build, empty cache)")
	row("warm: whole job (submit → exit)", warmJ, hostWT, "(vs host npm ci && npm run build, warm cache)")
	row("host npm ci && npm run build, empty cache", hostCT, nil, "")
	row("host npm ci && npm run build, warm cache", hostWT, nil, "")
	fmt.Printf("load average: %s at start, %s at end\n", load0, loadavg())
}
