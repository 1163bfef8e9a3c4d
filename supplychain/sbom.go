package supplychain

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// SBOMPropertySHA1Only marks a component whose lockfile entry was pinned by
// a sha1 hash only (LockPolicy.AllowSHA1).
const SBOMPropertySHA1Only = "cleanroom:npm:integrity:sha1-only"

// rootManifest is the part of package.json the SBOM records.
type rootManifest struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Description string `json:"description"`
	License     any    `json:"license"`
}

// SBOM writes a CycloneDX 1.5 JSON SBOM of what npm ci installs from lf:
// every installed package (links and the root excluded) with its purl and
// sha512 hash, the dependency graph as npm's node_modules lookup resolves
// it, and the project from dir/package.json as the metadata component.
// Components are identified, like npm sbom does, by name@version.
func SBOM(dir string, lf *Lockfile, w io.Writer) error {
	data, err := readRegular(filepath.Join(dir, "package.json"), maxPackageJSONBytes)
	if err != nil {
		return fmt.Errorf("reading package.json: %w", err)
	}
	var root rootManifest
	if err := json.Unmarshal(data, &root); err != nil {
		return fmt.Errorf("decoding package.json: %w: %v", ErrPackageJSON, err)
	}
	bom := BuildBOM(root.Name, root.Version, root.Description, lf)
	// BuildBOM only uses fields of spec 1.5, so Encode (not EncodeVersion,
	// which deep-copies the whole BOM through gob) writes it as is. Compact
	// output: pretty-printing doubled the cost on 2,000 packages.
	enc := cdx.NewBOMEncoder(w, cdx.BOMFileFormatJSON)
	if err := enc.Encode(bom); err != nil {
		return fmt.Errorf("encoding CycloneDX SBOM: %w", err)
	}
	return nil
}

// BuildBOM builds the CycloneDX 1.5 model behind SBOM for callers that want
// to add to it; name, version and description describe the root project
// (falling back to the lockfile's root entry when empty).
func BuildBOM(name, version, description string, lf *Lockfile) *cdx.BOM {
	if name == "" {
		name = lf.Root.Name
	}
	if version == "" {
		version = lf.Root.Version
	}
	rootRef := ref(name, version)
	bom := cdx.NewBOM()
	bom.SpecVersion = cdx.SpecVersion1_5
	bom.JSONSchema = "http://cyclonedx.org/schema/bom-1.5.schema.json"
	bom.XMLNS = "http://cyclonedx.org/schema/bom/1.5"
	bom.SerialNumber = newURN()
	rootComp := cdx.Component{
		BOMRef:      rootRef,
		Type:        cdx.ComponentTypeApplication,
		Name:        name,
		Version:     version,
		Description: description,
		PackageURL:  purl(name, version),
	}
	bom.Metadata = &cdx.Metadata{
		Timestamp: time.Now().UTC().Format(time.RFC3339),
		Tools: &cdx.ToolsChoice{Components: &[]cdx.Component{{
			Type: cdx.ComponentTypeApplication, Name: "cleanroom", Group: "cleanroom-ci",
		}}},
		Component: &rootComp,
	}

	g := resolveGraph(lf)
	comps := make([]cdx.Component, 0, len(g.refs))
	seen := make(map[string]bool, len(g.refs))
	for i := range lf.Packages {
		p := &lf.Packages[i]
		r := g.refOf[p.Path]
		if r == "" || seen[r] {
			continue
		}
		seen[r] = true
		comps = append(comps, component(p, r))
	}
	sort.Slice(comps, func(i, j int) bool { return comps[i].BOMRef < comps[j].BOMRef })
	bom.Components = &comps

	deps := make([]cdx.Dependency, 0, len(g.refs)+1)
	deps = append(deps, cdx.Dependency{Ref: rootRef, Dependencies: sortedSet(g.edges[""])})
	for _, r := range g.refs {
		deps = append(deps, cdx.Dependency{Ref: r, Dependencies: sortedSet(g.edges[r])})
	}
	bom.Dependencies = &deps
	return bom
}

func component(p *Package, bomRef string) cdx.Component {
	c := cdx.Component{
		BOMRef:     bomRef,
		Type:       cdx.ComponentTypeLibrary,
		Name:       p.Name,
		Version:    p.Version,
		PackageURL: purl(p.Name, p.Version),
		Scope:      cdx.ScopeRequired,
	}
	if p.Dev || p.Optional || p.DevOptional {
		c.Scope = cdx.ScopeOptional
	}
	if d, ok := p.SHA512(); ok {
		c.Hashes = &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA512, Value: hex.EncodeToString(d)}}
	} else if d, ok := p.SHA1(); ok {
		c.Hashes = &[]cdx.Hash{{Algorithm: cdx.HashAlgoSHA1, Value: hex.EncodeToString(d)}}
	}
	if p.License != "" {
		lc := cdx.LicenseChoice{License: &cdx.License{ID: p.License}}
		if strings.ContainsAny(p.License, " ()") {
			lc = cdx.LicenseChoice{Expression: p.License}
		}
		c.Licenses = &cdx.Licenses{lc}
	}
	if p.Resolved != "" {
		c.ExternalReferences = &[]cdx.ExternalReference{{Type: cdx.ERTypeDistribution, URL: p.Resolved}}
	}
	props := []cdx.Property{{Name: "cdx:npm:package:path", Value: p.Path}}
	if p.Dev || p.DevOptional {
		props = append(props, cdx.Property{Name: "cdx:npm:package:development", Value: "true"})
	}
	if p.HasInstallScript {
		props = append(props, cdx.Property{Name: "cleanroom:npm:hasInstallScript", Value: "true"})
	}
	if p.SHA1Only() {
		// Only a job whose agent opted in (allow_sha1) gets this far, and
		// its gateway served the tarball only when it matched both this
		// sha1 and the sha512 the registry publishes.
		props = append(props, cdx.Property{Name: SBOMPropertySHA1Only, Value: "lockfile pins sha1 only; accepted by allow_sha1 after the tarball matched it and the registry's sha512"})
	}
	c.Properties = &props
	return c
}

