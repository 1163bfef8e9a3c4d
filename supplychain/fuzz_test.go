package supplychain

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	cdx "github.com/CycloneDX/cyclonedx-go"
)

// FuzzParseLockfile feeds arbitrary bytes through everything that reads a
// lockfile — parse, policy, script plan, SBOM graph — and checks that it
// never panics and that every violation names an entry that exists.
func FuzzParseLockfile(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "fixture", PackageLockFile)); err == nil {
		f.Add(b)
	}
	f.Add(lockJSON(f, 3, map[string]map[string]any{
		"node_modules/a":                   with(regEntry("a", "1.0.0"), "dependencies", map[string]any{"b": "*"}, "hasInstallScript", true),
		"node_modules/a/node_modules/@s/b": regEntry("@s/b", "1.0.0"),
		"node_modules/../../x":             regEntry("x", "1.0.0"),
		"node_modules/l":                   {"resolved": "../out", "link": true},
		"node_modules/g":                   {"resolved": "git+ssh://git@h/x.git#1"},
		"node_modules/i":                   with(regEntry("i", "1.0.0"), "integrity", "sha512-!!"),
		"packages/w":                       {"name": "w", "dependencies": map[string]any{"a": "*"}},
		"node_modules/w":                   {"resolved": "packages/w", "link": true},
		"node_modules/loop":                {"resolved": "node_modules/loop", "link": true},
	}))
	f.Add([]byte(`{"lockfileVersion":1,"dependencies":{}}`))
	f.Add([]byte(`{"lockfileVersion":2,"packages":{"":{"dependencies":{"x":"1"}},"node_modules/x":{"license":{"type":"MIT"}}}}`))
	f.Add([]byte(`null`))
	policy := LockPolicy{Registries: []string{testRegistry}, AllowedHosts: []string{"cdn.example:8443"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		lf, err := ParseLockfile(data)
		if err != nil {
			return
		}
		vs, err := lf.Violations(policy)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if _, ok := lf.Lookup(v.Path); !ok {
				t.Fatalf("violation for unknown path %q", v.Path)
			}
		}
		PlanScripts(lf, ScriptPolicy{Allow: []string{"a", "-x"}})
		bom := BuildBOM("", "", "", lf)
		if err := cdx.NewBOMEncoder(io.Discard, cdx.BOMFileFormatJSON).EncodeVersion(bom, cdx.SpecVersion1_5); err != nil {
			t.Fatal(err)
		}
	})
}
