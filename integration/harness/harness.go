// Package harness owns the whole-product environment that the end-to-end
// tests and `make demo` run in: a lab of network namespaces (internal/lab)
// with the internal registry (Verdaccio, seeded with the examples'
// dependencies) in its registry namespace, and the real cleanroom binary run
// as a coordinator and as registered agents inside the lab's host namespace,
// which has no route out. The caller provides a running containerd with the
// node image (make test / make demo start one).
//
// With Options.Postgres the coordinators are two (CoordinatorAddrs) on a
// fresh PostgreSQL database, and the CLI and the agents get both URLs, in
// opposite orders (the CLI submits through the first, the agents claim
// through the second); without, one coordinator on SQLite. Coordinators adds another set of
// coordinators on a store of their own to a running environment.
//
// Every process it starts is recorded by PID and stopped by Close; every
// namespace, folder, file and database it makes is removed by Close, and
// so is every loopback relay to the coordinators (Forward).
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/internal/registry"
)

// RegistryURL is the internal registry as jobs and lockfiles know it.
var RegistryURL = fmt.Sprintf("http://%s:%d/", lab.RegistryName, lab.RegistryPort)

// CoordinatorAddr is where the coordinator listens, on the lab host
// namespace's own loopback.
const CoordinatorAddr = "127.0.0.1:7070"

// Options configure an environment.
type Options struct {
	// Bin is the cleanroom binary (required).
	Bin string
	// Repo is the checkout (examples/ lives there).
	Repo string
	// Containerd is the socket of the containerd the agents use.
	Containerd string
	// Secrets is the content of the agents' secrets file (YAML); empty: none.
	Secrets string
	// AgentEnv is added to the agents' environment (a deploy secret that a
	// malicious build would love to find, in the agent's own env).
	AgentEnv []string
	// Progress receives one line per phase; nil discards.
	Progress io.Writer
	// Name prefixes the lab ("e2e", "demo").
	Name string
	// LeaseTTL, if set, is passed to the coordinator as --lease-ttl (tests
	// that kill an agent mid-job use a short one, so the lease expires in
	// seconds rather than the default 30 s).
	LeaseTTL time.Duration
	// Postgres is the DSN of a PostgreSQL server whose role may CREATE
	// DATABASE: Start makes a fresh database on it and runs two
	// coordinators (CoordinatorAddrs) on it, dropped at Close. Empty: one
	// coordinator on SQLite.
	Postgres string
	// NoCoordinator leaves the coordinator out: the lab and the registry
	// only, for a test that starts its own (the README quickstart).
	NoCoordinator bool
}

// Env is a running environment.
type Env struct {
	Lab      *lab.Lab
	Registry *registry.Registry
	Dir      string
	URL      string   // the first coordinator
	URLs     []string // every coordinator, as the CLI gets them
	// AgentURLs are the coordinators as the agents get them (URLs, or
	// last first: CoordinatorOptions.AgentsLastFirst); the first is in
	// the provenance they sign and the one Forward relays to.
	AgentURLs []string
	Admin     string // admin token
	Store     string // "sqlite" or "postgres"
	// CoordinatorProcs are the coordinators' processes, in URLs' order.
	CoordinatorProcs []*Proc
	opts             Options
	// parent is the environment whose lab this one (from Coordinators)
	// uses; nil for Start's.
	parent *Env

	mu       sync.Mutex
	procs    []*Proc
	stops    []func()       // relays made by Forward
	cleanups []func() error // after the processes stopped (databases)
	views    []*Env         // made by Coordinators
	closed   bool
}

// agentSeq numbers the agents this process started, for their
// user-namespace ranges.
var agentSeq atomic.Int64

// Proc is a process the harness started.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Log  string // its output file
	done chan struct{}
	err  error
}

// Wait returns when the process exits.
func (p *Proc) Wait() error { <-p.done; return p.err }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process (only ever to a PID we started).
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	return p.Cmd.Process.Signal(sig)
}

// Output returns what the process printed so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

func (e *Env) say(format string, args ...any) {
	if e.opts.Progress != nil {
		fmt.Fprintf(e.opts.Progress, format+"\n", args...)
	}
}

