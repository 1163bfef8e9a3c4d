package supplychain

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
)

// Rule names of lockfile violations, stable strings the job log and tests
// refer to. They follow lockfile-lint's validators where one exists.
const (
	RuleInvalidPath        = "invalid-path"           // key not a clean path inside the project
	RuleInvalidName        = "invalid-name"           // not a valid npm package name
	RuleAllowedHost        = "allowed-host"           // resolved host is not an allowed registry/host
	RuleAllowedScheme      = "allowed-scheme"         // http to an https registry, or an odd scheme
	RuleIntegrityMissing   = "integrity-missing"      // registry package without integrity
	RuleIntegritySHA512    = "integrity-sha512"       // integrity carries no sha512 hash
	RuleIntegrityBase64    = "integrity-base64"       // sha512 hash is not valid base64 of 64 bytes
	RulePackageName        = "package-name"           // resolved URL names another package (name confusion)
	RulePackageAlias       = "package-alias"          // npm alias: path name differs from real name
	RuleGitSource          = "git-source"             // git dependency while AllowGit is false
	RuleFileOutside        = "file-outside-workspace" // file:/link source outside the project
	RuleUnsupportedSources = "resolved-url"           // resolved value that is no known source form
)

// Violation is one lockfile entry breaking one rule.
type Violation struct {
	// Path is the lockfile key of the entry.
	Path string
	// Rule is one of the Rule* constants.
	Rule string
	// Value is the offending value (a URL, an integrity string, a name).
	Value string
	// Reason explains the violation to the developer.
	Reason string
}

func (v Violation) String() string {
	path := v.Path // a lockfile key: quoted when it holds anything but printable text
	if strings.IndexFunc(path, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		path = strconv.Quote(path)
	}
	s := fmt.Sprintf("%s: %s: %q", path, v.Rule, v.Value)
	if v.Reason != "" {
		s += " (" + v.Reason + ")"
	}
	return s
}

// GateError lists every policy violation of a lockfile, so a developer can
// fix them all in one round instead of one per build.
type GateError struct {
	File       string
	Violations []Violation
}

func (e *GateError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s rejected by policy: %d violation(s):", e.File, len(e.Violations))
	for _, v := range e.Violations {
		b.WriteString("\n  ")
		b.WriteString(v.String())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrLockfileRejected) true for a *GateError.
func (e *GateError) Is(target error) bool { return target == ErrLockfileRejected }

type registry struct {
	scheme string
	host   string // normalized host[:port]
	prefix string // path prefix ending in "/"
}

type compiledPolicy struct {
	registries   []registry
	allowedHosts map[string]bool
	aliases      []registry
	allowSHA1    bool
	allowGit     bool
	allowFile    bool
	allowAliases bool
}

func (p LockPolicy) compile() (*compiledPolicy, error) {
	cp := &compiledPolicy{
		allowedHosts: map[string]bool{},
		allowGit:     p.AllowGit,
		allowSHA1:    p.AllowSHA1,
		allowFile:    p.AllowFile,
		allowAliases: p.AllowAliases,
	}
	for _, r := range p.Registries {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%w: registry %q is not an http(s) URL", ErrInvalidPolicy, r)
		}
		prefix := u.Path
		if !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		cp.registries = append(cp.registries, registry{scheme: u.Scheme, host: normHost(u.Scheme, u.Host), prefix: prefix})
	}
	for _, h := range p.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/@ ") {
			return nil, fmt.Errorf("%w: allowed host %q must be host or host:port", ErrInvalidPolicy, h)
		}
		cp.allowedHosts[normHost("https", h)] = true
	}
	for _, h := range p.RegistryAliases {
		if h == "" || strings.ContainsAny(h, "/@ ") {
			return nil, fmt.Errorf("%w: registry alias %q must be host or host:port", ErrInvalidPolicy, h)
		}
		cp.aliases = append(cp.aliases, registry{scheme: "https", host: normHost("https", h), prefix: "/"})
	}
	return cp, nil
}

// normHost lowercases the host and drops the scheme's default port, so
// "Registry.npmjs.org:443" and "registry.npmjs.org" compare equal.
func normHost(scheme, hostport string) string {
	hostport = strings.ToLower(hostport)
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		if strings.Contains(host, ":") {
			return "[" + host + "]"
		}
		return host
	}
	return hostport
}

