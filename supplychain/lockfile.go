package supplychain

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Sentinel errors of the lockfile gate. Every one of them ends the job before
// a sandbox exists; they are distinct so the agent can tell the developer
// what to fix.
var (
	// ErrNoLockfile means the project has neither npm-shrinkwrap.json nor
	// package-lock.json, so npm ci cannot run and npm install is never used.
	ErrNoLockfile = errors.New("no package-lock.json or npm-shrinkwrap.json: builds run npm ci, never npm install; commit a lockfile")
	// ErrUnsupportedLockfile means a lockfileVersion other than 2 or 3: v1
	// files lack the per-path "packages" map the gate checks.
	ErrUnsupportedLockfile = errors.New("unsupported lockfile version")
	// ErrLockfileTooLarge means the lockfile exceeds the size cap, which
	// bounds the memory a hostile project can make the agent spend.
	ErrLockfileTooLarge = errors.New("lockfile too large")
	// ErrMalformedLockfile means the lockfile is not a valid npm lockfile.
	ErrMalformedLockfile = errors.New("malformed lockfile")
	// ErrPackageJSON means package.json is missing or not a JSON object;
	// npm ci needs it and the SBOM takes its root component from it.
	ErrPackageJSON = errors.New("missing or invalid package.json")
	// ErrInvalidPolicy means the LockPolicy itself cannot be used (for
	// example a registry URL that does not parse): an operator error.
	ErrInvalidPolicy = errors.New("invalid lockfile policy")
	// ErrLockfileRejected is matched by a *GateError: the lockfile parsed
	// but one or more entries break the policy.
	ErrLockfileRejected = errors.New("lockfile rejected by policy")
)

// DefaultMaxLockfileBytes caps how much of a lockfile the gate reads when
// LockPolicy.MaxLockfileBytes is zero. Real lockfiles of very large
// monorepos stay well below 64 MiB.
const DefaultMaxLockfileBytes = 64 << 20

// maxPackageJSONBytes caps the package.json read for the same reason.
const maxPackageJSONBytes = 16 << 20

// Lockfile file names, in the order npm prefers them.
const (
	ShrinkwrapFile  = "npm-shrinkwrap.json"
	PackageLockFile = "package-lock.json"
)

// LockPolicy says which package sources a lockfile may use. The zero value
// accepts only lockfiles without resolved URLs (npm then uses the
// registry configured in the sandbox) and refuses git and out-of-workspace
// file sources.
type LockPolicy struct {
	// Registries are the registry base URLs packages may come from, e.g.
	// "http://registry.cleanroom.test:4873/". Resolved URLs must be on one
	// of these hosts (host:port), under the URL's path, and use https, or
	// http only when the registry itself is configured as http.
	Registries []string
	// AllowedHosts are extra hosts (host or host:port) that may serve
	// tarballs over https; they get no package-name check.
	AllowedHosts []string
	// RegistryAliases are hosts (host or host:port) the internal registry
	// mirrors, e.g. "registry.npmjs.org": an https tarball URL on one of
	// them passes as if it were on a registry (with the package-name check,
	// at the path root), because the registry gateway fetches it from the
	// internal registry and checks its integrity.
	RegistryAliases []string
	// AllowSHA1 accepts an entry whose integrity holds only a sha1 hash (old
	// lockfiles) instead of refusing it with integrity-sha512: the registry
	// gateway then serves it only when the tarball matches both that sha1
	// and the sha512 the registry publishes. Such entries are marked in the
	// SBOM (Package.SHA1Only).
	AllowSHA1 bool
	// AllowGit accepts git+…, git://, github: and similar sources.
	AllowGit bool
	// AllowFile accepts file: sources and links that point outside the
	// project directory.
	AllowFile bool
	// AllowAliases accepts npm aliases ("foo": "npm:bar@1"), whose lockfile
	// path name differs from the real package name. Off by default because
	// an alias is exactly what a name-confusion attack looks like.
	AllowAliases bool
	// MaxLockfileBytes overrides DefaultMaxLockfileBytes when > 0.
	MaxLockfileBytes int64
}

