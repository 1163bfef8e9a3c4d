package main

import (
	"os"
	"path/filepath"
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

func TestStatusSaysWhatARunnerNeeds(t *testing.T) {
	s := api.JobSpec{Labels: map[string]string{"zone": "b", "arch": "amd64"}, Resources: api.Resources{Memory: 8 << 30, CPUs: 4}}
	if got := requirements(s); got != "arch=amd64,zone=b, memory 8GiB, cpus 4" {
		t.Fatalf("requirements = %q", got)
	}
	if got := requirements(api.JobSpec{}); got != "" {
		t.Fatalf("requirements of a plain job = %q", got)
	}
}
