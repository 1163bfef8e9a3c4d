// Package agent owns the build agent: registration with a coordinator (key
// pair, runner token, config file), and the job loop — claim with N slots
// (long-poll), download and safely extract an uploaded source on the host
// side (a git source is fetched by the Executor in its cage, SourceFetcher;
// without one git sources are refused), run the job through an Executor, stream the log through an on-disk spool, send
// heartbeats (cancel arrives through them), upload egress events, artifacts
// and the result, remove the workspace — and graceful stop. The sandbox,
// network policy and secrets are composed by the Executor that cmd/cleanroom
// wires in (cmd/cleanroom/executor.go); this package does not import them.
// The job loop reaches the coordinator through the Coordinator interface it
// owns (an api.Client unless New is given another), so its handling of lost
// leases, revocation and retries is unit-tested against an in-memory fake.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Config is the agent's YAML config file, written by `agent register` with
// mode 0600 (it holds the runner token) and read by `agent run`.
type Config struct {
	// Coordinator is the coordinator's base URL (https://…, or http:// on
	// loopback): one coordinator or the load balancer in front of several.
	Coordinator string `yaml:"coordinator,omitempty"`
	// Coordinators lists several coordinators that share one store (one
	// database): the agent talks to one and fails over to the next on
	// connection errors (api.Client). Its runner token works on every
	// one, since registration lives in the store. Set this or Coordinator
	// (which may also hold a comma-separated list).
	Coordinators []string `yaml:"coordinators,omitempty"`
	// CAFile, if set, is a PEM bundle trusted for the coordinator's TLS
	// certificate (a private CA).
	CAFile string `yaml:"ca_file,omitempty"`
	// RunnerID and RunnerToken identify the agent; the token may live in
	// RunnerTokenFile instead, so the config can be shared without it.
	RunnerID        string `yaml:"runner_id"`
	RunnerToken     string `yaml:"runner_token,omitempty"`
	RunnerTokenFile string `yaml:"runner_token_file,omitempty"`
	Name            string `yaml:"name"`
	// Labels are matched against job labels (runner ⊇ job).
	Labels map[string]string `yaml:"labels,omitempty"`
	// SigningKey is the ed25519 private key (PKCS#8 PEM, mode 0600) used to
	// sign provenance; its public half is registered with the coordinator.
	SigningKey string `yaml:"signing_key"`
	// DataDir holds workspaces/ and spool/.
	DataDir string `yaml:"data_dir"`
	// Concurrency is the number of jobs run at once (default 1).
	Concurrency int `yaml:"concurrency,omitempty"`
	// GracePeriod is how long running jobs may finish after a stop signal
	// before they are canceled (default 5m).
	GracePeriod api.Duration `yaml:"grace_period,omitempty"`
	// DefaultTimeout applies to jobs whose spec has none (default 1h).
	DefaultTimeout api.Duration `yaml:"default_timeout,omitempty"`

	// The sections below are parsed and validated here and mapped by the
	// executor onto the sandbox, netpolicy, secrets and supplychain packages.
	Containerd ContainerdConfig `yaml:"containerd,omitempty"`
	// Limits are the sandbox limits for jobs whose spec sets none.
	Limits      api.Resources `yaml:"limits,omitempty"`
	Image       string        `yaml:"image,omitempty"`
	Network     NetworkConfig `yaml:"network,omitempty"`
	SecretsFile string        `yaml:"secrets_file,omitempty"`
	// RegistryTokenSecret names a secret of the secrets file that is the
	// first internal registry's token (network.registries[0]) when
	// Registries gives it none. Only the registry gateway uses it, upstream:
	// no job gets it, and a job asking for it is refused.
	RegistryTokenSecret string `yaml:"registry_token_secret,omitempty"`
	// Registries give the internal registries' credentials and scopes (the
	// gateway's upstreams). An entry whose URL is one of
	// network.registries describes it; any other is a further registry
	// lockfiles may resolve to (typically serving Scopes).
	Registries []RegistryConfig `yaml:"registries,omitempty"`
	// Gateway configures the registry gateway: each job's endpoint and the
	// agent-wide cache of verified tarballs.
	Gateway GatewayConfig `yaml:"gateway,omitempty"`
	// RegistryAliases are hosts the internal registry mirrors (default
	// registry.npmjs.org; [] for none): lockfile entries resolved there pass
	// the gate and are fetched from the internal registry by the gateway.
	RegistryAliases []string `yaml:"registry_aliases,omitempty"`
	// AllowSHA1 accepts lockfile entries pinned by sha1 only, served when
	// the tarball matches that sha1 and the sha512 the registry publishes
	// (default false: refused).
	AllowSHA1 bool `yaml:"allow_sha1,omitempty"`
	// MinReleaseAge refuses a job whose lockfile pins a version published
	// less than this long ago (default 0: off); a job may ask for longer.
	MinReleaseAge  api.Duration       `yaml:"min_release_age,omitempty"`
	InstallScripts api.InstallScripts `yaml:"install_scripts,omitempty"`
	// Artifacts bound the copies of a job's artifacts on this host.
	Artifacts ArtifactsConfig `yaml:"artifacts,omitempty"`
	// Git is where git sources may be fetched from; none = git sources
	// are refused by this agent.
	Git GitConfig `yaml:"git,omitempty"`
	// MetricsListen, if set, is the host:port of the agent's plain-HTTP
	// /metrics, /healthz and /readyz (off by default).
	MetricsListen string `yaml:"metrics_listen,omitempty"`
	// Sandbox configures the isolation of the sandboxes beyond their limits.
	Sandbox SandboxConfig `yaml:"sandbox,omitempty"`
}

