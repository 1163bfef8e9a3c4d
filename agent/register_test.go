package agent_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/agent"
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
