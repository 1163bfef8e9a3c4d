package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/agent"
)

const baseConfig = `coordinator: https://ci.example
runner_id: r-1
runner_token: t
name: a1
signing_key: key.pem
data_dir: data
`

func loadConfig(t *testing.T, yaml string) (*agent.Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte(baseConfig+yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return agent.LoadConfig(p)
}

// The git section: defaults, a CA path relative to the config, and the
// problems named by field.
func TestConfigGitSection(t *testing.T) {
	c, err := loadConfig(t, "git:\n  hosts: [\"git.corp.example:443\"]\n  ca_file: ca.pem\n  max_bytes: 256MiB\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Git.MaxBytes != 256<<20 || c.Git.MaxFiles != agent.DefaultGitMaxFiles || !filepath.IsAbs(c.Git.CAFile) {
		t.Errorf("git section %+v", c.Git)
	}
	if c, err := loadConfig(t, ""); err != nil || len(c.Git.Hosts) != 0 || c.Git.MaxBytes != agent.DefaultGitMaxBytes {
		t.Errorf("no git section: %+v, %v", c, err)
	}
	for yaml, field := range map[string]string{
		"git:\n  hosts: [\"https://git.corp.example\"]\n":                       "git.hosts[0]",
		"git:\n  hosts: [\"git.corp.example\"]\n":                               "git.hosts[0]",
		"git:\n  hosts: [\"git.corp.example:443\"]\nnetwork:\n  mode: direct\n": "git.hosts: git hosts are reached through forward mode",
		"git:\n  max_files: -1\n":                                               "git.max_files",
		"git:\n  ssh_key: /root/.ssh/id_ed25519\n":                              "field ssh_key not found",
	} {
		if _, err := loadConfig(t, yaml); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: got %v, want an error naming %s", yaml, err, field)
		}
	}
}

// Several coordinators: a list, or a comma-separated coordinator; the
// single URL keeps working, and each URL is checked.
func TestConfigAcceptsSeveralCoordinators(t *testing.T) {
	write := func(t *testing.T, yaml string) (*agent.Config, error) {
		t.Helper()
		p := filepath.Join(t.TempDir(), "agent.yaml")
		if err := os.WriteFile(p, []byte(strings.Replace(baseConfig, "coordinator: https://ci.example\n", yaml, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		return agent.LoadConfig(p)
	}
	for yaml, want := range map[string]string{
		"coordinator: https://ci.example\n":                                        "https://ci.example",
		"coordinator: https://a.example:7070/, https://b.example:7070\n":           "https://a.example:7070,https://b.example:7070",
		"coordinators: [\"https://a.example:7070\", \"https://b.example:7070\"]\n": "https://a.example:7070,https://b.example:7070",
	} {
		c, err := write(t, yaml)
		if err != nil {
			t.Fatalf("%q: %v", yaml, err)
		}
		if got := strings.Join(c.URLs(), ","); got != want {
			t.Errorf("%q: URLs %s, want %s", yaml, got, want)
		}
	}
	for yaml, field := range map[string]string{
		"":                                       "coordinator: required",
		"coordinator: https://a, ftp://b\n":      "coordinator[1]",
		"coordinators: [\"https://a\", \"b\"]\n": "coordinators[1]",
		"coordinator: https://a\ncoordinators: [\"https://b\"]\n": "coordinators: set coordinator or coordinators, not both",
	} {
		if _, err := write(t, yaml); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: got %v, want an error naming %s", yaml, err, field)
		}
	}
}

// The gateway's knobs: defaults (cache under the data dir, 10 GiB, the
// public registry as alias, sha1 refused, no cooldown), paths relative to
// the config, and the problems named by field.
func TestConfigGatewaySection(t *testing.T) {
	c, err := loadConfig(t, "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Gateway.Port != agent.DefaultGatewayPort || c.Gateway.CacheMaxBytes != 10<<30 || c.Gateway.CacheDir != filepath.Join(c.DataDir, "gateway-cache") ||
		strings.Join(c.RegistryAliases, ",") != "registry.npmjs.org" || c.AllowSHA1 || c.MinReleaseAge != 0 {
		t.Errorf("defaults: gateway %+v aliases %v sha1 %v age %v", c.Gateway, c.RegistryAliases, c.AllowSHA1, c.MinReleaseAge)
	}
	c, err = loadConfig(t, "registries:\n  - url: http://npm.corp:4873/\n    scopes: [\"@acme\"]\n    token_file: acme.token\ngateway:\n  cache_dir: cache\n  cache_max_bytes: 1GiB\nregistry_aliases: []\nallow_sha1: true\nmin_release_age: 72h\n")
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(c.Registries[0].TokenFile) || !filepath.IsAbs(c.Gateway.CacheDir) || c.Gateway.CacheMaxBytes != 1<<30 ||
		len(c.RegistryAliases) != 0 || !c.AllowSHA1 || c.MinReleaseAge.D().Hours() != 72 {
		t.Errorf("set: %+v %+v aliases %v", c.Registries, c.Gateway, c.RegistryAliases)
	}
	if got := strings.Join(c.GateRegistries(), ","); got != "http://npm.corp:4873/" {
		t.Errorf("gate registries without aliases = %s", got)
	}
	if c, _ := loadConfig(t, "network:\n  registries: [\"http://r:4873/\"]\n"); strings.Join(c.GateRegistries(), ",") != "http://r:4873/,https://registry.npmjs.org/" {
		t.Errorf("gate registries = %v, want the registry and the default alias", c.GateRegistries())
	}
	for yaml, field := range map[string]string{
		"registries:\n  - url: npm.corp\n":                                                 "registries[0].url",
		"registries:\n  - url: http://npm.corp/\n    token_secret: A\n    token_file: f\n": "registries[0].token_file",
		"registries:\n  - url: http://npm.corp/\n    scopes: [acme]\n":                     "registries[0].scopes[0]",
		"gateway:\n  port: 70000\n":                                                        "gateway.port",
		"gateway:\n  cache_max_bytes: -1\n":                                                "parsing size",
		"registry_aliases: [\"https://registry.npmjs.org/\"]\n":                            "registry_aliases[0]",
		"min_release_age: -1h\n":                                                           "min_release_age",
	} {
		if _, err := loadConfig(t, yaml); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: got %v, want an error naming %s", yaml, err, field)
		}
	}
}

// The sandbox.userns section: auto by default, and the problems named by
// field.
func TestConfigUserNSSection(t *testing.T) {
	c, err := loadConfig(t, "")
	if err != nil || c.Sandbox.UserNS.Mode != agent.UserNSAuto || c.Sandbox.UserNS.Base != 0 {
		t.Fatalf("no sandbox section: %+v, %v", c.Sandbox, err)
	}
	if c, err := loadConfig(t, "concurrency: 4\nsandbox:\n  userns:\n    mode: on\n    base: 200000000\n"); err != nil || c.Sandbox.UserNS.Mode != agent.UserNSOn || c.Sandbox.UserNS.Base != 200000000 {
		t.Errorf("userns section: %+v, %v", c.Sandbox, err)
	}
	for yaml, field := range map[string]string{
		"sandbox:\n  userns:\n    mode: yes\n":                        "sandbox.userns.mode",
		"sandbox:\n  userns:\n    base: 1000\n":                       "sandbox.userns.base",
		"concurrency: 2\nsandbox:\n  userns:\n    base: 4294901760\n": "sandbox.userns.base",
	} {
		if _, err := loadConfig(t, yaml); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%q: got %v, want an error naming %s", yaml, err, field)
		}
	}
}
