package main

// The -gateway mode: issue 12's side-by-side install benchmark on the
// real-world-sized example (examples/webapp, 373 packages), in one run:
//
//	cold: a job whose agent's registry-gateway cache (gateway.cache_dir) was
//	      emptied just before, next to host `npm ci` with an empty npm cache;
//	warm: the next job (cache filled by the cold one), next to host `npm ci`
//	      with a warm npm cache (primed in the warm-up, kept across runs);
//	the job's install step warm vs cold (from "[cleanroom] install step done
//	in …" in its log).
//
// Host runs use the host's node and npm inside the lab host namespace
// against the same Verdaccio, with --replace-registry-host=always (the
// lockfile names https://registry.npmjs.org/ as the public registry made
// it), then `npm run build`.
//
// It works with agents with and without the gateway. It first starts the
// agent with gateway.cache_dir set; an agent that refuses the key has no
// gateway, so it runs without it and says so: the jobs then measure today's
// path (sandbox straight to the registry, a cold npm cache in every job, so
// "warm" and "cold" jobs do the same work). If the lockfile gate refuses the
// unchanged lockfile's public-registry URLs (no registry_aliases yet), the
// jobs build a copy whose URLs point at the lab registry, and it says so.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

// publicRegistry is where the webapp's committed lockfile resolves.
const publicRegistry = "https://registry.npmjs.org/"

// gwRun is one iteration of the gateway mode.
type gwRun struct {
	cold, warm         *jobRun
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
	env, err := harness.Start(ctx, harness.Options{
		Bin: o.bin, Repo: o.repo, Containerd: o.containerd, Name: "gwbench",
		Progress: prefixWriter{os.Stdout, "  "},
	})
	if err != nil {
		return fmt.Errorf("starting the harness: %w", err)
	}
	defer func() {
		t := time.Now()
		if err := env.Close(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("cleaning up the harness: %w", err))
		}
		fmt.Printf("harness stopped and lab removed (%.1fs)\n", time.Since(t).Seconds())
	}()
	if o.example == "webapp" {
		if err := env.SeedWebapp(ctx); err != nil {
			return err
		}
	}

	// The agent, with the gateway's cache in a folder we can empty.
	cacheDir := filepath.Join(env.Dir, "gateway-cache")
	if err := os.MkdirAll(cacheDir, 0o700); err != nil {
		return err
	}
	gateway := true
	a, err := env.AddAgent(ctx, harness.AgentOptions{Name: "gwbench-agent",
		Extra: map[string]any{"gateway.cache_dir": cacheDir}})
	if err != nil {
		// Only "unknown key" means "no gateway": any other failure of a
		// gateway agent is the benchmark's failure.
		if !strings.Contains(err.Error(), "field gateway not found") {
			return err
		}
		gateway = false
		fmt.Println("  this agent refuses gateway.cache_dir: it has no registry gateway. The jobs measure today's path:")
		fmt.Println("  sandbox straight to the registry with an empty npm cache in every job (warm and cold jobs do the same work)")
		if a, err = env.AddAgent(ctx, harness.AgentOptions{Name: "gwbench-direct"}); err != nil {
			return err
		}
	}
	fmt.Printf("  agent %s running (%.1fs in all)\n", a.Name, time.Since(t).Seconds())

	// The project the jobs and the host build: a copy of the example, its
	// lockfile unchanged unless the gate refuses it.
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
		registry: fmt.Sprintf("http://%s:%d/", lab.RegistryIP, lab.RegistryPort), replace: "always"}
	warmCache := filepath.Join(work, "host-warm-npm-cache")
	bWarm := *b
	bWarm.cache = warmCache

	emptyCache := func() error {
		ents, err := os.ReadDir(cacheDir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(cacheDir, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}

	// Warm-up: the first job also tells whether the gate takes the
	// public-registry lockfile as it is.
	probe := o
	probe.quietFail = true
	fmt.Println("warm-up")
	if err := emptyCache(); err != nil {
		return err
	}
	j, err := submit(ctx, env, probe, proj)
	if err != nil && j != nil && gateRefusedHost(j) {
		lf := filepath.Join(proj, "package-lock.json")
		n, rerr := rewriteResolved(lf, publicRegistry, harness.RegistryURL)
		if rerr != nil {
			return rerr
		}
		fmt.Printf("  the lockfile gate refused %s as a registry host (no registry_aliases in this agent):\n", publicRegistry)
		fmt.Printf("  jobs and host build a copy with its %d resolved URLs pointed at %s (integrity unchanged)\n", n, harness.RegistryURL)
		j, err = submit(ctx, env, o, proj)
	}
	if err != nil {
		return fmt.Errorf("warm-up job: %w", err)
	}
	fmt.Printf("  cleanroom job %s: %.2fs (install step %.2fs)\n", j.id, j.end.Sub(j.start).Seconds(), j.install.Seconds())
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
		if r.cold, err = submit(ctx, env, o, proj); err != nil {
			return fmt.Errorf("iteration %d: cold job: %w", i+1, err)
		}
		if r.warm, err = submit(ctx, env, o, proj); err != nil {
			return fmt.Errorf("iteration %d: warm job: %w", i+1, err)
		}
		if r.hostCold, _, err = b.run(ctx, false); err != nil {
			return fmt.Errorf("iteration %d: host, empty cache: %w", i+1, err)
		}
		if r.hostWarm, _, err = bWarm.run(ctx, false); err != nil {
			return fmt.Errorf("iteration %d: host, warm cache: %w", i+1, err)
		}
		runs = append(runs, r)
		fmt.Printf("%2d/%d  job cold %6.2fs (install %5.2fs)  warm %6.2fs (install %5.2fs)   host npm ci cold %5.2fs  warm %5.2fs   load %s\n",
			i+1, o.n, r.cold.end.Sub(r.cold.start).Seconds(), r.cold.install.Seconds(),
			r.warm.end.Sub(r.warm.start).Seconds(), r.warm.install.Seconds(),
			r.hostCold.install.Seconds(), r.hostWarm.install.Seconds(), loadavg())
	}
	reportGateway(o, runs, gateway, load0)
	return nil
}