// Package is one entry of the lockfile's "packages" map, as npm ci will
// install it.
type Package struct {
	// Path is the lockfile key, e.g. "node_modules/a/node_modules/@s/b".
	Path string
	// Name is the real package name: the entry's "name" (aliases, workspace
	// folders) or the name in the last node_modules segment of Path.
	Name                 string
	Version              string
	Resolved             string
	Integrity            string
	License              string
	Link                 bool
	Dev                  bool
	Optional             bool
	DevOptional          bool
	Peer                 bool
	InBundle             bool
	HasInstallScript     bool
	Dependencies         map[string]string
	DevDependencies      map[string]string
	OptionalDependencies map[string]string
	PeerDependencies     map[string]string

	// pathName is the name from Path ("" for the root and workspace folders).
	pathName string
}

// Lockfile is a parsed lockfile (v2 or v3), the input to the script policy,
// the SBOM and the provenance record.
type Lockfile struct {
	// File is the base name the lockfile was read from (when read by
	// CheckLockfile).
	File string
	// Version is the lockfileVersion (2 or 3).
	Version int
	// Root is the "" entry: the project itself.
	Root Package
	// Packages are all other entries, sorted by Path.
	Packages []Package
	// SHA256 is the hex sha256 of the lockfile bytes, recorded in provenance.
	SHA256 string

	index map[string]int
}

// Lookup returns the entry at a lockfile path.
func (lf *Lockfile) Lookup(path string) (*Package, bool) {
	if path == "" {
		return &lf.Root, true
	}
	i, ok := lf.index[path]
	if !ok {
		return nil, false
	}
	return &lf.Packages[i], true
}

type rawPackage struct {
	Name                 string            `json:"name"`
	Version              string            `json:"version"`
	Resolved             string            `json:"resolved"`
	Integrity            string            `json:"integrity"`
	License              json.RawMessage   `json:"license"`
	Link                 bool              `json:"link"`
	Dev                  bool              `json:"dev"`
	Optional             bool              `json:"optional"`
	DevOptional          bool              `json:"devOptional"`
	Peer                 bool              `json:"peer"`
	InBundle             bool              `json:"inBundle"`
	HasInstallScript     bool              `json:"hasInstallScript"`
	Dependencies         map[string]string `json:"dependencies"`
	DevDependencies      map[string]string `json:"devDependencies"`
	OptionalDependencies map[string]string `json:"optionalDependencies"`
	PeerDependencies     map[string]string `json:"peerDependencies"`
}

type rawLockfile struct {
	Name            string                `json:"name"`
	Version         string                `json:"version"`
	LockfileVersion *int                  `json:"lockfileVersion"`
	Packages        map[string]rawPackage `json:"packages"`
}

// ParseLockfile parses lockfile bytes without applying any policy. It is the
// fuzzed entry point: any input yields a *Lockfile or an error, never a
// panic.
func ParseLockfile(data []byte) (*Lockfile, error) {
	var raw rawLockfile
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: decoding JSON: %v", ErrMalformedLockfile, err)
	}
	switch {
	case raw.LockfileVersion == nil || *raw.LockfileVersion == 1:
		return nil, fmt.Errorf("%w: lockfileVersion 1 (npm 6 and older) has no per-path package list; regenerate the lockfile with npm 7+ (npm install --package-lock-only)", ErrUnsupportedLockfile)
	case *raw.LockfileVersion != 2 && *raw.LockfileVersion != 3:
		return nil, fmt.Errorf("%w: lockfileVersion %d (supported: 2 and 3)", ErrUnsupportedLockfile, *raw.LockfileVersion)
	}
	if raw.Packages == nil {
		return nil, fmt.Errorf("%w: no \"packages\" section", ErrMalformedLockfile)
	}
	sum := sha256.Sum256(data)
	lf := &Lockfile{
		Version:  *raw.LockfileVersion,
		SHA256:   hex.EncodeToString(sum[:]),
		Packages: make([]Package, 0, len(raw.Packages)),
		index:    make(map[string]int, len(raw.Packages)),
	}
	if root, ok := raw.Packages[""]; ok {
		lf.Root = convertPackage("", root)
	}
	if lf.Root.Name == "" {
		lf.Root.Name = raw.Name
	}
	if lf.Root.Version == "" {
		lf.Root.Version = raw.Version
	}
	keys := make([]string, 0, len(raw.Packages))
	for path := range raw.Packages {
		if path != "" {
			keys = append(keys, path)
		}
	}
	slices.Sort(keys)
	for i, path := range keys {
		lf.Packages = append(lf.Packages, convertPackage(path, raw.Packages[path]))
		lf.index[path] = i
	}
	return lf, nil
}