// Start builds the lab, the registry and the coordinator. Agents are added
// with AddAgent. On error everything made so far is removed.
func Start(ctx context.Context, o Options) (_ *Env, retErr error) {
	if o.Bin == "" || o.Repo == "" {
		return nil, errors.New("harness: Bin and Repo are required")
	}
	if o.Name == "" {
		o.Name = "e2e"
	}
	dir, err := os.MkdirTemp("", "cleanroom-"+o.Name+"-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, opts: o}
	defer func() {
		if retErr != nil {
			_ = e.Close()
		}
	}()
	t := time.Now()
	if e.Lab, err = lab.New(ctx, o.Name); err != nil {
		return nil, fmt.Errorf("creating the lab network: %w", err)
	}
	e.say("lab network %s: agent host, registry host, forbidden host (%.1fs)", e.Lab.ID, time.Since(t).Seconds())

	t = time.Now()
	inst, err := registry.Install(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("installing verdaccio: %w", err)
	}
	e.Registry, err = registry.Start(ctx, registry.Options{Install: inst, NetNS: e.Lab.RegistryNS,
		Listen:   net.JoinHostPort(lab.RegistryIP.String(), fmt.Sprint(lab.RegistryPort)),
		Progress: o.Progress})
	if err != nil {
		return nil, fmt.Errorf("starting verdaccio: %w", err)
	}
	if err := e.Registry.SeedExamples(ctx, filepath.Join(o.Repo, "examples")); err != nil {
		return nil, fmt.Errorf("seeding the registry: %w", err)
	}
	e.say("internal registry %s (Verdaccio, no uplinks) seeded with the examples' packages (%.1fs)", RegistryURL, time.Since(t).Seconds())

	if o.NoCoordinator {
		return e, nil
	}
	t = time.Now()
	co := CoordinatorOptions{Addrs: CoordinatorAddrs[:1], LeaseTTL: o.LeaseTTL}
	if o.Postgres != "" {
		co.Addrs, co.Postgres, co.AgentsLastFirst = CoordinatorAddrs, o.Postgres, true
	}
	if err := e.startCoordinators(ctx, co); err != nil {
		return nil, err
	}
	e.say("%d coordinator(s) on %s, %s store (%.1fs)", len(e.URLs), strings.Join(e.URLs, " "), e.Store, time.Since(t).Seconds())
	return e, nil
}

// SeedWebapp adds the webapp example's 373 packages to the registry (on top
// of the small examples' Start seeds). Only what builds the webapp calls it:
// about 10 s with the tarballs cached, plus ~40 s to pack them from the
// public registry the first time on a machine; the demo does not pay it.
// Idempotent.
func (e *Env) SeedWebapp(ctx context.Context) error {
	t := time.Now()
	if err := e.Registry.SeedWebapp(ctx, filepath.Join(e.opts.Repo, "examples")); err != nil {
		return fmt.Errorf("seeding the webapp example's packages: %w", err)
	}
	e.say("internal registry seeded with the webapp example's packages (%.1fs)", time.Since(t).Seconds())
	return nil
}

// start runs the cleanroom binary with args inside the lab host namespace.
func (e *Env) start(ctx context.Context, name string, env []string, args ...string) (*Proc, error) {
	logPath := filepath.Join(e.Dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.Lab.HostNSPath(), "--", e.opts.Bin}, args...)...)
	cmd.Env = append(baseEnv(e.opts.Containerd), env...)
	cmd.Stdout, cmd.Stderr = f, f
	// nsenter execs the binary: the PID we record is cleanroom's. Only the
	// network namespace changes (ip netns exec would also give the agent a
	// mount namespace of its own, hiding the sandboxes' /run/netns bind
	// mounts from containerd).
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

func baseEnv(containerd string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	if containerd != "" {
		env = append(env, "CLEANROOM_CONTAINERD_ADDRESS="+containerd)
	}
	return env
}

// CLI runs `cleanroom ARGS` as a user would, inside the lab host namespace,
// pointed at every coordinator (they fail over) with the admin token. It returns stdout, stderr
// and the exit code.
func (e *Env) CLI(ctx context.Context, args ...string) (string, string, int) {
	return e.cliAt(ctx, strings.Join(e.URLs, ","), args...)
}

// cliAt is CLI pointed at urls (a comma-separated list).
func (e *Env) cliAt(ctx context.Context, urls string, args ...string) (string, string, int) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + e.Lab.HostNSPath(), "--", e.opts.Bin}, args...)...)
	cmd.Env = append(baseEnv(e.opts.Containerd), "CLEANROOM_URL="+urls, "CLEANROOM_TOKEN="+e.Admin, "HOME="+e.Dir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return out.String(), errb.String(), code
}

// AgentGracePeriod is the grace_period of every agent the harness starts.
const AgentGracePeriod = 2 * time.Second

