package supplychain

import (
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testRegistry = "http://registry.cleanroom.test:4873/"

// sri returns a valid sha512 integrity string for seed.
func sri(seed string) string {
	sum := sha512.Sum512([]byte(seed))
	return "sha512-" + base64.StdEncoding.EncodeToString(sum[:])
}

// tarball returns the registry tarball URL of name@version on base.
func tarball(base, name, version string) string {
	file := name[strings.LastIndex(name, "/")+1:]
	return fmt.Sprintf("%s%s/-/%s-%s.tgz", base, name, file, version)
}

// regEntry is a registry package entry on testRegistry.
func regEntry(name, version string) map[string]any {
	return map[string]any{
		"version":   version,
		"resolved":  tarball(testRegistry, name, version),
		"integrity": sri(name + "@" + version),
	}
}

// lockJSON renders a v3 lockfile with a root entry and the given entries.
func lockJSON(t testing.TB, version int, entries map[string]map[string]any) []byte {
	t.Helper()
	pkgs := map[string]any{"": map[string]any{"name": "proj", "version": "1.0.0"}}
	for k, v := range entries {
		pkgs[k] = v
	}
	b, err := json.MarshalIndent(map[string]any{
		"name": "proj", "version": "1.0.0", "lockfileVersion": version, "requires": true, "packages": pkgs,
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeProject writes package.json and, when lock is non-nil, lockName.
func writeProject(t testing.TB, dir, lockName string, lock []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`{"name":"proj","version":"1.0.0"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if lock != nil {
		if err := os.WriteFile(filepath.Join(dir, lockName), lock, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fixtureDir(t testing.TB) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join("testdata", "fixture"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