// SandboxConfig is the isolation of the job sandboxes.
type SandboxConfig struct {
	UserNS UserNSConfig `yaml:"userns,omitempty"`
}

// UserNSConfig puts every sandbox in a user namespace of its own: container
// IDs 0–65535 map to a host range of 65,536 IDs per slot (concurrency),
// from Base, so the build user is a host UID that no real user and no other
// running job has.
type UserNSConfig struct {
	// Mode is auto (default: on when the kernel has user namespaces, off
	// with a warning when it has not), on (the agent refuses to start
	// without them) or off.
	Mode string `yaml:"mode,omitempty"`
	// Base is the first host ID of slot 0 (default 100000000, the
	// sandbox package's DefaultUserNSBase). The agent refuses to start when
	// base … base+concurrency·65536−1 overlaps a UID or GID of /etc/passwd
	// or /etc/group, a range of /etc/subuid or /etc/subgid, or the range of
	// another agent on the host.
	Base uint32 `yaml:"base,omitempty"`
}

// User-namespace modes (UserNSConfig.Mode).
const (
	UserNSAuto = "auto"
	UserNSOn   = "on"
	UserNSOff  = "off"
)

// ArtifactsConfig bounds what the agent copies out of a job's workspace
// before it uploads it: total bytes (apparent sizes, so a sparse file counts
// whole; default the job's disk limit) and number of files (default 10000).
type ArtifactsConfig struct {
	MaxBytes api.ByteSize `yaml:"max_bytes,omitempty"`
	MaxFiles int          `yaml:"max_files,omitempty"`
}

// GitConfig is the agent's policy for git sources. The fetch runs in a
// network namespace of its own whose only destinations are Hosts (through
// the same netpolicy as a sandbox), as an unprivileged user, within
// MaxBytes and MaxFiles.
type GitConfig struct {
	// Hosts are the host:port destinations git may reach (an https URL's
	// port is 443 unless it names one). Empty: git sources are refused.
	Hosts []string `yaml:"hosts,omitempty"`
	// CAFile, if set, is a PEM bundle git trusts for the hosts' TLS
	// certificates (instead of the system's).
	CAFile string `yaml:"ca_file,omitempty"`
	// MaxBytes bounds the clone directory (pack and checkout) while git
	// runs (default 1GiB).
	MaxBytes api.ByteSize `yaml:"max_bytes,omitempty"`
	// MaxFiles bounds the number of files and directories of the checkout
	// (default 100000).
	MaxFiles int `yaml:"max_files,omitempty"`
}

