package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestResolvePrecedence: each setting comes from its flag, else the
// environment, else the config file, and says where it came from.
func TestResolvePrecedence(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := writeCLIConfig(cfgPath, cliConfig{URL: "http://file:1", Token: "crs_fromfile0123456789", CAFile: "/file/ca.pem"}); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokFile, []byte("crs_fromtokenfile0123456\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                 string
		flags                clientFlags
		envURL, envToken     string
		wantURL, wantURLFrom string
		wantTok, wantTokFrom string
	}{
		{name: "file only", wantURL: "http://file:1", wantURLFrom: "config file", wantTok: "crs_fromfile0123456789", wantTokFrom: "config file"},
		{name: "env beats file", envURL: "http://env:2", envToken: "crs_fromenv", wantURL: "http://env:2", wantURLFrom: "env CLEANROOM_URL", wantTok: "crs_fromenv", wantTokFrom: "env CLEANROOM_TOKEN"},
		{name: "flag beats env", flags: clientFlags{url: "http://flag:3", token: "crs_fromflag"}, envURL: "http://env:2", envToken: "crs_fromenv",
			wantURL: "http://flag:3", wantURLFrom: "flag --url", wantTok: "crs_fromflag", wantTokFrom: "flag --token"},
		{name: "token file flag beats env", flags: clientFlags{tokenFile: tokFile}, envToken: "crs_fromenv",
			wantURL: "http://file:1", wantURLFrom: "config file", wantTok: "crs_fromtokenfile0123456", wantTokFrom: "flag --token-file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CLEANROOM_URL", tc.envURL)
			t.Setenv("CLEANROOM_TOKEN", tc.envToken)
			f := tc.flags
			f.config = cfgPath
			c, err := f.resolve()
			if err != nil {
				t.Fatal(err)
			}
			if c.URL.Value != tc.wantURL || !strings.HasPrefix(c.URL.Source, tc.wantURLFrom) {
				t.Errorf("url = %q from %q, want %q from %q", c.URL.Value, c.URL.Source, tc.wantURL, tc.wantURLFrom)
			}
			if c.Token.Value != tc.wantTok || !strings.HasPrefix(c.Token.Source, tc.wantTokFrom) {
				t.Errorf("token = %q from %q, want %q from %q", c.Token.Value, c.Token.Source, tc.wantTok, tc.wantTokFrom)
			}
		})
	}
}

// TestResolveNothingConfigured: no flag, no env, no file: the error says
// how to configure the CLI.
func TestResolveNothingConfigured(t *testing.T) {
	t.Setenv("CLEANROOM_URL", "")
	t.Setenv("CLEANROOM_TOKEN", "")
	f := clientFlags{config: filepath.Join(t.TempDir(), "missing.yaml")}
	_, err := f.resolve()
	if err == nil || !strings.Contains(err.Error(), "cleanroom login --url") || !strings.Contains(err.Error(), "CLEANROOM_URL") {
		t.Fatalf("resolve = %v, want the no-coordinator hint", err)
	}
}

func TestMaskTokenNeverShowsTheToken(t *testing.T) {
	for _, tok := range []string{"cra_0123456789abcdef0123456789abcdef", "short", "crs_abcdefgh", "x"} {
		m := maskToken(tok)
		if len(tok) > 0 && strings.Contains(m, tok) || len(strings.TrimSuffix(m, "…")) > len(tok)/2 {
			t.Errorf("maskToken(%q) = %q shows too much", tok, m)
		}
	}
}

// TestLoginThenClientCommands: login against a real coordinator writes the
// config (0600 in a 0700 folder); commands then work with no flags or env,
// and `config` names the file and never prints the token.
func TestLoginThenClientCommands(t *testing.T) {
	url, admin := startCoordinator(t)
	xdg := t.TempDir()
	run := func(stdin string, args ...string) (string, string, error) {
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = []string{"CLEANROOM_TEST_CLI=1", "XDG_CONFIG_HOME=" + xdg, "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	if _, stderr, err := run("", "jobs"); err == nil || !strings.Contains(stderr, "no coordinator configured: run `cleanroom login") {
		t.Fatalf("jobs before login: err %v, stderr %q", err, stderr)
	}
	if _, stderr, err := run("crs_wrongwrongwrongwrong\n", "login", "--url", url, "--token-file", "-"); err == nil {
		t.Fatalf("login with a wrong token succeeded: %s", stderr)
	}
	if _, err := os.Stat(filepath.Join(xdg, "cleanroom", "config.yaml")); err == nil {
		t.Fatal("a refused login wrote the config")
	}
	if out, stderr, err := run(admin+"\n", "login", "--url", url, "--token-file", "-"); err != nil {
		t.Fatalf("login: %v: %s", err, stderr)
	} else if !strings.Contains(out, "logged in to "+url) {
		t.Errorf("login said %q", out)
	}
	cfg := filepath.Join(xdg, "cleanroom", "config.yaml")
	for path, want := range map[string]os.FileMode{cfg: 0o600, filepath.Dir(cfg): 0o700} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	if _, stderr, err := run("", "jobs"); err != nil {
		t.Fatalf("jobs after login: %v: %s", err, stderr)
	}
	out, stderr, err := run("", "config")
	if err != nil {
		t.Fatalf("config: %v: %s", err, stderr)
	}
	if strings.Contains(out, admin) || !strings.Contains(out, "url:     "+url+"  (from config file "+cfg+")") {
		t.Errorf("config printed:\n%s", out)
	}
}
