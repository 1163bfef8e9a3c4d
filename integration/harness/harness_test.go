package harness

import (
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// Extra agent config keys land at their dotted path, next to what the file
// already holds, creating the maps on the way.
func TestPatchYAMLSetsDottedKeys(t *testing.T) {
	p := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(p, []byte("name: a\nnetwork:\n  mode: forward\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := patchYAML(p, map[string]any{"gateway.cache_dir": "/x", "network.masquerade": true}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Name    string
		Network struct {
			Mode       string
			Masquerade bool
		}
		Gateway struct {
			CacheDir string `yaml:"cache_dir"`
		}
	}
	if err := yaml.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "a" || got.Network.Mode != "forward" || !got.Network.Masquerade || got.Gateway.CacheDir != "/x" {
		t.Errorf("patched config = %+v, from:\n%s", got, b)
	}
}