func (cp *compiledPolicy) check(lf *Lockfile) []Violation {
	var vs []Violation
	add := func(p *Package, rule, value, reason string) {
		vs = append(vs, Violation{Path: p.Path, Rule: rule, Value: value, Reason: reason})
	}
	for i := range lf.Packages {
		p := &lf.Packages[i]
		inNodeModules, reason := checkLocation(p.Path)
		if reason != "" {
			add(p, RuleInvalidPath, p.Path, reason)
			continue
		}
		if p.Link {
			target := strings.TrimPrefix(p.Resolved, "file:")
			if !cp.allowFile && !isLocalPath(target) {
				add(p, RuleFileOutside, p.Resolved, "link points outside the project")
			}
			continue
		}
		if !inNodeModules {
			// A workspace folder: project source, installed from disk.
			continue
		}
		if p.Name != p.pathName {
			if !validName(p.Name) {
				add(p, RuleInvalidName, p.Name, "not a valid npm package name")
				continue
			}
			if !cp.allowAliases {
				add(p, RulePackageAlias, p.Name, fmt.Sprintf("installed as %q but is package %q (npm alias)", p.pathName, p.Name))
			}
		}
		if p.InBundle {
			// Shipped inside its parent's tarball, covered by its integrity.
			continue
		}
		cp.checkSource(p, add)
	}
	return vs
}

func (cp *compiledPolicy) checkSource(p *Package, add func(*Package, string, string, string)) {
	r := p.Resolved
	switch {
	case r == "":
		// npm ci fetches from the registry configured in the sandbox.
		cp.checkIntegrity(p, add)
		return
	case isGitSource(r):
		if !cp.allowGit {
			add(p, RuleGitSource, r, "git dependencies are not allowed by policy")
		}
		return
	case strings.HasPrefix(r, "file:"):
		if !cp.allowFile && !isLocalPath(strings.TrimPrefix(r, "file:")) {
			add(p, RuleFileOutside, r, "file dependency outside the project")
		}
		return
	}
	u, err := url.Parse(r)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		add(p, RuleUnsupportedSources, r, "not an http(s), git or file source")
		cp.checkIntegrity(p, add)
		return
	}
	host := normHost(u.Scheme, u.Host)
	var matched []registry
	for _, reg := range append(cp.registries, cp.aliases...) {
		if reg.host == host {
			matched = append(matched, reg)
		}
	}
	switch {
	case len(matched) > 0:
		httpOK := false
		for _, reg := range matched {
			httpOK = httpOK || reg.scheme == "http"
		}
		if u.Scheme != "https" && !httpOK {
			add(p, RuleAllowedScheme, r, "registry is configured as https (registry aliases are https)")
		}
		if reason := tarballNameMismatch(u.Path, p.Name, p.Version, matched); reason != "" {
			add(p, RulePackageName, r, reason)
		}
	case cp.allowedHosts[host]:
		if u.Scheme != "https" {
			add(p, RuleAllowedScheme, r, "extra tarball hosts must use https")
		}
	default:
		add(p, RuleAllowedHost, r, fmt.Sprintf("host %s is not an allowed registry", host))
	}
	cp.checkIntegrity(p, add)
}

// tarballNameMismatch checks that a registry tarball URL path is
// <prefix><name>/-/<basename>-<version>.tgz, the layout of the npm registry,
// Verdaccio and Nexus. It returns "" when it matches.
func tarballNameMismatch(urlPath, name, version string, regs []registry) string {
	var rest string
	found := false
	for _, reg := range regs {
		if strings.HasPrefix(urlPath, reg.prefix) {
			rest, found = urlPath[len(reg.prefix):], true
			break
		}
	}
	if !found {
		return "tarball is outside the registry's path"
	}
	if !strings.HasPrefix(rest, name+"/-/") {
		return fmt.Sprintf("tarball URL is not for package %q", name)
	}
	file := rest[len(name)+len("/-/"):]
	base := name[strings.LastIndex(name, "/")+1:]
	if version != "" && file != base+"-"+version+".tgz" {
		return fmt.Sprintf("tarball file is not %s-%s.tgz", base, version)
	}
	return ""
}

func (cp *compiledPolicy) checkIntegrity(p *Package, add func(*Package, string, string, string)) {
	if cp.allowSHA1 && p.SHA1Only() {
		return
	}
	if rule, reason := integrityProblem(p.Integrity); rule != "" {
		add(p, rule, p.Integrity, reason)
	}
}

// integrityProblem validates a Subresource Integrity string: it must hold at
// least one sha512 hash, and every sha512 hash must be base64 of 64 bytes.
func integrityProblem(sri string) (rule, reason string) {
	fields := strings.Fields(sri)
	if len(fields) == 0 {
		return RuleIntegrityMissing, "registry packages must be pinned by an integrity hash"
	}
	seen := false
	for _, f := range fields {
		alg, b64, ok := strings.Cut(f, "-")
		if !ok || alg != "sha512" {
			continue
		}
		seen = true
		if i := strings.IndexByte(b64, '?'); i >= 0 {
			b64 = b64[:i]
		}
		if _, ok := decodeSHA512(b64); !ok {
			return RuleIntegrityBase64, "sha512 hash is not base64 of 64 bytes"
		}
	}
	if !seen {
		return RuleIntegritySHA512, "integrity must use sha512"
	}
	return "", ""
}

