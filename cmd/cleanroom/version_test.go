package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/internal/version"
)

// runRoot runs the cleanroom command line in-process and returns stdout.
func runRoot(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetArgs(args)
	t.Cleanup(func() { rootCmd.SetOut(nil); rootCmd.SetArgs(nil) })
	if err := rootCmd.Execute(); err != nil {
		t.Fatalf("cleanroom %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

func TestVersionPrintsVersionCommitAndGo(t *testing.T) {
	info := version.Get()
	if got, want := runRoot(t, "version"), "cleanroom "+info.Version+"\ncommit: "+info.Commit+"\ngo:     "+runtime.Version()+"\n"; got != want {
		t.Errorf("version:\n%s\nwant:\n%s", got, want)
	}
	if got, want := runRoot(t, "--version"), info.String()+"\n"; got != want {
		t.Errorf("--version = %q, want %q", got, want)
	}
	var j version.Info
	if err := json.Unmarshal([]byte(runRoot(t, "version", "--json")), &j); err != nil || j != info {
		t.Errorf("version --json = %+v (%v), want %+v", j, err, info)
	}
}

// The Makefile's -ldflags -X names the variables of internal/version (the
// linker ignores a name that does not exist, so a rename would go unseen).
func TestBuildStampsVersionAndCommit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	const pkg = "github.com/cleanroom-ci/cleanroom/internal/version"
	for _, want := range []string{"VERSION_PKG := " + pkg, "-X $(VERSION_PKG).version=$(VERSION)", "-X $(VERSION_PKG).commit=$(COMMIT)", "-ldflags '$(LDFLAGS)'"} {
		if !bytes.Contains(mk, []byte(want)) {
			t.Errorf("Makefile lacks %q", want)
		}
	}
	bin := filepath.Join(t.TempDir(), "cleanroom")
	build := exec.Command("go", "build", "-ldflags", "-X "+pkg+".version=v9.9.9-3-gabcdef0-dirty -X "+pkg+".commit=abcdef0123456789", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "cleanroom v9.9.9-3-gabcdef0-dirty (commit abcdef0123456789, " + runtime.Version() + ")\n"; string(out) != want {
		t.Errorf("--version = %q, want %q", out, want)
	}
}

func TestNetworkReadyNeedsIptablesAndAWritableStateDir(t *testing.T) {
	bins := t.TempDir()
	for _, b := range []string{"iptables", "ip6tables"} {
		if err := os.WriteFile(filepath.Join(bins, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	tests := []struct {
		name, path, dir, err string
	}{
		{"ready", bins, filepath.Join(t.TempDir(), "net"), ""},
		{"no iptables", t.TempDir(), t.TempDir(), "finding iptables"},
		{"state dir not a directory", bins, filepath.Join(file, "net"), "network state dir"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PATH", tc.path)
			err := networkReady(tc.dir)
			if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("networkReady = %v, want %q", err, tc.err)
			}
			if tc.err == "" {
				if ents, _ := os.ReadDir(tc.dir); len(ents) != 0 {
					t.Errorf("left %v in the state dir", ents)
				}
			}
		})
	}
}

func TestReadMetricsTokenWantsOneLongLine(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		body string
		ok   bool
	}{
		"good":    {"0123456789abcdef0123\n", true},
		"short":   {"secret\n", false},
		"spaces":  {"0123456789 abcdef0123\n", false},
		"missing": {"", false},
	} {
		p := filepath.Join(dir, name)
		if name != "missing" {
			os.WriteFile(p, []byte(tc.body), 0o600)
		}
		tok, err := readMetricsToken(p)
		if (err == nil) != tc.ok || tc.ok && tok != strings.TrimSpace(tc.body) {
			t.Errorf("%s: token %q, error %v", name, tok, err)
		}
	}
}