// RegistryConfig is one internal registry the gateway fetches from, with
// its credential: a token sent upstream as a bearer token, from a secret of
// the secrets file or from a file (mode 0600); never in a sandbox.
type RegistryConfig struct {
	URL string `yaml:"url"`
	// Scopes ("@acme") whose packages come from this registry (npm's
	// @scope:registry); a registry without scopes serves every other name.
	Scopes      []string `yaml:"scopes,omitempty"`
	TokenSecret string   `yaml:"token_secret,omitempty"`
	TokenFile   string   `yaml:"token_file,omitempty"`
}

// GatewayConfig is the registry gateway's part of the agent config.
type GatewayConfig struct {
	// Port each job's endpoint listens on, on the host end of the job's
	// veth (default 4873; every job's host end has its own address).
	Port int `yaml:"port,omitempty"`
	// CacheDir holds the verified tarballs (default DATA_DIR/gateway-cache);
	// no sandbox mounts it.
	CacheDir string `yaml:"cache_dir,omitempty"`
	// CacheMaxBytes caps the cache; the least recently used tarballs go
	// first (default 10GiB).
	CacheMaxBytes api.ByteSize `yaml:"cache_max_bytes,omitempty"`
}

// ContainerdConfig locates the containerd daemon the sandboxes run in.
type ContainerdConfig struct {
	Address   string `yaml:"address,omitempty"`
	Namespace string `yaml:"namespace,omitempty"`
}

// NetworkConfig is the agent-wide egress policy: the internal registries
// every job may reach, extra destinations, what a violation does, the
// policy mode, and static host→IP answers for the DNS responder.
type NetworkConfig struct {
	Registries  []string          `yaml:"registries,omitempty"`
	Extra       []string          `yaml:"extra,omitempty"`
	OnViolation api.OnViolation   `yaml:"on_violation,omitempty"`
	Mode        string            `yaml:"mode,omitempty"`
	Hosts       map[string]string `yaml:"hosts,omitempty"`
	// Masquerade source-NATs forwarded flows (forward mode only).
	Masquerade bool `yaml:"masquerade,omitempty"`
	// HostNetNS is the path of the namespace the host ends of the veths
	// live in (empty: the agent's own), e.g. a lab namespace in tests.
	HostNetNS string `yaml:"host_netns,omitempty"`
	// StateDir holds the host's sandbox address pool (default
	// /var/lib/cleanroom/net). Agents sharing a host must share it.
	StateDir string `yaml:"state_dir,omitempty"`
}

// Network modes (netpolicy.ModeForward / ModeDirect). "forward" (default):
// the registry is elsewhere and the host namespace forwards the sandbox's
// allowed flows to it — only those — (needs net.ipv4.ip_forward=1 on the
// host, which cleanroom checks and never sets); "direct": the only
// destination is a service on the host end of the sandbox's veth (the
// planned per-job registry proxy).
const (
	NetworkModeDirect  = "direct"
	NetworkModeForward = "forward"
)

// Defaults filled in by Load.
const (
	DefaultContainerdAddress   = "/run/containerd/containerd.sock"
	DefaultContainerdNamespace = "cleanroom"
	DefaultGracePeriod         = 5 * time.Minute
	DefaultJobTimeout          = time.Hour
	DefaultNetStateDir         = "/var/lib/cleanroom/net"
	DefaultGitMaxBytes         = 1 << 30
	DefaultGitMaxFiles         = 100000
	DefaultGatewayPort         = 4873
	DefaultGatewayCacheBytes   = 10 << 30
	// DefaultGatewayCacheDir is under data_dir.
	DefaultGatewayCacheDir = "gateway-cache"
)

