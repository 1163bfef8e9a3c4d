package sourcepack

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// project writes files (path -> content) below a new directory.
func project(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSelectLeavesOutSecretsIgnoredFilesAndStaleOutputs(t *testing.T) {
	dir := project(t, map[string]string{
		"package.json":         "{}",
		"src/a.js":             "a",
		".env":                 "SECRET=1",
		".env.local":           "SECRET=2",
		".env.example":         "SECRET=",
		"pkg/.env.production":  "SECRET=3",
		".npmrc":               "registry=https://npm.example/\n//npm.example/:_authToken=abc123\n",
		"pkg/.npmrc":           "registry=https://npm.example/\n//npm.example/:_authToken=${NPM_TOKEN}\n",
		"dist/app.js":          "stale",
		"coverage/x":           "c",
		".gitignore":           "coverage/\n*.log\n",
		"web/.gitignore":       "!keep.log\ncache/\n",
		"web/keep.log":         "k",
		"web/drop.log":         "d",
		"web/cache/c":          "c",
		"web/src/b.js":         "b",
		".cleanroomignore":     "docs/\n!generated/\n",
		"docs/big.pdf":         "pdf",
		"generated/g.js":       "g",
		"node_modules/x/i.js":  "x",
		".git/HEAD":            "ref",
		"web/node_modules/y/i": "y",
	})
	if err := os.WriteFile(filepath.Join(dir, ".gitignore"), []byte("coverage/\n*.log\ngenerated/\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Select(dir, []string{"dist/", "out/*.tgz"})
	if err != nil {
		t.Fatal(err)
	}
	var inc []string
	for _, e := range p.Included {
		inc = append(inc, e.Path)
	}
	want := []string{".cleanroomignore", ".env.example", ".gitignore", "generated/", "generated/g.js", "package.json", "pkg/", "pkg/.npmrc",
		"src/", "src/a.js", "web/", "web/.gitignore", "web/keep.log", "web/src/", "web/src/b.js"}
	if !slices.Equal(inc, want) {
		t.Errorf("included %q\nwant     %q", inc, want)
	}
	reasons := map[string]string{}
	for _, e := range p.Left {
		reasons[e.Path] = e.Reason
	}
	for path, why := range map[string]string{
		".env": "environment file", ".env.local": "environment file", "pkg/.env.production": "environment file",
		".npmrc": ".npmrc holds credentials (line 2: //npm.example/:_authToken)", "dist/": "artifacts (dist)",
		"coverage/": "ignored by .gitignore:1: coverage/", "web/drop.log": "ignored by .gitignore:2: *.log",
		"web/cache/": "ignored by web/.gitignore:2: cache/", "docs/": "ignored by .cleanroomignore:1: docs/",
		"node_modules/": "always", ".git/": "always", "web/node_modules/": "always",
	} {
		if !strings.Contains(reasons[path], why) {
			t.Errorf("%s left out for %q, want a reason with %q", path, reasons[path], why)
		}
	}
	if strings.Contains(reasons[".npmrc"], "abc123") {
		t.Errorf("the reason shows the credential: %q", reasons[".npmrc"])
	}
	if p.Files != 10 {
		t.Errorf("Files = %d, want 10", p.Files)
	}

	var buf bytes.Buffer
	if err := p.Write(&buf); err != nil {
		t.Fatal(err)
	}
	names := testutil.TarGzNames(t, &buf)
	if !slices.Equal(names, want) {
		t.Errorf("archive has %q\nwant        %q", names, want)
	}
}

func TestCredentialLine(t *testing.T) {
	for content, want := range map[string]string{
		"registry=https://r/\n":                 "",
		"//r/:_authToken=${NPM_TOKEN}\n":        "",
		"; //r/:_authToken=x\n":                 "",
		"//r/:username=me\n//r/:email=a@b\n":    "",
		"//r/:_authToken=abc\n":                 "line 1: //r/:_authToken",
		"\n_auth = \"dXNlcjpwYXNz\"\n":          "line 2: _auth",
		"//r/:_password=cGFzcw==\n":             "line 1: //r/:_password",
		"//r/path/:_authToken=npm_xxxxxxxxxx\n": "line 1: //r/path/:_authToken",
		"//r/:token=abc\n":                      "line 1: //r/:token",
	} {
		f := filepath.Join(t.TempDir(), ".npmrc")
		os.WriteFile(f, []byte(content), 0o644)
		if got := credentialLine(f); got != want {
			t.Errorf("credentialLine(%q) = %q, want %q", content, got, want)
		}
	}
}

// The ways a credential hides in an npm config that the review found, each
// detected; and what is no credential stays.
func TestCredentialLineFindsHiddenCredentials(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range []struct {
		content string
		found   bool
	}{
		{`"//registry.npmjs.org/:_authToken"=npm_abcdef`, true},
		{`'//registry.npmjs.org/:_authToken'=npm_abcdef`, true},
		{`key="-----BEGIN PRIVATE KEY-----\nMIIE"`, true},
		{`cert=-----BEGIN CERTIFICATE-----`, true},
		{`registry=https://alice:hunter2@npm.example/`, true},
		{`https-proxy=http://u:p@proxy.example:3128`, true},
		{`npmAuthToken: "npm_abcdef"`, true},
		{strings.Repeat("x", 2<<20) + "\n//r/:_authToken=npm_abcdef", true},
		{`//registry.npmjs.org/:_authToken=${NPM_TOKEN}`, false},
		{`registry=https://npm.example/`, false},
		{`//registry.npmjs.org/:email=dev@example.com`, false},
	} {
		f := filepath.Join(dir, fmt.Sprintf("npmrc-%d", i))
		if err := os.WriteFile(f, []byte(tc.content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := credentialLine(f); (got != "") != tc.found {
			t.Errorf("case %d (%.60q): credentialLine = %q, want found=%v", i, tc.content, got, tc.found)
		} else if got != "" && (strings.Contains(got, "hunter2") || strings.Contains(got, "npm_abcdef")) {
			t.Errorf("case %d: the report shows the secret: %q", i, got)
		}
	}
}

func TestEnvFilesInAnyCaseAndVariant(t *testing.T) {
	for name, want := range map[string]bool{
		".env": true, ".ENV": true, ".Env.local": true, ".envrc": true, ".env-local": true, ".env_prod": true,
		"prod.env": true, ".env.example": false, ".ENV.EXAMPLE": false, ".env.template": false, "environment.ts": false, "envelope.js": false,
	} {
		if got := envFile(name); got != want {
			t.Errorf("envFile(%q) = %v, want %v", name, got, want)
		}
	}
}

// What a developer excludes only in .git/info/exclude stays at the desk too.
func TestGitInfoExcludeIsHonoured(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"package.json": "{}", "package-lock.json": "{}", "secrets/key.pem": "KEY", "sub/local.pem": "KEY",
		".git/info/exclude": "secrets/\n*.pem\n",
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := Select(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range p.Included {
		if strings.Contains(e.Path, "pem") || strings.HasPrefix(e.Path, "secrets") {
			t.Errorf("%s uploaded although .git/info/exclude excludes it", e.Path)
		}
	}
}