// gateRefusedHost reports whether a failed job was refused by the lockfile
// gate for its registry hosts.
func gateRefusedHost(j *jobRun) bool {
	for _, l := range j.lines {
		if strings.Contains(l.text, "allowed-host") {
			return true
		}
	}
	return false
}

// rewriteResolved points every "resolved" URL under from at to, in place,
// and returns how many it changed.
func rewriteResolved(path, from, to string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	old := `"resolved": "` + from
	n := strings.Count(string(b), old)
	out := strings.ReplaceAll(string(b), old, `"resolved": "`+to)
	return n, os.WriteFile(path, []byte(out), 0o644)
}

func reportGateway(o opts, runs []gwRun, gateway bool, load0 string) {
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

	path := "registry gateway, cache emptied before each cold job"
	if !gateway {
		path = "NO gateway in this agent: today's path, sandbox straight to the registry, empty npm cache every job"
	}
	fmt.Printf("\n%s, %d iterations (interleaved, after 1 untimed warm-up); job side: %s\n", o.example, len(runs), path)
	fmt.Printf("%-48s %9s %9s %9s %8s %s\n", "", "median", "min", "max", "ratio", "target")
	row := func(name string, v, base []time.Duration, target string) {
		r := ""
		if base != nil && median(base) > 0 {
			r = fmt.Sprintf("%.2f×", float64(median(v))/float64(median(base)))
		}
		fmt.Printf("%-48s %8.2fs %8.2fs %8.2fs %8s %s\n", name, median(v).Seconds(), minD(v).Seconds(), maxD(v).Seconds(), r, target)
	}
	row("cold: job's npm ci step", coldI, hostC, "≤ 1.10× (vs host, empty cache)")
	row("cold: host npm ci, empty npm cache", hostC, nil, "")
	row("warm: job's npm ci step", warmI, hostW, "≤ 1.15× (vs host, warm cache)")
	row("warm: host npm ci, warm npm cache", hostW, nil, "")
	fmt.Printf("%-48s %8.2f×   target ≥ 2× (warm install step at least twice as fast)\n", "  cold / warm install step (medians)",
		float64(median(coldI))/float64(max(median(warmI), 1)))
	row("cold: whole job (submit → exit)", coldJ, hostCT, "(vs host npm ci && npm run build, empty cache)")
	row("warm: whole job (submit → exit)", warmJ, hostWT, "(vs host npm ci && npm run build, warm cache)")
	row("host npm ci && npm run build, empty cache", hostCT, nil, "")
	row("host npm ci && npm run build, warm cache", hostWT, nil, "")
	fmt.Printf("load average: %s at start, %s at end\n", load0, loadavg())
}