// AgentOptions configure one registered agent.
type AgentOptions struct {
	Name        string
	Labels      string // k=v,...
	Concurrency int
	OnViolation string // deny (default) | kill
	Mode        string // forward (default: the registry is another lab host) | direct
	// Secrets replaces Options.Secrets for this agent when set.
	Secrets string
	// RegistryTokenSecret names the secrets-file entry that is the
	// registry's token (agent config registry_token_secret): the registry
	// gateway sends it upstream; no job may be granted it, no sandbox sees it.
	RegistryTokenSecret string
	// Hosts are static name → IP answers added to the registry's
	// (network.hosts), e.g. the lab's git server.
	Hosts map[string]string
	// Git is the agent's git section (hosts, CA, limits); zero: git
	// sources are refused.
	Git agent.GitConfig
	// Extra are config keys written into agent.yaml as they are, after
	// everything else, by dotted path ("gateway.cache_dir": "/x"): for
	// settings this harness has no field for, such as those of a newer
	// agent. An agent that does not know a key refuses to start.
	Extra map[string]any
}

// Agent is a registered agent process.
type Agent struct {
	*Proc
	Name   string
	Config string
	cfg    *agent.Config
}

// AddAgent registers an agent with a fresh registration token, writes its
// policy (registry, static name, secrets file), and starts `agent run`.
func (e *Env) AddAgent(ctx context.Context, o AgentOptions) (*Agent, error) {
	if o.Concurrency == 0 {
		o.Concurrency = 1
	}
	if o.OnViolation == "" {
		o.OnViolation = "deny"
	}
	if o.Mode == "" {
		o.Mode = agent.NetworkModeForward
	}
	out, errOut, code := e.CLI(ctx, "token", "create", "--uses", "1", "--expires", "10m", "--json")
	if code != 0 {
		return nil, fmt.Errorf("creating a registration token: %s", errOut)
	}
	tok := jsonField(out, "token")
	if tok == "" {
		return nil, fmt.Errorf("no token in %q", out)
	}
	adir := filepath.Join(e.Dir, "agent-"+o.Name)
	cfgPath := filepath.Join(adir, "agent.yaml")
	args := []string{"agent", "register", "--url", strings.Join(e.AgentURLs, ","), "--token", tok, "--name", o.Name, "--config", cfgPath,
		"--concurrency", fmt.Sprint(o.Concurrency)}
	if o.Labels != "" {
		args = append(args, "--labels", o.Labels)
	}
	if _, errOut, code := e.CLI(ctx, args...); code != 0 {
		return nil, fmt.Errorf("registering agent %s: %s", o.Name, errOut)
	}
	cfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		return nil, err
	}
	cfg.Network.Registries = []string{RegistryURL}
	cfg.Network.Hosts = map[string]string{lab.RegistryName: lab.RegistryIP.String()}
	for h, ip := range o.Hosts {
		cfg.Network.Hosts[h] = ip
	}
	cfg.Git = o.Git
	cfg.Network.OnViolation = api.OnViolation(o.OnViolation)
	cfg.Network.Mode = o.Mode
	// A short grace period: Close (SIGTERM) then ends within its 15 s even
	// if a job is still running. (Zero would mean the default, 5 minutes.)
	cfg.GracePeriod = api.Duration(AgentGracePeriod)
	// Agents of one host need disjoint user-namespace ranges (the second
	// one on a range refuses to start): 16 slots each from the default base.
	// The counter is the process's, not the Env's: environments made by
	// Coordinators share the lab and the host with Start's.
	cfg.Sandbox.UserNS.Base = uint32(100_000_000 + (agentSeq.Add(1)-1)%256*16*65536)
	if e.opts.Containerd != "" {
		cfg.Containerd.Address = e.opts.Containerd
	}
	secretsYAML := e.opts.Secrets
	if o.Secrets != "" {
		secretsYAML = o.Secrets
	}
	cfg.RegistryTokenSecret = o.RegistryTokenSecret
	if secretsYAML != "" {
		sf := filepath.Join(adir, "secrets.yaml")
		if err := os.WriteFile(sf, []byte(secretsYAML), 0o600); err != nil {
			return nil, err
		}
		cfg.SecretsFile = sf
	}
	cfg.SetDefaults()
	if err := cfg.Save(cfgPath); err != nil {
		return nil, err
	}
	if err := patchYAML(cfgPath, o.Extra); err != nil {
		return nil, fmt.Errorf("writing extra agent config: %w", err)
	}
	p, err := e.start(ctx, "agent-"+o.Name, e.opts.AgentEnv, "agent", "run", "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	a := &Agent{Proc: p, Name: o.Name, Config: cfgPath, cfg: cfg}
	// Ready when its log says it is claiming (after start-up GC).
	if err := waitStarted(ctx, a, 0); err != nil {
		return nil, err
	}
	return a, nil
}

