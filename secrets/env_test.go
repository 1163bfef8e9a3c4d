package secrets

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestBuildEnvStartsFromScratch(t *testing.T) {
	t.Setenv("CLEANROOM_SENTINEL_LEAK", "sentinel-value-42")
	granted := []Secret{{Name: "NPM_READ_TOKEN", Scope: ScopeBuild, Value: []byte("tok-123456")}}
	env, err := BuildEnv(Base{RegistryURL: "http://10.231.1.1:4873/", Extra: map[string]string{"NODE_ENV": "production"}}, granted)
	if err != nil {
		t.Fatalf("BuildEnv: %v", err)
	}
	for _, kv := range env {
		if strings.Contains(kv, "CLEANROOM_SENTINEL_LEAK") || strings.Contains(kv, "sentinel-value-42") {
			t.Errorf("agent variable leaked into job env: %q", kv)
		}
	}
	// Nothing of the test process's own environment may appear either.
	for _, kv := range os.Environ() {
		if slices.Contains(env, kv) && !strings.HasPrefix(kv, "CI=") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "LANG=") && !strings.HasPrefix(kv, "HOME=") {
			t.Errorf("process variable %q copied into job env", kv)
		}
	}
	for _, want := range []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=/home/build",
		"CI=true",
		"npm_config_registry=http://10.231.1.1:4873/",
		"npm_config_cache=/tmp/.npm",
		"npm_config_update_notifier=false",
		"NODE_ENV=production",
		"NPM_READ_TOKEN=tok-123456",
	} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %q: %q", want, env)
		}
	}
	seen := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if seen[k] {
			t.Errorf("%s defined twice", k)
		}
		seen[k] = true
	}
}

func TestBuildEnvUsesGivenHomeCacheAndNPMRC(t *testing.T) {
	env, err := BuildEnv(Base{RegistryURL: "https://r.example", Home: "/work/home", NPMCache: "/work/.npm", NPMRC: "/work/.npmrc"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HOME=/work/home", "npm_config_cache=/work/.npm", "npm_config_userconfig=/work/.npmrc"} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %q: %q", want, env)
		}
	}
}

func TestBuildEnvRefuses(t *testing.T) {
	okBase := Base{RegistryURL: "http://registry.lab:4873"}
	build := func(name, value string) Secret { return Secret{Name: name, Scope: ScopeBuild, Value: []byte(value)} }
	cases := []struct {
		name     string
		base     Base
		granted  []Secret
		sentinel error
		mention  string
	}{
		{"secret overriding PATH", okBase, []Secret{build("PATH", "/evil")}, ErrEnvConflict, "PATH"},
		{"secret overriding HOME", okBase, []Secret{build("HOME", "/root")}, ErrEnvConflict, "HOME"},
		{"secret overriding npm registry in other case", okBase, []Secret{build("NPM_CONFIG_REGISTRY", "http://evil")}, ErrEnvConflict, "NPM_CONFIG_REGISTRY"},
		{"secret overriding an extra variable", Base{RegistryURL: okBase.RegistryURL, Extra: map[string]string{"NODE_ENV": "x"}}, []Secret{build("NODE_ENV", "y")}, ErrEnvConflict, "NODE_ENV"},
		{"secret granted twice", okBase, []Secret{build("TOK", "a"), build("TOK", "b")}, ErrEnvConflict, "TOK"},
		{"extra overriding CI", Base{RegistryURL: okBase.RegistryURL, Extra: map[string]string{"CI": "false"}}, nil, ErrEnvConflict, "CI"},
		{"deploy secret", okBase, []Secret{{Name: "DEPLOY", Scope: ScopeDeploy, Value: []byte("x")}}, ErrDeployScope, "DEPLOY"},
		{"agent credential", okBase, []Secret{{Name: "RUNNER", Scope: ScopeAgent, Value: []byte("x")}}, ErrAgentCredential, "RUNNER"},
		{"invalid name", okBase, []Secret{build("BAD=NAME", "x")}, ErrInvalid, "BAD=NAME"},
		{"NUL in value", okBase, []Secret{build("TOK", "a\x00b")}, ErrInvalid, "NUL"},
		{"secret setting the registry when it comes per step", Base{}, []Secret{build("npm_config_registry", "http://evil")}, ErrEnvConflict, "npm_config_registry"},
		{"secret turning host replacement off", Base{}, []Secret{build("NPM_CONFIG_REPLACE_REGISTRY_HOST", "never")}, ErrEnvConflict, "NPM_CONFIG_REPLACE_REGISTRY_HOST"},
		{"registry not http", Base{RegistryURL: "file:///etc"}, nil, ErrInvalid, "file:///etc"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env, err := BuildEnv(tc.base, tc.granted)
			if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("BuildEnv error = %v, want %v naming %s", err, tc.sentinel, tc.mention)
			}
			if env != nil {
				t.Errorf("refused env still returned: %q", env)
			}
		})
	}
}

// Without a registry (a gateway's comes per step) the environment names
// none; RegistryEnv is what a step adds.
func TestBuildEnvWithoutRegistryLeavesItToTheStep(t *testing.T) {
	env, err := BuildEnv(Base{NPMRC: "/run/cleanroom/npmrc"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range env {
		if strings.HasPrefix(strings.ToLower(kv), "npm_config_registry=") || strings.HasPrefix(kv, "npm_config_replace_registry_host=") {
			t.Errorf("env names a registry: %q", kv)
		}
	}
	want := [][2]string{{"npm_config_registry", "http://10.0.0.1:4873/"}, {"npm_config_replace_registry_host", "always"}}
	if got := RegistryEnv("http://10.0.0.1:4873/"); !slices.Equal(got, want) {
		t.Errorf("RegistryEnv = %q", got)
	}
}

func TestNPMRC(t *testing.T) {
	cases := []struct {
		name, url string
		scopes    []string
		want      string
	}{
		{"gateway address", "http://10.231.1.1:4873", nil, "registry=http://10.231.1.1:4873/\nreplace-registry-host=always\n"},
		{"scopes go to the gateway too", "http://10.231.1.1:4873/", []string{"@acme", "@corp"},
			"registry=http://10.231.1.1:4873/\nreplace-registry-host=always\n@acme:registry=http://10.231.1.1:4873/\n@corp:registry=http://10.231.1.1:4873/\n"},
		{"userinfo and query dropped", "http://u:p@r.lab:4873/?x=1", nil, "registry=http://r.lab:4873/\nreplace-registry-host=always\n"},
		{"registry URL with a line break", "http://r.lab/\n//evil/:_authToken=x", nil, ""},
		{"not a URL", "r.lab", nil, ""},
		{"scope injecting a line", "http://r.lab/", []string{"@a\n//evil/:_authToken=x"}, ""},
		{"scope without @", "http://r.lab/", []string{"acme"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := string(NPMRC(tc.url, tc.scopes))
			if got != tc.want {
				t.Errorf("NPMRC(%q) = %q, want %q", tc.url, got, tc.want)
			}
			if strings.Contains(got, "_auth") {
				t.Errorf("npmrc holds a credential: %q", got)
			}
		})
	}
}