// DefaultRegistryAliases are the hosts the internal registry is taken to
// mirror when the config names none: the public npm registry.
var DefaultRegistryAliases = []string{"registry.npmjs.org"}

// LoadConfig reads, defaults and validates the config at path. Relative
// paths inside are resolved against the config's directory.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading agent config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("parsing agent config %s: %w", path, err)
	}
	c.resolvePaths(filepath.Dir(path))
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("validating agent config %s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) resolvePaths(dir string) {
	paths := []*string{&c.SigningKey, &c.DataDir, &c.RunnerTokenFile, &c.SecretsFile, &c.CAFile, &c.Network.StateDir, &c.Git.CAFile, &c.Gateway.CacheDir}
	for i := range c.Registries {
		paths = append(paths, &c.Registries[i].TokenFile)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	if c.GracePeriod == 0 {
		c.GracePeriod = api.Duration(DefaultGracePeriod)
	}
	if c.DefaultTimeout == 0 {
		c.DefaultTimeout = api.Duration(DefaultJobTimeout)
	}
	if c.Containerd.Address == "" {
		c.Containerd.Address = DefaultContainerdAddress
	}
	if c.Containerd.Namespace == "" {
		c.Containerd.Namespace = DefaultContainerdNamespace
	}
	if c.Network.OnViolation == "" {
		c.Network.OnViolation = api.OnViolationDeny
	}
	if c.Network.Mode == "" {
		c.Network.Mode = NetworkModeForward
	}
	if c.Network.StateDir == "" {
		c.Network.StateDir = DefaultNetStateDir
	}
	if c.Git.MaxBytes == 0 {
		c.Git.MaxBytes = DefaultGitMaxBytes
	}
	if c.Git.MaxFiles == 0 {
		c.Git.MaxFiles = DefaultGitMaxFiles
	}
	if c.Gateway.Port == 0 {
		c.Gateway.Port = DefaultGatewayPort
	}
	if c.Gateway.CacheDir == "" && c.DataDir != "" {
		c.Gateway.CacheDir = filepath.Join(c.DataDir, DefaultGatewayCacheDir)
	}
	if c.Gateway.CacheMaxBytes == 0 {
		c.Gateway.CacheMaxBytes = DefaultGatewayCacheBytes
	}
	if c.RegistryAliases == nil {
		c.RegistryAliases = append([]string(nil), DefaultRegistryAliases...)
	}
	if c.Sandbox.UserNS.Mode == "" {
		c.Sandbox.UserNS.Mode = UserNSAuto
	}
}

// Validate returns every problem at once as api.FieldErrors.
func (c *Config) Validate() error {
	var fe api.FieldErrors
	add := func(f, m string) { fe = append(fe, api.FieldError{Field: f, Message: m}) }
	if c.Coordinator != "" && len(c.Coordinators) > 0 {
		add("coordinators", "set coordinator or coordinators, not both")
	}
	if len(c.URLs()) == 0 {
		add("coordinator", "required: the coordinator's http:// or https:// URL, or coordinators: a list of them")
	}
	for i, u := range api.SplitURLs(c.Coordinator) {
		if !validURL(u) {
			field := "coordinator"
			if strings.Contains(c.Coordinator, ",") {
				field = fmt.Sprintf("coordinator[%d]", i)
			}
			add(field, "must be an http:// or https:// URL")
		}
	}
	for i, u := range c.Coordinators {
		if !validURL(u) {
			add(fmt.Sprintf("coordinators[%d]", i), "must be an http:// or https:// URL")
		}
	}
	if c.RunnerID == "" {
		add("runner_id", "required (written by agent register)")
	}
	if c.RunnerToken == "" && c.RunnerTokenFile == "" {
		add("runner_token", "required, or runner_token_file")
	}
	if c.RunnerToken != "" && c.RunnerTokenFile != "" {
		add("runner_token_file", "set runner_token or runner_token_file, not both")
	}
	if c.Name == "" {
		add("name", "required")
	}
	for k := range c.Labels {
		if !api.ValidLabelKey(k) {
			add("labels."+k, "invalid label key")
		}
	}
	if c.SigningKey == "" {
		add("signing_key", "required")
	}
	if c.DataDir == "" {
		add("data_dir", "required")
	}
	if c.Concurrency < 1 || c.Concurrency > 256 {
		add("concurrency", "must be 1-256")
	}
	if c.GracePeriod < 0 {
		add("grace_period", "must not be negative")
	}
	if c.DefaultTimeout < 0 || c.DefaultTimeout.D() > api.MaxTimeout {
		add("default_timeout", "must be between 0 and 24h")
	}
	if c.Containerd.Address == "" {
		add("containerd.address", "required")
	}
	for i, r := range c.Network.Registries {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(fmt.Sprintf("network.registries[%d]", i), "must be an http:// or https:// URL")
		}
	}
	for i, r := range c.Registries {
		f := fmt.Sprintf("registries[%d]", i)
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(f+".url", "must be an http:// or https:// URL")
		}
		if r.TokenSecret != "" && r.TokenFile != "" {
			add(f+".token_file", "set token_secret or token_file, not both")
		}
		for j, sc := range r.Scopes {
			if !validScope(sc) {
				add(fmt.Sprintf("%s.scopes[%d]", f, j), "must be an npm scope such as @acme")
			}
		}
	}
	if c.Gateway.Port < 0 || c.Gateway.Port > 65535 {
		add("gateway.port", "must be a TCP port")
	}
	if c.Gateway.CacheMaxBytes < 0 {
		add("gateway.cache_max_bytes", "must not be negative")
	}
	for i, h := range c.RegistryAliases {
		if h == "" || strings.ContainsAny(h, "/@ ") {
			add(fmt.Sprintf("registry_aliases[%d]", i), "must be a host or host:port, e.g. registry.npmjs.org")
		}
	}
	if c.MinReleaseAge < 0 || c.MinReleaseAge.D() > api.MaxReleaseAge {
		add("min_release_age", fmt.Sprintf("must be between 0 and %s", api.MaxReleaseAge))
	}
	for i, r := range c.Network.Extra {
		if _, _, err := net.SplitHostPort(r); err != nil || strings.Contains(r, "/") {
			add(fmt.Sprintf("network.extra[%d]", i), "must be host:port")
		}
	}
	if v, err := api.ParseOnViolation(string(c.Network.OnViolation)); err != nil || v == "" {
		add("network.on_violation", "must be deny or kill")
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			add("metrics_listen", "must be host:port, e.g. 127.0.0.1:9101")
		}
	}
	if c.Artifacts.MaxBytes < 0 {
		add("artifacts.max_bytes", "must not be negative")
	}
	if c.Artifacts.MaxFiles < 0 {
		add("artifacts.max_files", "must not be negative")
	}
	switch c.Network.Mode {
	case NetworkModeDirect, NetworkModeForward:
	default:
		add("network.mode", "must be direct or forward")
	}
	if c.Network.Masquerade && c.Network.Mode != NetworkModeForward {
		add("network.masquerade", "only applies to forward mode")
	}
	if c.Network.HostNetNS != "" && !filepath.IsAbs(c.Network.HostNetNS) {
		add("network.host_netns", "must be an absolute path such as /run/netns/lab")
	}
	for i, h := range c.Git.Hosts {
		if _, p, err := net.SplitHostPort(h); err != nil || strings.Contains(h, "/") || p == "" {
			add(fmt.Sprintf("git.hosts[%d]", i), "must be host:port, e.g. git.corp.example:443")
		}
	}
	if len(c.Git.Hosts) > 0 && c.Network.Mode != NetworkModeForward {
		add("git.hosts", "git hosts are reached through forward mode (network.mode: forward)")
	}
	if c.Git.MaxBytes < 0 {
		add("git.max_bytes", "must not be negative")
	}
	if c.Git.MaxFiles < 0 {
		add("git.max_files", "must not be negative")
	}
	switch c.Sandbox.UserNS.Mode {
	case UserNSAuto, UserNSOn, UserNSOff:
	default:
		add("sandbox.userns.mode", "must be auto, on or off")
	}
	if b := uint64(c.Sandbox.UserNS.Base); b != 0 && (b < 65536 || b+uint64(max(c.Concurrency, 1))*65536 > 1<<32-1) {
		add("sandbox.userns.base", "must be at least 65536, with base + concurrency×65536 within the 32-bit IDs (e.g. 100000000)")
	}
	spec := api.JobSpec{Build: api.Build{Script: "x"}, Resources: c.Limits}
	if err := spec.Validate(); err != nil {
		var sfe api.FieldErrors
		if errors.As(err, &sfe) {
			for _, f := range sfe {
				fe = append(fe, api.FieldError{Field: strings.Replace(f.Field, "resources.", "limits.", 1), Message: f.Message})
			}
		}
	}
	for h, ip := range c.Network.Hosts {
		if net.ParseIP(ip) == nil {
			add("network.hosts."+h, "must map a host name to an IP address")
		}
	}
	spec = api.JobSpec{Build: api.Build{Script: "x"}, InstallScripts: c.InstallScripts}
	if err := spec.Validate(); err != nil {
		var sfe api.FieldErrors
		if errors.As(err, &sfe) {
			fe = append(fe, sfe...)
		}
	}
	if len(fe) > 0 {
		return fe
	}
	return nil
}

