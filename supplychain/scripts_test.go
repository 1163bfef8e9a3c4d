package supplychain

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

func scriptLockfile(t *testing.T) *Lockfile {
	t.Helper()
	lf, err := ParseLockfile(lockJSON(t, 3, map[string]map[string]any{
		"node_modules/esbuild":                      with(regEntry("esbuild", "0.20.0"), "hasInstallScript", true),
		"node_modules/@swc/core":                    with(regEntry("@swc/core", "1.4.0"), "hasInstallScript", true),
		"node_modules/evil-postinstall":             with(regEntry("evil-postinstall", "1.0.0"), "hasInstallScript", true),
		"node_modules/x/node_modules/esbuild":       with(regEntry("esbuild", "0.19.0"), "hasInstallScript", true),
		"node_modules/plain":                        regEntry("plain", "1.0.0"),
		"node_modules/linked":                       {"resolved": "packages/linked", "link": true, "hasInstallScript": true},
		"node_modules/x":                            regEntry("x", "1.0.0"),
		"node_modules/x/node_modules/plain-nested":  regEntry("plain-nested", "1.0.0"),
		"node_modules/y/node_modules/evil-postinst": with(regEntry("evil-postinst", "1.0.0"), "hasInstallScript", true),
	}))
	if err != nil {
		t.Fatal(err)
	}
	return lf
}

func paths(ps []Package) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

func TestPlanScripts(t *testing.T) {
	lf := scriptLockfile(t)
	all := []string{
		"node_modules/@swc/core", "node_modules/esbuild", "node_modules/evil-postinstall",
		"node_modules/x/node_modules/esbuild", "node_modules/y/node_modules/evil-postinst",
	}
	if got := paths(lf.ScriptPackages()); !reflect.DeepEqual(got, all) {
		t.Fatalf("ScriptPackages = %v, want %v", got, all)
	}
	tests := []struct {
		name        string
		policy      ScriptPolicy
		wantInstall []string
		wantRebuild []string
		wantAllowed []string
		wantBlocked []string
	}{
		{"default runs no scripts and reports them all", ScriptPolicy{},
			[]string{"npm", "ci", "--ignore-scripts"}, nil, nil, all},
		{"allow-all runs plain npm ci", ScriptPolicy{AllowAll: true},
			[]string{"npm", "ci"}, nil, all, nil},
		{"allowed names are rebuilt once each, others reported", ScriptPolicy{Allow: []string{"esbuild", "@swc/core", "not-installed"}},
			[]string{"npm", "ci", "--ignore-scripts"},
			[]string{"npm", "rebuild", "--ignore-scripts=false", "--foreground-scripts", "@swc/core", "esbuild"},
			[]string{"node_modules/@swc/core", "node_modules/esbuild", "node_modules/x/node_modules/esbuild"},
			[]string{"node_modules/evil-postinstall", "node_modules/y/node_modules/evil-postinst"}},
		{"allowing a package without scripts rebuilds nothing", ScriptPolicy{Allow: []string{"plain"}},
			[]string{"npm", "ci", "--ignore-scripts"}, nil, nil, all},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plan := PlanScripts(lf, tc.policy)
			if !reflect.DeepEqual(plan.Install, tc.wantInstall) {
				t.Errorf("Install = %q, want %q", plan.Install, tc.wantInstall)
			}
			if !reflect.DeepEqual(plan.Rebuild, tc.wantRebuild) {
				t.Errorf("Rebuild = %q, want %q", plan.Rebuild, tc.wantRebuild)
			}
			if got := paths(plan.Allowed); !reflect.DeepEqual(got, tc.wantAllowed) {
				t.Errorf("Allowed = %v, want %v", got, tc.wantAllowed)
			}
			if got := paths(plan.Blocked); !reflect.DeepEqual(got, tc.wantBlocked) {
				t.Errorf("Blocked = %v, want %v", got, tc.wantBlocked)
			}
		})
	}
}

// writeScriptPackage writes an npm tarball whose preinstall, install and
// postinstall scripts append to $INIT_CWD/<name>.log.
func writeScriptPackage(t *testing.T, path, name string) {
	t.Helper()
	manifest := fmt.Sprintf(`{"name":%q,"version":"1.0.0","scripts":{`+
		`"preinstall":"echo preinstall >> \"$INIT_CWD/%[1]s.log\"",`+
		`"install":"echo install >> \"$INIT_CWD/%[1]s.log\"",`+
		`"postinstall":"echo postinstall >> \"$INIT_CWD/%[1]s.log\""}}`, name)
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	if err := tw.WriteHeader(&tar.Header{Name: "package/package.json", Mode: 0o644, Size: int64(len(manifest)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(manifest)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestScriptPlanRunsOnlyAllowedScriptsWithNpm runs the plan's argv with the
// host's npm (local tarballs, no network): the install runs no script, the
// rebuild runs preinstall, install and postinstall of the allowed package
// only.
func TestScriptPlanRunsOnlyAllowedScriptsWithNpm(t *testing.T) {
	testutil.RequiresCommands(t, "npm")
	dir := t.TempDir()
	home := t.TempDir()
	empty := filepath.Join(home, "empty.npmrc")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	writeScriptPackage(t, filepath.Join(dir, "allowed-pkg.tgz"), "allowed-pkg")
	writeScriptPackage(t, filepath.Join(dir, "blocked-pkg.tgz"), "blocked-pkg")
	pj := `{"name":"scripts-proj","version":"1.0.0","dependencies":{"allowed-pkg":"file:allowed-pkg.tgz","blocked-pkg":"file:blocked-pkg.tgz"}}`
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(pj), 0o644); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"npm_config_userconfig="+empty,
		"npm_config_cache="+filepath.Join(home, "cache"),
		"npm_config_update_notifier=false", "npm_config_audit=false", "npm_config_fund=false",
	)
	run := func(argv ...string) {
		t.Helper()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	run("npm", "install", "--package-lock-only", "--ignore-scripts")
	lf, err := CheckLockfile(dir, LockPolicy{})
	if err != nil {
		t.Fatal(err)
	}
	plan := PlanScripts(lf, ScriptPolicy{Allow: []string{"allowed-pkg"}})
	if len(plan.Blocked) != 1 || plan.Blocked[0].Name != "blocked-pkg" {
		t.Fatalf("Blocked = %v, want blocked-pkg", paths(plan.Blocked))
	}

	run(plan.Install...)
	for _, name := range []string{"allowed-pkg", "blocked-pkg"} {
		if _, err := os.Stat(filepath.Join(dir, name+".log")); err == nil {
			t.Fatalf("%v ran %s's scripts", plan.Install, name)
		}
	}
	run(plan.Rebuild...)
	got, err := os.ReadFile(filepath.Join(dir, "allowed-pkg.log"))
	if err != nil {
		t.Fatalf("%v did not run allowed-pkg's scripts: %v", plan.Rebuild, err)
	}
	if want := "preinstall\ninstall\npostinstall\n"; string(got) != want {
		t.Errorf("allowed-pkg scripts ran as %q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "blocked-pkg.log")); err == nil {
		t.Errorf("%v ran blocked-pkg's scripts", plan.Rebuild)
	}
}