// graph is the dependency graph keyed by bom-ref; "" is the root project.
type graph struct {
	refOf map[string]string          // lockfile path -> bom-ref ("" for links/root)
	refs  []string                   // component refs, sorted, unique
	edges map[string]map[string]bool // from ref -> to refs
}

// resolveGraph resolves each entry's dependencies the way Node and npm find
// them: <dir>/node_modules/<dep>, then each parent directory in turn,
// following links to their targets.
func resolveGraph(lf *Lockfile) *graph {
	g := &graph{
		refOf: make(map[string]string, len(lf.Packages)),
		edges: make(map[string]map[string]bool, len(lf.Packages)+1),
	}
	for i := range lf.Packages {
		p := &lf.Packages[i]
		if p.Link {
			continue
		}
		r := ref(p.Name, p.Version)
		g.refOf[p.Path] = r
		if _, ok := g.edges[r]; !ok {
			g.edges[r] = map[string]bool{}
			g.refs = append(g.refs, r)
		}
	}
	sort.Strings(g.refs)
	g.edges[""] = map[string]bool{}

	var buf []byte
	addEdges := func(from string, loc string, deps map[string]string) {
		for name := range deps {
			target := resolveDep(lf, loc, name, &buf)
			if target == "" {
				continue // optional or peer dependency that is not installed
			}
			if to := g.refOf[target]; to != "" && to != from {
				g.edges[from][to] = true
			}
		}
	}
	walk := func(from string, p *Package) {
		addEdges(from, p.Path, p.Dependencies)
		addEdges(from, p.Path, p.OptionalDependencies)
		addEdges(from, p.Path, p.PeerDependencies)
		addEdges(from, p.Path, p.DevDependencies)
	}
	walk("", &lf.Root)
	for i := range lf.Packages {
		p := &lf.Packages[i]
		if r := g.refOf[p.Path]; r != "" {
			walk(r, p)
		}
	}
	return g
}

// resolveDep finds the lockfile path that satisfies dependency name for the
// package at loc, following a link to its target. It returns "" when the
// dependency is not installed. buf is scratch space reused across calls.
func resolveDep(lf *Lockfile, loc, name string, buf *[]byte) string {
	for {
		if path.Base(loc) != "node_modules" {
			b := (*buf)[:0]
			if loc != "" {
				b = append(b, loc...)
				b = append(b, '/')
			}
			b = append(b, "node_modules/"...)
			b = append(b, name...)
			*buf = b
			if i, ok := lf.index[string(b)]; ok {
				p := &lf.Packages[i]
				for hops := 0; p.Link && hops < 8; hops++ {
					if p, ok = lf.Lookup(strings.TrimPrefix(p.Resolved, "file:")); !ok {
						return ""
					}
				}
				return p.Path
			}
		}
		if loc == "" {
			return ""
		}
		parent := path.Dir(loc)
		if parent == "." || parent == "/" || parent == loc || strings.HasPrefix(parent, "..") {
			parent = ""
		}
		loc = parent
	}
}

func sortedSet(m map[string]bool) *[]string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return &out
}

func ref(name, version string) string { return name + "@" + version }

// purl builds a package URL: pkg:npm/%40scope/name@1.2.3.
func purl(name, version string) string {
	var b strings.Builder
	b.WriteString("pkg:npm/")
	if scope, pkg, ok := strings.Cut(name, "/"); ok {
		// The scope's "@" must be percent-encoded in a purl namespace.
		b.WriteString("%40")
		b.WriteString(url.PathEscape(strings.TrimPrefix(scope, "@")))
		b.WriteByte('/')
		b.WriteString(url.PathEscape(pkg))
	} else {
		b.WriteString(url.PathEscape(name))
	}
	if version != "" {
		b.WriteByte('@')
		b.WriteString(url.PathEscape(version))
	}
	return b.String()
}

func newURN() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails since Go 1.24
	u[6] = (u[6] & 0x0f) | 0x40
	u[8] = (u[8] & 0x3f) | 0x80
	h := hex.EncodeToString(u[:])
	return "urn:uuid:" + h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
