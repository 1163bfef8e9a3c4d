package supplychain

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// sbomView is the part of a CycloneDX document both generators must agree on.
type sbomView struct {
	components map[string]string   // name@version -> purl
	hashes     map[string]string   // name@version -> sha512 hex
	deps       map[string][]string // name@version -> sorted dependsOn
}

func viewOf(t *testing.T, bom *cdx.BOM) sbomView {
	t.Helper()
	v := sbomView{components: map[string]string{}, hashes: map[string]string{}, deps: map[string][]string{}}
	refs := map[string]string{} // bom-ref -> name@version
	if bom.Metadata != nil && bom.Metadata.Component != nil {
		refs[bom.Metadata.Component.BOMRef] = "ROOT"
	}
	for _, c := range *bom.Components {
		key := c.Name + "@" + c.Version
		if c.Group != "" {
			key = c.Group + "/" + key
		}
		v.components[key] = c.PackageURL
		refs[c.BOMRef] = key
		if c.Hashes != nil {
			for _, h := range *c.Hashes {
				if h.Algorithm == cdx.HashAlgoSHA512 {
					v.hashes[key] = h.Value
				}
			}
		}
	}
	for _, d := range *bom.Dependencies {
		var to []string
		if d.Dependencies != nil {
			for _, r := range *d.Dependencies {
				to = append(to, refs[r])
			}
		}
		sort.Strings(to)
		v.deps[refs[d.Ref]] = to
	}
	return v
}

func decodeBOM(t *testing.T, data []byte) *cdx.BOM {
	t.Helper()
	var bom cdx.BOM
	if err := cdx.NewBOMDecoder(bytes.NewReader(data), cdx.BOMFileFormatJSON).Decode(&bom); err != nil {
		t.Fatalf("decoding SBOM: %v\n%s", err, data)
	}
	if bom.Components == nil || bom.Dependencies == nil {
		t.Fatalf("SBOM without components or dependencies:\n%s", data)
	}
	return &bom
}

