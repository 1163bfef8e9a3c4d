package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/supplychain"
)

// RegisterOptions are the inputs of `cleanroom agent register`.
type RegisterOptions struct {
	URL         string
	Token       string // registration token
	Name        string
	Labels      map[string]string
	Concurrency int
	// ConfigPath is where the config is written (0600); the signing key goes
	// next to it as agent.key (0600) and agent.pub.
	ConfigPath string
	// DataDir defaults to a "data" folder next to the config.
	DataDir string
	CAFile  string
	// Registries are the internal npm registry URLs builds may install from
	// (network.registries); more of the policy can be edited in the config.
	Registries []string
	// Hosts are static name → IP answers (network.hosts), for a registry
	// whose name DNS does not know.
	Hosts map[string]string
	// Force overwrites an existing config and key.
	Force bool
	// HTTP overrides the client (tests).
	HTTP *http.Client
}

// ErrConfigExists: registering would overwrite a config (use Force).
var ErrConfigExists = errors.New("agent config already exists")

// Config is the config registering with o would write, less the runner id
// and token, validated as `agent run` will validate it: every mistake is
// reported before the registration token is spent.
func (o RegisterOptions) Config() (*Config, error) {
	dir := filepath.Dir(o.ConfigPath)
	cfg := &Config{Coordinator: o.URL, CAFile: o.CAFile, Name: o.Name, Labels: o.Labels,
		SigningKey: filepath.Join(dir, "agent.key"), DataDir: o.DataDir, Concurrency: o.Concurrency}
	if urls := api.SplitURLs(o.URL); len(urls) > 1 {
		cfg.Coordinator, cfg.Coordinators = "", urls
	}
	cfg.Network.Registries = o.Registries
	if len(o.Hosts) > 0 {
		cfg.Network.Hosts = o.Hosts
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(dir, "data")
	}
	cfg.SetDefaults()
	// Placeholders for what the coordinator hands out, so that Validate
	// judges everything else.
	probe := *cfg
	probe.RunnerID, probe.RunnerToken = "pending", "pending"
	if err := probe.Validate(); err != nil {
		return nil, fmt.Errorf("validating the agent config to write: %w", err)
	}
	return cfg, nil
}

// Register generates the agent's ed25519 signing key, exchanges the
// registration token for a runner token (sending the public key), and writes
// the key and the config. The private key never leaves the host.
func Register(ctx context.Context, o RegisterOptions) (_ *Config, retErr error) {
	if !o.Force {
		if _, err := os.Stat(o.ConfigPath); err == nil {
			return nil, fmt.Errorf("registering into %s: %w", o.ConfigPath, ErrConfigExists)
		}
	}
	cfg, err := o.Config()
	if err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating signing key: %w", err)
	}
	cl, err := newClient(cfg, "")
	if err != nil {
		return nil, err
	}
	if o.HTTP != nil {
		cl.HTTP = o.HTTP
	}
	resp, err := cl.Register(ctx, api.RegisterRequest{Token: o.Token, Name: o.Name, Labels: o.Labels,
		Concurrency: cfg.Concurrency, PublicKey: pub})
	if err != nil {
		return nil, fmt.Errorf("registering with %s: %w", o.URL, err)
	}
	cfg.RunnerID, cfg.RunnerToken = resp.RunnerID, resp.RunnerToken
	if err := SaveSigningKey(cfg.SigningKey, priv); err != nil {
		return nil, err
	}
	if err := cfg.Save(o.ConfigPath); err != nil {
		return nil, err
	}
	return cfg, nil
}

// SaveSigningKey writes priv as PKCS#8 PEM (0600) and its public half as
// PKIX PEM next to it (path + ".pub" with the extension replaced).
func SaveSigningKey(path string, priv ed25519.PrivateKey) error {
	privPEM, err := supplychain.EncodePrivateKeyPEM(priv)
	if err != nil {
		return fmt.Errorf("encoding signing key: %w", err)
	}
	if err := writeFileAtomic(path, privPEM, 0o600); err != nil {
		return err
	}
	pubPEM, err := supplychain.EncodePublicKeyPEM(priv.Public().(ed25519.PublicKey))
	if err != nil {
		return fmt.Errorf("encoding public key: %w", err)
	}
	pubPath := path[:len(path)-len(filepath.Ext(path))] + ".pub"
	return writeFileAtomic(pubPath, pubPEM, 0o644)
}

// LoadSigningKey reads the agent's ed25519 private key (PKCS#8 PEM).
func LoadSigningKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	priv, err := supplychain.ParsePrivateKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("loading signing key %s: %w", path, err)
	}
	return priv, nil
}

// newClient builds an API client for the config (with its CA, if any).
func newClient(cfg *Config, token string) (*api.Client, error) {
	cl := api.NewClient(strings.Join(cfg.URLs(), ","), token)
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading CA file %s: no certificates", cfg.CAFile)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		cl.HTTP = &http.Client{Transport: tr}
	}
	return cl, nil
}