func decodeSHA512(b64 string) ([]byte, bool) {
	if len(b64) != 88 {
		return nil, false
	}
	var buf [66]byte
	n, err := base64.StdEncoding.Decode(buf[:], []byte(b64))
	if err != nil || n != 64 {
		return nil, false
	}
	return buf[:64], true
}

// SHA512 returns the sha512 digest from the entry's integrity, if any.
func (p *Package) SHA512() ([]byte, bool) {
	return sriDigest(p.Integrity, "sha512", func(b64 string) ([]byte, bool) { return decodeSHA512(b64) })
}

// sriDigest returns the first well-formed digest of algorithm alg in an SRI
// string (options after '?' ignored).
func sriDigest(sri, alg string, decode func(b64 string) ([]byte, bool)) ([]byte, bool) {
	for _, f := range strings.Fields(sri) {
		a, b64, ok := strings.Cut(f, "-")
		if !ok || a != alg {
			continue
		}
		if i := strings.IndexByte(b64, '?'); i >= 0 {
			b64 = b64[:i]
		}
		if d, ok := decode(b64); ok {
			return d, true
		}
	}
	return nil, false
}

// SHA1Only reports whether the entry's integrity holds no sha512 hash but a
// well-formed sha1 one: an old lockfile's entry, accepted only with
// LockPolicy.AllowSHA1.
func (p *Package) SHA1Only() bool {
	if _, ok := p.SHA512(); ok {
		return false
	}
	_, ok := p.SHA1()
	return ok
}

// SHA1 returns the sha1 digest from the entry's integrity, if any.
func (p *Package) SHA1() ([]byte, bool) {
	return sriDigest(p.Integrity, "sha1", func(b64 string) ([]byte, bool) {
		d, err := base64.StdEncoding.DecodeString(b64)
		return d, err == nil && len(d) == 20
	})
}

func isGitSource(r string) bool {
	for _, pfx := range []string{"git+", "git://", "git@", "github:", "gitlab:", "bitbucket:", "gist:"} {
		if strings.HasPrefix(r, pfx) {
			return true
		}
	}
	return false
}

// isLocalPath reports whether a slash-separated relative path stays inside
// the project directory.
func isLocalPath(p string) bool {
	if p == "" || strings.ContainsRune(p, '\\') || strings.HasPrefix(p, "/") {
		return false
	}
	return filepath.IsLocal(filepath.FromSlash(path.Clean(p)))
}

// checkLocation validates a lockfile key: a clean relative path made of an
// optional workspace folder followed by node_modules/<name> segments. It
// reports whether the key is inside node_modules, and a reason when invalid.
func checkLocation(key string) (inNodeModules bool, reason string) {
	if strings.ContainsAny(key, "\\\x00") || strings.HasPrefix(key, "/") || (len(key) > 1 && key[1] == ':') {
		return false, "not a relative slash-separated path"
	}
	segs := strings.Split(key, "/")
	for _, s := range segs {
		if s == "" || s == "." || s == ".." {
			return false, "path traversal or empty segment"
		}
	}
	i := 0
	for i < len(segs) && segs[i] != "node_modules" {
		i++
	}
	if i == len(segs) {
		return false, ""
	}
	for i < len(segs) {
		if segs[i] != "node_modules" || i+1 >= len(segs) {
			return true, "expected node_modules/<name> segments"
		}
		name := segs[i+1]
		i += 2
		if strings.HasPrefix(name, "@") {
			if i >= len(segs) {
				return true, "scope without a package name"
			}
			name += "/" + segs[i]
			i++
		}
		if !validName(name) {
			return true, fmt.Sprintf("%q is not a valid npm package name", name)
		}
	}
	return true, ""
}

// validName accepts npm package names, including legacy ones with capitals:
// URL-safe characters, at most 214 bytes, not starting with '.', '_' or '-'
// (the last so a name can never be read as a command-line flag).
func validName(name string) bool {
	if len(name) == 0 || len(name) > 214 {
		return false
	}
	scope, pkg, scoped := strings.Cut(name, "/")
	if scoped {
		if len(scope) < 2 || scope[0] != '@' || !validNamePart(scope[1:]) {
			return false
		}
	} else {
		pkg = name
	}
	return validNamePart(pkg)
}

func validNamePart(s string) bool {
	if s == "" || s[0] == '.' || s[0] == '_' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("-._~!'()*", c) >= 0:
		default:
			return false
		}
	}
	return true
}