// patchYAML sets each dotted key of extra in the YAML file at path,
// creating the maps on the way.
func patchYAML(path string, extra map[string]any) error {
	if len(extra) == 0 {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	doc := map[string]any{}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return err
	}
	for key, v := range extra {
		m, parts := doc, strings.Split(key, ".")
		for _, p := range parts[:len(parts)-1] {
			next, ok := m[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[p] = next
			}
			m = next
		}
		m[parts[len(parts)-1]] = v
	}
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o600)
}

// Restart starts the agent's process again with the same config (after a
// kill), as an operator's service manager would, and returns once the new
// process has run its start-up garbage collection and is claiming jobs.
func (e *Env) Restart(ctx context.Context, a *Agent) error {
	if !a.Exited() {
		return fmt.Errorf("restarting agent %s: it is still running", a.Name)
	}
	// The new process appends to the same log: wait for one more start line.
	before := strings.Count(a.Output(), agentStartedLine)
	p, err := e.start(ctx, "agent-"+a.Name, e.opts.AgentEnv, "agent", "run", "--config", a.Config)
	if err != nil {
		return err
	}
	a.Proc = p
	return waitStarted(ctx, a, before)
}

// agentStartedLine is what `agent run` logs once its start-up hook (GC) has
// run and it begins claiming.
const agentStartedLine = "agent started"

func waitStarted(ctx context.Context, a *Agent, before int) error {
	deadline := time.Now().Add(60 * time.Second)
	for strings.Count(a.Output(), agentStartedLine) <= before {
		if a.Exited() {
			return fmt.Errorf("agent %s exited: %s", a.Name, a.Output())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s did not start claiming: %s", a.Name, a.Output())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for agent %s: %w", a.Name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// RunnerID is the id the coordinator gave the agent at registration.
func (a *Agent) RunnerID() string { return a.cfg.RunnerID }

// DataDir is the agent's data dir (workspaces, spool, jobs, egress.jsonl).
func (a *Agent) DataDir() string { return a.cfg.DataDir }

func jsonField(s, key string) string {
	// Small and dependency-free: the CLI prints {"token":"…",…}.
	i := strings.Index(s, `"`+key+`"`)
	if i < 0 {
		return ""
	}
	rest := s[i+len(key)+2:]
	j := strings.Index(rest, `"`)
	if j < 0 {
		return ""
	}
	rest = rest[j+1:]
	k := strings.Index(rest, `"`)
	if k < 0 {
		return ""
	}
	return rest[:k]
}

// Close stops the relays made by Forward, every process the harness started
// (SIGTERM, then SIGKILL after 15 s: agents destroy their sandboxes on the
// way out), drops the databases it made, stops the registry, removes the
// lab and the temp dir. An Env from Coordinators closes only what is its
// own: its relays, processes and database.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	procs := append([]*Proc{}, e.procs...)
	stops, cleanups, views := e.stops, e.cleanups, e.views
	e.mu.Unlock()
	var errs []error
	for _, v := range views {
		if err := v.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, stop := range stops {
		stop()
	}
	// Agents first, then the coordinators (they report to them on the way
	// out).
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		if p.Exited() {
			continue
		}
		_ = p.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = p.Signal(syscall.SIGKILL)
			<-p.done
			errs = append(errs, fmt.Errorf("%s did not stop on SIGTERM within 15s", p.Name))
		}
	}
	for _, c := range cleanups {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.parent != nil {
		return errors.Join(errs...)
	}
	if e.Registry != nil {
		if err := e.Registry.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.Lab != nil {
		if err := e.Lab.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if os.Getenv("CLEANROOM_KEEP_LOGS") == "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// GitURL is the lab git server's URL of repository name.
func GitURL(name string) string {
	return fmt.Sprintf("https://%s:%d/%s.git", lab.GitName, lab.GitPort, name)
}

// StartGit starts the lab's HTTPS git server on the registry host
// (lab.GitName, lab.GitPort; its CA in the returned server's CAFile). It
// stops with the lab.
func (e *Env) StartGit() (*lab.GitServer, error) {
	dir := filepath.Join(e.Dir, "git")
	addr := net.JoinHostPort(lab.RegistryIP.String(), fmt.Sprint(lab.GitPort))
	g, err := e.Lab.ServeGit(e.Lab.RegistryNS, addr, dir, lab.GitName)
	if err != nil {
		return nil, err
	}
	e.say("git server https://%s:%d/ (git http-backend, its own CA) on the registry host", lab.GitName, lab.GitPort)
	return g, nil
}

// ReadSpec is a tiny helper for tests: the YAML of a job spec file as a map.
func ReadSpec(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, yaml.Unmarshal(b, &m)
}
