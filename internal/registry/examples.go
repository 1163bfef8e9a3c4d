package registry

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ManifestFile is the examples' package list, relative to the examples
// folder: every exact name@version the example lockfiles resolve to, except
// the packages published from local tarballs.
const ManifestFile = "registry-packages.txt"

// WebappManifestFile is the webapp example's package list (its lockfile's
// whole closure, 373 packages), relative to the examples folder. It is kept
// apart from ManifestFile because seeding it takes longer: only the tests
// and benchmarks that build the webapp seed it (SeedWebapp), not the demo.
const WebappManifestFile = "registry-packages-webapp.txt"

// ExamplePackages reads examplesDir/registry-packages.txt (ReadManifest).
func ExamplePackages(examplesDir string) ([]string, error) {
	return ReadManifest(filepath.Join(examplesDir, ManifestFile))
}

// WebappPackages reads examplesDir/registry-packages-webapp.txt.
func WebappPackages(examplesDir string) ([]string, error) {
	return ReadManifest(filepath.Join(examplesDir, WebappManifestFile))
}

// ReadManifest reads a package list: one exact name@version a line; blank
// lines and lines starting with # are skipped.
func ReadManifest(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("reading package manifest: %w", err)
	}
	defer f.Close()
	var specs []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if _, _, err := ParseSpec(line); err != nil {
			return nil, fmt.Errorf("reading %s line %d: %w", p, n, err)
		}
		specs = append(specs, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading package manifest: %w", err)
	}
	return specs, nil
}

// ExampleTarballs lists the local package tarballs the examples need
// (examplesDir/packages/*.tgz, such as the malicious telemetry-helper),
// sorted, to publish as they are.
func ExampleTarballs(examplesDir string) ([]string, error) {
	m, err := filepath.Glob(filepath.Join(examplesDir, "packages", "*.tgz"))
	if err != nil {
		return nil, fmt.Errorf("listing example tarballs: %w", err)
	}
	sort.Strings(m)
	return m, nil
}

// SeedExamples seeds everything the example projects need: the packages in
// examplesDir/registry-packages.txt and the local tarballs.
func (r *Registry) SeedExamples(ctx context.Context, examplesDir string) error {
	pkgs, err := ExamplePackages(examplesDir)
	if err != nil {
		return err
	}
	tbs, err := ExampleTarballs(examplesDir)
	if err != nil {
		return err
	}
	return r.Seed(ctx, pkgs, tbs)
}

// SeedWebapp seeds the webapp example's packages (WebappManifestFile). It
// is idempotent, so a test can call it on a registry SeedExamples already
// filled; the first run on a machine packs 373 tarballs from the public
// registry (progress goes to Options.Progress), later runs only publish.
func (r *Registry) SeedWebapp(ctx context.Context, examplesDir string) error {
	pkgs, err := WebappPackages(examplesDir)
	if err != nil {
		return err
	}
	return r.Seed(ctx, pkgs, nil)
}
