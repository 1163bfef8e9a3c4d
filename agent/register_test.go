package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

func TestSigningKeyRoundTripsAndABadFileIsNamed(t *testing.T) {
	dir := t.TempDir()
	_, priv := supplychain.GenerateKey()
	path := filepath.Join(dir, "agent.key")
	if err := agent.SaveSigningKey(path, priv); err != nil {
		t.Fatal(err)
	}
	got, err := agent.LoadSigningKey(path)
	if err != nil || !got.Equal(priv) {
		t.Fatalf("LoadSigningKey = %v, want the saved key", err)
	}
	pubPEM, err := os.ReadFile(filepath.Join(dir, "agent.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := supplychain.ParsePublicKeyPEM(pubPEM); err != nil || !pub.Equal(priv.Public()) {
		t.Fatalf("agent.pub = %v, want the key's public half", err)
	}

	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, pubPEM, 0o600)
	_, err = agent.LoadSigningKey(bad)
	if !errors.Is(err, supplychain.ErrBadKey) || !strings.Contains(err.Error(), bad) {
		t.Fatalf("LoadSigningKey(public key) = %v, want ErrBadKey naming %s", err, bad)
	}
}

// registerServer answers /v1/runners/register as a coordinator would and
// counts the calls (each one spends a registration token).
func registerServer(t *testing.T) (string, *int) {
	t.Helper()
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(api.RegisterResponse{RunnerID: "r-1", RunnerToken: "crr_runnertoken0123456789"})
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &calls
}

// TestRegisterRefusesABadFieldBeforeSpendingTheToken: `--registry
// npm.internal` (not a URL) is refused, naming the field, without calling
// the coordinator.
func TestRegisterRefusesABadFieldBeforeSpendingTheToken(t *testing.T) {
	url, calls := registerServer(t)
	for name, o := range map[string]agent.RegisterOptions{
		"registry not a URL": {Registries: []string{"npm.internal"}},
		"bad label":          {Labels: map[string]string{"bad key!": "x"}},
		"host not an IP":     {Registries: []string{"http://npm.internal/"}, Hosts: map[string]string{"npm.internal": "nope"}},
	} {
		o.URL, o.Token, o.Name = url, "crg_x", "build-01"
		o.ConfigPath = filepath.Join(t.TempDir(), "agent.yaml")
		_, err := agent.Register(context.Background(), o)
		if err == nil {
			t.Errorf("%s: registered", name)
		}
		if *calls != 0 {
			t.Fatalf("%s: the coordinator was called before the config was validated", name)
		}
		if _, serr := os.Stat(o.ConfigPath); serr == nil {
			t.Errorf("%s: a config was written", name)
		}
	}
}

// TestRegisteredConfigLoads: what register writes, `agent run` accepts.
func TestRegisteredConfigLoads(t *testing.T) {
	url, calls := registerServer(t)
	path := filepath.Join(t.TempDir(), "etc", "agent.yaml")
	_, err := agent.Register(context.Background(), agent.RegisterOptions{URL: url, Token: "crg_x", Name: "build-01",
		ConfigPath: path, Registries: []string{"http://registry.cleanroom.test:4873/"},
		Hosts: map[string]string{"registry.cleanroom.test": "10.231.254.2"}, Labels: map[string]string{"os": "linux"}})
	if err != nil {
		t.Fatal(err)
	}
	if *calls != 1 {
		t.Fatalf("%d register calls", *calls)
	}
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		t.Fatalf("agent run would refuse the registered config: %v", err)
	}
	if cfg.RunnerID != "r-1" || cfg.Network.Hosts["registry.cleanroom.test"] != "10.231.254.2" || len(cfg.Network.Registries) != 1 {
		t.Errorf("loaded %+v", cfg)
	}
}
