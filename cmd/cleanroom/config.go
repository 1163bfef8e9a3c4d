package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/cleanroom-ci/cleanroom/api"
)

// cliConfig is ~/.config/cleanroom/cli.yaml: where the coordinator is and
// which token to use, so scripts need neither flags nor environment.
type cliConfig struct {
	URL       string `yaml:"url"`
	Token     string `yaml:"token,omitempty"`
	TokenFile string `yaml:"token_file,omitempty"`
	CAFile    string `yaml:"ca_file,omitempty"`
}

// clientFlags are the connection flags shared by the client commands.
type clientFlags struct {
	url, token, tokenFile, caFile, config string
	json                                  bool
}

// addClientFlags registers --url, --token, --token-file, --ca-file, --cli-config
// and --json on cmd. Precedence: flag, then environment (CLEANROOM_URL,
// CLEANROOM_TOKEN), then the config file.
func addClientFlags(cmd *cobra.Command, withJSON bool) *clientFlags {
	f := &clientFlags{}
	fs := cmd.Flags()
	fs.StringVar(&f.url, "url", "", "coordinator URL (env CLEANROOM_URL, or url: in the CLI config)")
	fs.StringVar(&f.token, "token", "", "admin, submit or audit token (env CLEANROOM_TOKEN, or token:/token_file: in the CLI config)")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the token from this file")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA bundle to trust for the coordinator's TLS certificate")
	fs.StringVar(&f.config, "cli-config", defaultCLIConfig(), "CLI config file (YAML: url, token, token_file, ca_file)")
	if withJSON {
		fs.BoolVar(&f.json, "json", false, "print JSON instead of a table (for scripts)")
	}
	return f
}

func defaultCLIConfig() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "cleanroom", "cli.yaml")
}

// client resolves the connection settings and builds an API client.
func (f *clientFlags) client() (*api.Client, error) {
	var fc cliConfig
	if f.config != "" {
		b, err := os.ReadFile(f.config)
		switch {
		case err == nil:
			if err := yaml.Unmarshal(b, &fc); err != nil {
				return nil, fmt.Errorf("parsing CLI config %s: %w", f.config, err)
			}
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("reading CLI config: %w", err)
		}
	}
	url := firstNonEmpty(f.url, os.Getenv("CLEANROOM_URL"), fc.URL)
	if url == "" {
		return nil, errors.New("no coordinator URL: use --url, CLEANROOM_URL or url: in " + f.config)
	}
	token := firstNonEmpty(f.token, os.Getenv("CLEANROOM_TOKEN"), fc.Token)
	if token == "" {
		if tf := firstNonEmpty(f.tokenFile, fc.TokenFile); tf != "" {
			b, err := os.ReadFile(tf)
			if err != nil {
				return nil, fmt.Errorf("reading token file: %w", err)
			}
			token = strings.TrimSpace(string(b))
		}
	}
	cl := api.NewClient(url, token)
	if ca := firstNonEmpty(f.caFile, fc.CAFile); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("reading CA file %s: no certificates", ca)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		cl.HTTP = &http.Client{Transport: tr}
	}
	return cl, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// printJSON writes v as indented JSON to stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