// TestSBOMMatchesNpmSbom compares our SBOM of the fixture with the one npm
// itself produces from the same lockfile: same name@version components,
// purls, sha512 hashes and dependency graph.
func TestSBOMMatchesNpmSbom(t *testing.T) {
	testutil.RequiresCommands(t, "npm")
	src := fixtureDir(t)
	lf, err := CheckLockfile(src, LockPolicy{Registries: []string{"https://registry.npmjs.org/"}})
	if err != nil {
		t.Fatal(err)
	}
	var ours bytes.Buffer
	if err := SBOM(src, lf, &ours); err != nil {
		t.Fatal(err)
	}

	// npm runs on a copy so nothing it might write lands in testdata.
	dir := t.TempDir()
	for _, f := range []string{"package.json", PackageLockFile} {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty.npmrc")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("npm", "sbom", "--sbom-format", "cyclonedx", "--package-lock-only", "--userconfig", empty)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	theirs, err := cmd.Output()
	if err != nil {
		t.Fatalf("npm sbom: %v\n%s", err, stderr.Bytes())
	}

	ourBOM, npmBOM := decodeBOM(t, ours.Bytes()), decodeBOM(t, theirs)
	if ourBOM.SpecVersion != cdx.SpecVersion1_5 {
		t.Errorf("specVersion = %v, want 1.5", ourBOM.SpecVersion)
	}
	got, want := viewOf(t, ourBOM), viewOf(t, npmBOM)
	if len(want.components) != len(lf.Packages) {
		t.Fatalf("npm sbom listed %d components, lockfile has %d packages", len(want.components), len(lf.Packages))
	}
	if !reflect.DeepEqual(got.components, want.components) {
		t.Errorf("components (name@version -> purl) differ:\n ours %v\n npm  %v", got.components, want.components)
	}
	if !reflect.DeepEqual(got.hashes, want.hashes) {
		t.Errorf("sha512 hashes differ:\n ours %v\n npm  %v", got.hashes, want.hashes)
	}
	if !reflect.DeepEqual(got.deps, want.deps) {
		t.Errorf("dependency graphs differ:\n ours %v\n npm  %v", got.deps, want.deps)
	}
	root := ourBOM.Metadata.Component
	if root.Name != "cleanroom-supplychain-fixture" || root.Version != "1.0.0" || root.PackageURL != "pkg:npm/cleanroom-supplychain-fixture@1.0.0" {
		t.Errorf("metadata.component = %+v", root)
	}
}

func TestSBOMResolvesLikeNodeModulesLookup(t *testing.T) {
	lf, err := ParseLockfile(lockJSON(t, 3, map[string]map[string]any{
		// a needs b: its own nested copy wins over the hoisted one.
		"node_modules/a":                with(regEntry("a", "1.0.0"), "dependencies", map[string]any{"b": "^1", "c": "*"}),
		"node_modules/a/node_modules/b": with(regEntry("b", "1.0.0"), "dependencies", map[string]any{"c": "*"}),
		"node_modules/b":                regEntry("b", "2.0.0"),
		// c is found by walking up from a/node_modules/b to the root.
		"node_modules/c": with(regEntry("c", "1.0.0"),
			"optionalDependencies", map[string]any{"missing-optional": "*"},
			"peerDependencies", map[string]any{"@s/peer": "*"}),
		"node_modules/@s/peer": regEntry("@s/peer", "3.0.0"),
		// A workspace link resolves to its folder's entry.
		"node_modules/ws": {"resolved": "packages/ws", "link": true},
		"packages/ws":     {"name": "ws", "version": "0.1.0", "dependencies": map[string]any{"a": "*"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	lf.Root.Dependencies = map[string]string{"a": "*", "ws": "*"}
	lf.Root.DevDependencies = map[string]string{"b": "*"}
	v := viewOf(t, BuildBOM("proj", "1.0.0", "", lf))
	want := map[string][]string{
		"ROOT":          {"a@1.0.0", "b@2.0.0", "ws@0.1.0"},
		"a@1.0.0":       {"b@1.0.0", "c@1.0.0"},
		"b@1.0.0":       {"c@1.0.0"},
		"b@2.0.0":       nil,
		"c@1.0.0":       {"@s/peer@3.0.0"},
		"@s/peer@3.0.0": nil,
		"ws@0.1.0":      {"a@1.0.0"},
	}
	if !reflect.DeepEqual(v.deps, want) {
		t.Errorf("graph:\n got  %v\n want %v", v.deps, want)
	}
	if v.components["@s/peer@3.0.0"] != "pkg:npm/%40s/peer@3.0.0" {
		t.Errorf("scoped purl = %q", v.components["@s/peer@3.0.0"])
	}
}

func TestSBOMWritesCycloneDX15AndNeedsPackageJSON(t *testing.T) {
	var buf bytes.Buffer
	lf, err := ParseLockfile(lockJSON(t, 3, nil))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeProject(t, dir, "", nil)
	if err := SBOM(dir, lf, &buf); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["bomFormat"] != "CycloneDX" || doc["specVersion"] != "1.5" {
		t.Errorf("header = %v %v", doc["bomFormat"], doc["specVersion"])
	}
	if err := SBOM(t.TempDir(), lf, &buf); err == nil {
		t.Error("SBOM without package.json succeeded")
	}
}

func TestPurl(t *testing.T) {
	tests := []struct{ name, version, want string }{
		{"ms", "2.1.3", "pkg:npm/ms@2.1.3"},
		{"@types/debug", "4.1.12", "pkg:npm/%40types/debug@4.1.12"},
		{"@scope/name", "1.0.0-beta.1", "pkg:npm/%40scope/name@1.0.0-beta.1"},
	}
	for _, tc := range tests {
		if got := purl(tc.name, tc.version); got != tc.want {
			t.Errorf("purl(%q, %q) = %q, want %q", tc.name, tc.version, got, tc.want)
		}
	}
}

// A sha1-only entry (accepted under allow_sha1) says so in the SBOM and
// carries its sha1; an ordinary one does not get the mark.
func TestSBOMMarksSHA1OnlyEntries(t *testing.T) {
	lf, err := ParseLockfile(lockJSON(t, 3, map[string]map[string]any{
		"node_modules/old": with(regEntry("old", "1.0.0"), "integrity", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="),
		"node_modules/new": regEntry("new", "1.0.0"),
	}))
	if err != nil {
		t.Fatal(err)
	}
	bom := BuildBOM("proj", "1.0.0", "", lf)
	marked := map[string]string{}
	for _, c := range *bom.Components {
		for _, p := range *c.Properties {
			if p.Name == SBOMPropertySHA1Only {
				marked[c.Name] = (*c.Hashes)[0].Value
			}
		}
	}
	if len(marked) != 1 || marked["old"] != "da39a3ee5e6b4b0d3255bfef95601890afd80709" {
		t.Fatalf("sha1-only marks = %v, want old with its sha1 only", marked)
	}
}
