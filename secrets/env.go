package secrets

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// Defaults for a job environment.
const (
	DefaultHome     = "/home/build"
	DefaultPath     = "/usr/local/bin:/usr/bin:/bin"
	DefaultNPMCache = "/tmp/.npm"
)

// Base is the fixed, non-secret part of a job environment. It is the whole
// environment apart from granted secrets: nothing is inherited from the agent.
type Base struct {
	// RegistryURL is npm's registry (npm_config_registry), or "" when it is
	// known only later: a job's registry gateway gets its address once the
	// job's network exists, and each step then gets RegistryEnv. Either
	// way npm_config_registry and npm_config_replace_registry_host are
	// reserved: no secret or extra variable may define them.
	RegistryURL string
	// Home defaults to DefaultHome.
	Home string
	// NPMCache is npm's cache folder, under /tmp or the workspace;
	// defaults to DefaultNPMCache.
	NPMCache string
	// NPMRC is the path, inside the sandbox, of the per-job .npmrc written
	// from NPMRC(); set as npm_config_userconfig when not empty.
	NPMRC string
	// Extra holds further fixed variables (NODE_ENV, …). They may not
	// redefine the variables above.
	Extra map[string]string
}

// BuildEnv returns a job environment built from scratch: PATH, HOME, CI and
// npm settings from base, then base.Extra (sorted), then the granted secrets
// as NAME=value in the given order. It refuses a secret that is not build
// scope, a name that is not a valid variable name, a value with a NUL byte,
// and any variable defined twice (a granted secret may not override a base
// variable: npm reads npm_config_* case-insensitively, so those clash
// regardless of case).
func BuildEnv(base Base, granted []Secret) ([]string, error) {
	if base.RegistryURL != "" {
		if u, err := url.Parse(base.RegistryURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("building job environment: %w: registry URL %q is not an http(s) URL", ErrInvalid, base.RegistryURL)
		}
	}
	home := cmpOr(base.Home, DefaultHome)
	vars := [][2]string{
		{"PATH", DefaultPath},
		{"HOME", home},
		{"CI", "true"},
		{"LANG", "C.UTF-8"},
	}
	if base.RegistryURL != "" {
		vars = append(vars, RegistryEnv(base.RegistryURL)...)
	}
	vars = append(vars, [][2]string{
		{"npm_config_cache", cmpOr(base.NPMCache, DefaultNPMCache)},
		{"npm_config_update_notifier", "false"},
		{"npm_config_fund", "false"},
		{"npm_config_audit", "false"},
	}...)
	if base.NPMRC != "" {
		vars = append(vars, [2]string{"npm_config_userconfig", base.NPMRC})
	}
	defined := map[string]string{} // conflict key → origin
	for _, v := range vars {
		defined[envKey(v[0])] = "base"
	}
	for _, v := range RegistryEnv("") { // reserved even when set per step
		defined[envKey(v[0])] = "base"
	}
	var errs []error
	check := func(name, value, origin string) bool {
		switch {
		case !validName(name):
			errs = append(errs, fmt.Errorf("%s %q: %w: not a valid variable name", origin, name, ErrInvalid))
		case strings.IndexByte(value, 0) >= 0:
			errs = append(errs, fmt.Errorf("%s %q: %w: value contains a NUL byte", origin, name, ErrInvalid))
		case defined[envKey(name)] != "":
			errs = append(errs, fmt.Errorf("%s %q: %w: already defined by %s", origin, name, ErrEnvConflict, defined[envKey(name)]))
		default:
			defined[envKey(name)] = origin
			return true
		}
		return false
	}
	extra := make([]string, 0, len(base.Extra))
	for k := range base.Extra {
		extra = append(extra, k)
	}
	slices.Sort(extra)
	for _, k := range extra {
		if check(k, base.Extra[k], "extra variable") {
			vars = append(vars, [2]string{k, base.Extra[k]})
		}
	}
	for _, s := range granted {
		switch s.Scope {
		case ScopeBuild:
		case ScopeAgent:
			errs = append(errs, fmt.Errorf("secret %q: %w", s.Name, ErrAgentCredential))
			continue
		default:
			errs = append(errs, fmt.Errorf("secret %q: %w", s.Name, ErrDeployScope))
			continue
		}
		if check(s.Name, string(s.Value), "secret") {
			vars = append(vars, [2]string{s.Name, string(s.Value)})
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("building job environment: %w", errors.Join(errs...))
	}
	env := make([]string, len(vars))
	for i, v := range vars {
		env[i] = v[0] + "=" + v[1]
	}
	return env, nil
}

// envKey is the identity of a variable for conflict checks.
func envKey(name string) string {
	if strings.HasPrefix(strings.ToLower(name), "npm_config_") {
		return strings.ToLower(name)
	}
	return name
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// RegistryEnv is npm's registry setting as environment variables (which
// npm ranks above a project's own .npmrc): the registry, and
// replace-registry-host=always, so that npm fetches every tarball the
// lockfile resolves elsewhere from that registry too — the job's registry
// gateway, which alone decides what is served.
func RegistryEnv(registryURL string) [][2]string {
	return [][2]string{
		{"npm_config_registry", registryURL},
		{"npm_config_replace_registry_host", "always"},
	}
}

// NPMRC returns the content of a per-job .npmrc naming the job's registry
// gateway for every package and for each of scopes ("@acme": a scope an
// upstream serves, which npm would otherwise look up under its own
// registry), with replace-registry-host=always. It holds no credential: the
// gateway adds the agent's upstream credentials outside the sandbox. It is
// nil when the URL or a scope could inject a line or is not a URL/scope.
func NPMRC(registryURL string, scopes []string) []byte {
	u, err := url.Parse(registryURL)
	if strings.ContainsAny(registryURL, "\r\n") || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	reg := u.String()
	var b strings.Builder
	b.WriteString("registry=" + reg + "\n")
	b.WriteString("replace-registry-host=always\n")
	for _, sc := range scopes {
		if len(sc) < 2 || sc[0] != '@' || strings.ContainsAny(sc, "\r\n=:/ ") {
			return nil
		}
		b.WriteString(sc + ":registry=" + reg + "\n")
	}
	return []byte(b.String())
}
