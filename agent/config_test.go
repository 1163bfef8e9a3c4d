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
