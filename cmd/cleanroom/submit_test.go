package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/api"
)

func TestExampleSpecsParseAndValidate(t *testing.T) {
	files, _ := filepath.Glob("../../examples/*/cleanroom.yaml")
	if len(files) == 0 {
		t.Fatal("no examples/*/cleanroom.yaml found")
	}
	for _, f := range files {
		if _, err := readSpec(f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

func TestReadSpecRefusesUnknownKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cleanroom.yaml")
	os.WriteFile(p, []byte("build: npm run build\ntimout: 5m\n"), 0o644)
	if _, err := readSpec(p); err == nil || !strings.Contains(err.Error(), "timout") {
		t.Fatalf("readSpec = %v, want an error naming the unknown key", err)
	}
}

func TestPackDirLeavesOutNodeModulesAndGit(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"package.json", "src/a.js", "node_modules/x/index.js", ".git/HEAD", "pkg/node_modules/y/i.js"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755)
		os.WriteFile(filepath.Join(dir, f), []byte(f), 0o644)
	}
	os.Symlink("src/a.js", filepath.Join(dir, "link.js"))
	var buf bytes.Buffer
	if err := packDir(dir, &buf); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	sort.Strings(names)
	want := []string{"link.js", "package.json", "pkg/", "src/", "src/a.js"}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("archive has %v, want %v", names, want)
	}
}

func TestStatusSaysWhatARunnerNeeds(t *testing.T) {
	s := api.JobSpec{Labels: map[string]string{"zone": "b", "arch": "amd64"}, Resources: api.Resources{Memory: 8 << 30, CPUs: 4}}
	if got := requirements(s); got != "arch=amd64,zone=b, memory 8GiB, cpus 4" {
		t.Fatalf("requirements = %q", got)
	}
	if got := requirements(api.JobSpec{}); got != "" {
		t.Fatalf("requirements of a plain job = %q", got)
	}
}
