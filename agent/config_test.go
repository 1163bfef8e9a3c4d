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