func convertPackage(path string, rp rawPackage) Package {
	p := Package{
		Path:                 path,
		Version:              rp.Version,
		Resolved:             rp.Resolved,
		Integrity:            rp.Integrity,
		Link:                 rp.Link,
		Dev:                  rp.Dev,
		Optional:             rp.Optional,
		DevOptional:          rp.DevOptional,
		Peer:                 rp.Peer,
		InBundle:             rp.InBundle,
		HasInstallScript:     rp.HasInstallScript,
		Dependencies:         rp.Dependencies,
		DevDependencies:      rp.DevDependencies,
		OptionalDependencies: rp.OptionalDependencies,
		PeerDependencies:     rp.PeerDependencies,
	}
	// Old packages may carry a license object; only the SPDX string is kept.
	var lic string
	if json.Unmarshal(rp.License, &lic) == nil {
		p.License = lic
	}
	if i := strings.LastIndex(path, "node_modules/"); i >= 0 && (i == 0 || path[i-1] == '/') {
		p.pathName = path[i+len("node_modules/"):]
	}
	p.Name = rp.Name
	if p.Name == "" {
		p.Name = p.pathName
	}
	return p
}

// CheckLockfile is the lockfile gate: it runs on the host before any sandbox
// exists and refuses a project whose dependencies could come from anywhere
// but the allowed registries, or whose packages are not pinned by a sha512
// integrity. Policy violations are reported all at once as a *GateError
// (errors.Is(err, ErrLockfileRejected)); other failures use the other
// sentinels of this package.
func CheckLockfile(dir string, p LockPolicy) (*Lockfile, error) {
	cp, err := p.compile()
	if err != nil {
		return nil, err
	}
	if err := checkPackageJSON(dir); err != nil {
		return nil, err
	}
	name, data, err := readLockfile(dir, p.MaxLockfileBytes)
	if err != nil {
		return nil, err
	}
	lf, err := ParseLockfile(data)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", name, err)
	}
	lf.File = name
	if vs := cp.check(lf); len(vs) > 0 {
		return nil, &GateError{File: name, Violations: vs}
	}
	return lf, nil
}

// Violations applies the policy to an already parsed lockfile and returns
// every violation (nil when the lockfile is acceptable).
func (lf *Lockfile) Violations(p LockPolicy) ([]Violation, error) {
	cp, err := p.compile()
	if err != nil {
		return nil, err
	}
	return cp.check(lf), nil
}

func checkPackageJSON(dir string) error {
	data, err := readRegular(filepath.Join(dir, "package.json"), maxPackageJSONBytes)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPackageJSON, err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		if err == nil {
			err = errors.New("not a JSON object")
		}
		return fmt.Errorf("%w: decoding package.json: %v", ErrPackageJSON, err)
	}
	return nil
}

func readLockfile(dir string, max int64) (string, []byte, error) {
	if max <= 0 {
		max = DefaultMaxLockfileBytes
	}
	for _, name := range []string{ShrinkwrapFile, PackageLockFile} {
		data, err := readRegular(filepath.Join(dir, name), max)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return name, nil, fmt.Errorf("reading %s: %w", name, err)
		}
		return name, data, nil
	}
	return "", nil, ErrNoLockfile
}

// readRegular reads at most max bytes of a regular file (not a symlink, fifo
// or device), failing with ErrLockfileTooLarge beyond that.
func readRegular(path string, max int64) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", filepath.Base(path), fi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrLockfileTooLarge, filepath.Base(path), max)
	}
	return data, nil
}

// ScriptPackages lists the installed entries that declare install scripts
// (preinstall, install, postinstall, or a binding.gyp), the ones the
// install-script policy has to decide about.
func (lf *Lockfile) ScriptPackages() []Package {
	var out []Package
	for _, p := range lf.Packages {
		if p.HasInstallScript && !p.Link {
			out = append(out, p)
		}
	}
	return out
}
