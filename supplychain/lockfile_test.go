package supplychain

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func with(m map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(out, k)
		} else {
			out[k] = kv[i+1]
		}
	}
	return out
}

func TestCheckLockfileRules(t *testing.T) {
	verdaccio := LockPolicy{Registries: []string{testRegistry}}
	npmjs := LockPolicy{Registries: []string{"https://registry.npmjs.org/"}}
	nexus := LockPolicy{Registries: []string{"https://nexus.test/repository/npm/"}}
	ms := regEntry("ms", "2.1.3")
	scoped := regEntry("@scope/name", "1.2.3")

	tests := []struct {
		name     string
		key      string
		entry    map[string]any
		policy   LockPolicy
		wantRule string // "" means accepted
	}{
		{"registry package on the http registry is accepted", "node_modules/ms", ms, verdaccio, ""},
		{"https URL on an https registry is accepted", "node_modules/ms",
			with(ms, "resolved", "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz"), npmjs, ""},
		{"explicit default port matches the registry host", "node_modules/ms",
			with(ms, "resolved", "https://REGISTRY.npmjs.org:443/ms/-/ms-2.1.3.tgz"), npmjs, ""},
		{"http URL on an https registry is refused", "node_modules/ms",
			with(ms, "resolved", "http://registry.npmjs.org/ms/-/ms-2.1.3.tgz"), npmjs, RuleAllowedScheme},
		{"tarball on another host is refused", "node_modules/ms",
			with(ms, "resolved", "https://evil.example/ms/-/ms-2.1.3.tgz"), verdaccio, RuleAllowedHost},
		{"registry host on another port is refused", "node_modules/ms",
			with(ms, "resolved", "http://registry.cleanroom.test:8080/ms/-/ms-2.1.3.tgz"), verdaccio, RuleAllowedHost},
		{"tarball on an extra allowed host over https is accepted", "node_modules/ms",
			with(ms, "resolved", "https://cdn.example/any/path.tgz"),
			LockPolicy{Registries: verdaccio.Registries, AllowedHosts: []string{"cdn.example"}}, ""},
		{"tarball on an extra allowed host over http is refused", "node_modules/ms",
			with(ms, "resolved", "http://cdn.example/any/path.tgz"),
			LockPolicy{AllowedHosts: []string{"cdn.example"}}, RuleAllowedScheme},
		{"missing integrity is refused", "node_modules/ms", with(ms, "integrity", nil), verdaccio, RuleIntegrityMissing},
		{"sha1 integrity is refused", "node_modules/ms",
			with(ms, "integrity", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="), verdaccio, RuleIntegritySHA512},
		{"sha512 that is not base64 is refused", "node_modules/ms",
			with(ms, "integrity", "sha512-"+strings.Repeat("!", 86)+"=="), verdaccio, RuleIntegrityBase64},
		{"sha512 of the wrong length is refused", "node_modules/ms",
			with(ms, "integrity", "sha512-AAAA"), verdaccio, RuleIntegrityBase64},
		{"sha1 alongside a valid sha512 is accepted", "node_modules/ms",
			with(ms, "integrity", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk= "+sri("x")), verdaccio, ""},
		{"resolved URL naming another package is refused", "node_modules/ms",
			with(ms, "resolved", tarball(testRegistry, "evil", "2.1.3")), verdaccio, RulePackageName},
		{"resolved URL with another version is refused", "node_modules/ms",
			with(ms, "resolved", tarball(testRegistry, "ms", "9.9.9")), verdaccio, RulePackageName},
		{"scoped package with its own URL is accepted", "node_modules/@scope/name", scoped, verdaccio, ""},
		{"scoped package resolved from another scope is refused", "node_modules/@scope/name",
			with(scoped, "resolved", tarball(testRegistry, "@other/name", "1.2.3")), verdaccio, RulePackageName},
		{"nested scoped package with its own URL is accepted", "node_modules/a/node_modules/@scope/name", scoped, verdaccio, ""},
		{"nested package resolved as its parent is refused", "node_modules/a/node_modules/ms",
			with(ms, "resolved", tarball(testRegistry, "a", "2.1.3")), verdaccio, RulePackageName},
		{"registry path prefix is honoured", "node_modules/ms",
			with(ms, "resolved", tarball("https://nexus.test/repository/npm/", "ms", "2.1.3")), nexus, ""},
		{"URL outside the registry path prefix is refused", "node_modules/ms",
			with(ms, "resolved", tarball("https://nexus.test/repository/other/", "ms", "2.1.3")), nexus, RulePackageName},
		{"git+ssh source is refused", "node_modules/ms",
			with(ms, "resolved", "git+ssh://git@github.com/vercel/ms.git#1a2b3c", "integrity", nil), verdaccio, RuleGitSource},
		{"github: source is refused", "node_modules/ms",
			with(ms, "resolved", "github:vercel/ms#1a2b3c", "integrity", nil), verdaccio, RuleGitSource},
		{"git source is accepted when allowed", "node_modules/ms",
			with(ms, "resolved", "git+ssh://git@github.com/vercel/ms.git#1a2b3c", "integrity", nil),
			LockPolicy{AllowGit: true}, ""},
		{"file tarball outside the project is refused", "node_modules/ms",
			with(ms, "resolved", "file:../elsewhere/ms-2.1.3.tgz"), verdaccio, RuleFileOutside},
		{"absolute file tarball is refused", "node_modules/ms",
			with(ms, "resolved", "file:/tmp/ms-2.1.3.tgz"), verdaccio, RuleFileOutside},
		{"file tarball outside the project is accepted when allowed", "node_modules/ms",
			with(ms, "resolved", "file:../elsewhere/ms-2.1.3.tgz"), LockPolicy{AllowFile: true}, ""},
		{"file tarball inside the project is accepted", "node_modules/ms",
			with(ms, "resolved", "file:vendor/ms-2.1.3.tgz"), verdaccio, ""},
		{"workspace link inside the project is accepted", "node_modules/app",
			map[string]any{"resolved": "packages/app", "link": true}, verdaccio, ""},
		{"link leaving the project is refused", "node_modules/app",
			map[string]any{"resolved": "../../other/app", "link": true}, verdaccio, RuleFileOutside},
		{"workspace folder entry is accepted", "packages/app",
			map[string]any{"name": "app", "version": "1.0.0"}, verdaccio, ""},
		{"entry without resolved but with integrity is accepted", "node_modules/ms",
			with(ms, "resolved", nil), LockPolicy{}, ""},
		{"entry without resolved and without integrity is refused", "node_modules/ms",
			with(ms, "resolved", nil, "integrity", nil), LockPolicy{}, RuleIntegrityMissing},
		{"bundled dependency needs no integrity", "node_modules/a/node_modules/ms",
			map[string]any{"version": "2.1.3", "inBundle": true}, verdaccio, ""},
		{"path traversal in the key is refused", "node_modules/../../x", ms, verdaccio, RuleInvalidPath},
		{"absolute key is refused", "/etc/node_modules/ms", ms, verdaccio, RuleInvalidPath},
		{"name that reads as a flag is refused", "node_modules/--registry=http:", ms, verdaccio, RuleInvalidPath},
		{"npm alias is refused by default", "node_modules/ms",
			with(ms, "name", "evil-ms", "resolved", tarball(testRegistry, "evil-ms", "2.1.3")), verdaccio, RulePackageAlias},
		{"npm alias is accepted when allowed", "node_modules/ms",
			with(ms, "name", "evil-ms", "resolved", tarball(testRegistry, "evil-ms", "2.1.3")),
			LockPolicy{Registries: verdaccio.Registries, AllowAliases: true}, ""},
		{"tarball on a registry alias is accepted", "node_modules/ms",
			with(ms, "resolved", "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz"),
			LockPolicy{Registries: verdaccio.Registries, RegistryAliases: []string{"registry.npmjs.org"}}, ""},
		{"tarball on a registry alias still gets the name check", "node_modules/ms",
			with(ms, "resolved", "https://registry.npmjs.org/evil/-/evil-2.1.3.tgz"),
			LockPolicy{Registries: verdaccio.Registries, RegistryAliases: []string{"registry.npmjs.org"}}, RulePackageName},
		{"http tarball on a registry alias is refused", "node_modules/ms",
			with(ms, "resolved", "http://registry.npmjs.org/ms/-/ms-2.1.3.tgz"),
			LockPolicy{Registries: verdaccio.Registries, RegistryAliases: []string{"registry.npmjs.org"}}, RuleAllowedScheme},
		{"public registry without the alias is refused", "node_modules/ms",
			with(ms, "resolved", "https://registry.npmjs.org/ms/-/ms-2.1.3.tgz"), verdaccio, RuleAllowedHost},
		{"sha1 integrity is accepted with allow_sha1", "node_modules/ms",
			with(ms, "integrity", "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="),
			LockPolicy{Registries: verdaccio.Registries, AllowSHA1: true}, ""},
		{"malformed sha1 is refused even with allow_sha1", "node_modules/ms",
			with(ms, "integrity", "sha1-AAAA"),
			LockPolicy{Registries: verdaccio.Registries, AllowSHA1: true}, RuleIntegritySHA512},
		{"unknown source scheme is refused", "node_modules/ms",
			with(ms, "resolved", "ftp://registry.cleanroom.test/ms.tgz"), verdaccio, RuleUnsupportedSources},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeProject(t, dir, PackageLockFile, lockJSON(t, 3, map[string]map[string]any{tc.key: tc.entry}))
			lf, err := CheckLockfile(dir, tc.policy)
			if tc.wantRule == "" {
				if err != nil {
					t.Fatalf("want accepted, got %v", err)
				}
				if _, ok := lf.Lookup(tc.key); !ok {
					t.Fatalf("accepted lockfile lacks %s", tc.key)
				}
				return
			}
			if !errors.Is(err, ErrLockfileRejected) {
				t.Fatalf("want ErrLockfileRejected, got %v", err)
			}
			var ge *GateError
			if !errors.As(err, &ge) {
				t.Fatalf("want *GateError, got %T", err)
			}
			if len(ge.Violations) != 1 || ge.Violations[0].Rule != tc.wantRule || ge.Violations[0].Path != tc.key {
				t.Fatalf("want one %s violation at %s, got %+v", tc.wantRule, tc.key, ge.Violations)
			}
		})
	}
}

func TestCheckLockfileListsEveryViolation(t *testing.T) {
	dir := t.TempDir()
	entries := map[string]map[string]any{
		"node_modules/good":       regEntry("good", "1.0.0"),
		"node_modules/evil-host":  with(regEntry("evil-host", "1.0.0"), "resolved", "https://evil.example/evil-host/-/evil-host-1.0.0.tgz"),
		"node_modules/no-sri":     with(regEntry("no-sri", "1.0.0"), "integrity", nil),
		"node_modules/confused":   with(regEntry("confused", "1.0.0"), "resolved", tarball(testRegistry, "other", "1.0.0")),
		"node_modules/from-git":   {"version": "1.0.0", "resolved": "git+https://github.com/x/y.git#abc"},
		"node_modules/../../etc":  regEntry("etc", "1.0.0"),
		"node_modules/both/wrong": regEntry("both", "1.0.0"),
	}
	writeProject(t, dir, PackageLockFile, lockJSON(t, 2, entries))
	_, err := CheckLockfile(dir, LockPolicy{Registries: []string{testRegistry}})
	var ge *GateError
	if !errors.As(err, &ge) {
		t.Fatalf("want *GateError, got %v", err)
	}
	want := map[string]string{
		"node_modules/evil-host":  RuleAllowedHost,
		"node_modules/no-sri":     RuleIntegrityMissing,
		"node_modules/confused":   RulePackageName,
		"node_modules/from-git":   RuleGitSource,
		"node_modules/../../etc":  RuleInvalidPath,
		"node_modules/both/wrong": RuleInvalidPath,
	}
	got := map[string]string{}
	for _, v := range ge.Violations {
		got[v.Path] = v.Rule
	}
	if len(ge.Violations) != len(want) {
		t.Errorf("want %d violations, got %d: %+v", len(want), len(ge.Violations), ge.Violations)
	}
	for path, rule := range want {
		if got[path] != rule {
			t.Errorf("%s: want rule %s, got %q", path, rule, got[path])
		}
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want)+1 {
		t.Errorf("want a header and one line per violation, got:\n%s", err)
	}
	for path := range want {
		if !strings.Contains(err.Error(), "\n  "+path+": ") {
			t.Errorf("error does not list %s:\n%s", path, err)
		}
	}
}

func TestCheckLockfileFixture(t *testing.T) {
	dir := fixtureDir(t)
	lf, err := CheckLockfile(dir, LockPolicy{Registries: []string{"https://registry.npmjs.org/"}})
	if err != nil {
		t.Fatalf("fixture against its own registry: %v", err)
	}
	if lf.File != PackageLockFile || lf.Version != 3 || len(lf.Packages) != 8 || lf.Root.Name != "cleanroom-supplychain-fixture" {
		t.Fatalf("unexpected parse: file=%s version=%d packages=%d root=%q", lf.File, lf.Version, len(lf.Packages), lf.Root.Name)
	}
	// The same lockfile against the internal registry only: every entry is
	// on a forbidden host, and every one is listed.
	_, err = CheckLockfile(dir, LockPolicy{Registries: []string{testRegistry}})
	var ge *GateError
	if !errors.As(err, &ge) || len(ge.Violations) != len(lf.Packages) {
		t.Fatalf("want %d allowed-host violations, got %v", len(lf.Packages), err)
	}
	for _, v := range ge.Violations {
		if v.Rule != RuleAllowedHost {
			t.Errorf("%s: rule %s", v.Path, v.Rule)
		}
	}
}

func TestCheckLockfileFailures(t *testing.T) {
	good := lockJSON(t, 3, map[string]map[string]any{"node_modules/ms": regEntry("ms", "2.1.3")})
	policy := LockPolicy{Registries: []string{testRegistry}}
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		policy  LockPolicy
		wantErr error
		wantMsg string
	}{
		{"no lockfile is refused with the npm ci reason", func(t *testing.T, dir string) {
			writeProject(t, dir, "", nil)
		}, policy, ErrNoLockfile, "never npm install"},
		{"lockfile v1 asks for npm 7+", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, []byte(`{"name":"proj","lockfileVersion":1,"dependencies":{"ms":{"version":"2.1.3"}}}`))
		}, policy, ErrUnsupportedLockfile, "regenerate the lockfile with npm 7+"},
		{"lockfile without a version is treated as v1", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, []byte(`{"name":"proj","dependencies":{}}`))
		}, policy, ErrUnsupportedLockfile, "npm 7+"},
		{"lockfile v4 is unsupported", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, lockJSON(t, 4, nil))
		}, policy, ErrUnsupportedLockfile, "lockfileVersion 4"},
		{"lockfile v2 is accepted", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, lockJSON(t, 2, map[string]map[string]any{"node_modules/ms": regEntry("ms", "2.1.3")}))
		}, policy, nil, ""},
		{"malformed JSON is a clear error", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, []byte(`{"lockfileVersion":3,"packages":{`))
		}, policy, ErrMalformedLockfile, "decoding JSON"},
		{"wrongly typed field is a clear error", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, []byte(`{"lockfileVersion":3,"packages":{"node_modules/ms":{"resolved":42}}}`))
		}, policy, ErrMalformedLockfile, "decoding JSON"},
		{"missing packages section is malformed", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, []byte(`{"lockfileVersion":3}`))
		}, policy, ErrMalformedLockfile, "packages"},
		{"missing package.json is refused", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, PackageLockFile), good, 0o644); err != nil {
				t.Fatal(err)
			}
		}, policy, ErrPackageJSON, "package.json"},
		{"invalid package.json is refused", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, good)
			if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(`["not","an","object"]`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, policy, ErrPackageJSON, "decoding package.json"},
		{"lockfile over the policy cap is refused", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, good)
		}, LockPolicy{Registries: policy.Registries, MaxLockfileBytes: int64(len(good) - 1)}, ErrLockfileTooLarge, "larger than"},
		{"lockfile over the default 64 MiB cap is refused", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, good)
			// A sparse file: 64 MiB + 1 of zeros without using the disk.
			if err := os.Truncate(filepath.Join(dir, PackageLockFile), DefaultMaxLockfileBytes+1); err != nil {
				t.Fatal(err)
			}
		}, policy, ErrLockfileTooLarge, "67108864"},
		{"symlinked lockfile is refused", func(t *testing.T, dir string) {
			writeProject(t, dir, "real.json", good)
			if err := os.Symlink("real.json", filepath.Join(dir, PackageLockFile)); err != nil {
				t.Fatal(err)
			}
		}, policy, nil, "not a regular file"},
		{"shrinkwrap takes precedence over package-lock", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, good)
			bad := lockJSON(t, 3, map[string]map[string]any{"node_modules/ms": with(regEntry("ms", "2.1.3"), "integrity", nil)})
			if err := os.WriteFile(filepath.Join(dir, ShrinkwrapFile), bad, 0o644); err != nil {
				t.Fatal(err)
			}
		}, policy, ErrLockfileRejected, ShrinkwrapFile},
		{"unparseable registry in the policy is an operator error", func(t *testing.T, dir string) {
			writeProject(t, dir, PackageLockFile, good)
		}, LockPolicy{Registries: []string{"registry.cleanroom.test:4873"}}, ErrInvalidPolicy, "not an http(s) URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			_, err := CheckLockfile(dir, tc.policy)
			if tc.wantErr == nil && tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("want an error, got nil")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("want errors.Is(%v), got %v", tc.wantErr, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("want message containing %q, got %v", tc.wantMsg, err)
			}
		})
	}
}

func TestCheckLockfileAcceptsLockfileWithoutResolved(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(fixtureDir(t), PackageLockFile))
	if err != nil {
		t.Fatal(err)
	}
	lf, err := ParseLockfile(data)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]map[string]any{}
	for _, p := range lf.Packages {
		entries[p.Path] = map[string]any{"version": p.Version, "integrity": p.Integrity}
	}
	dir := t.TempDir()
	writeProject(t, dir, PackageLockFile, lockJSON(t, 3, entries))
	if _, err := CheckLockfile(dir, LockPolicy{Registries: []string{testRegistry}}); err != nil {
		t.Fatalf("lockfile without resolved URLs: %v", err)
	}
}