// URLs returns the coordinators' URLs: Coordinators, or Coordinator split
// at commas.
func (c *Config) URLs() []string {
	if len(c.Coordinators) > 0 {
		return api.SplitURLs(strings.Join(c.Coordinators, ","))
	}
	return api.SplitURLs(c.Coordinator)
}

// validURL accepts an http:// or https:// URL with a host.
func validURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// GateRegistries are the registry URLs this agent's lockfile gate accepts,
// as the agent reports them with its claims (for `cleanroom submit`'s own
// gate): network.registries, the registries entries' URLs, and each
// registry alias as an https registry at its root (what the gate accepts
// for an alias).
func (c *Config) GateRegistries() []string {
	out := append([]string(nil), c.Network.Registries...)
	for _, r := range c.Registries {
		if !slices.Contains(out, r.URL) {
			out = append(out, r.URL)
		}
	}
	for _, h := range c.RegistryAliases {
		out = append(out, "https://"+h+"/")
	}
	return out
}

// validScope: "@" and an npm package name part.
func validScope(s string) bool {
	if len(s) < 2 || s[0] != '@' {
		return false
	}
	for _, c := range s[1:] {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.ContainsRune("-._~", c)) {
			return false
		}
	}
	return true
}

// Token returns the runner token, from the config or its file.
func (c *Config) Token() (string, error) {
	if c.RunnerToken != "" {
		return c.RunnerToken, nil
	}
	b, err := os.ReadFile(c.RunnerTokenFile)
	if err != nil {
		return "", fmt.Errorf("reading runner token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Save writes the config to path with mode 0600, atomically.
func (c *Config) Save(path string) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encoding agent config: %w", err)
	}
	header := "# cleanroom agent config, written by `cleanroom agent register`.\n# It contains the runner token: keep it mode 0600.\n"
	return writeFileAtomic(path, append([]byte(header), b...), 0o600)
}

// writeFileAtomic writes data to a temp file with perm and renames it over
// path, so a crash never leaves a half-written secret.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (retErr error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating directory of %s: %w", path, err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("setting mode of %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("renaming into %s: %w", path, err)
	}
	return nil
}
