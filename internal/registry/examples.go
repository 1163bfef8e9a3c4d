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

// ExamplePackages reads examplesDir/registry-packages.txt: one exact
// name@version a line; blank lines and lines starting with # are skipped.
func ExamplePackages(examplesDir string) ([]string, error) {
	p := filepath.Join(examplesDir, ManifestFile)
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
