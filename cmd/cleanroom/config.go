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

// cliConfig is the CLI config file ($XDG_CONFIG_HOME/cleanroom/config.yaml,
// written by `cleanroom login`): where the coordinator is and which token to
// use, so people and scripts need neither flags nor environment.
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
// and --json on cmd. Every client command resolves its coordinator through
// clientFlags.resolve: flag, then environment (CLEANROOM_URL,
// CLEANROOM_TOKEN), then the config file.
func addClientFlags(cmd *cobra.Command, withJSON bool) *clientFlags {
	f := &clientFlags{}
	fs := cmd.Flags()
	fs.StringVar(&f.url, "url", "", "coordinator URL, or several separated by commas, tried in turn when one is unreachable (env CLEANROOM_URL, or url: in the CLI config)")
	fs.StringVar(&f.token, "token", "", "admin, submit or audit token (env CLEANROOM_TOKEN, or token:/token_file: in the CLI config)")
	fs.StringVar(&f.tokenFile, "token-file", "", "read the token from this file")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA bundle to trust for the coordinator's TLS certificate")
	fs.StringVar(&f.config, "cli-config", defaultCLIConfig(), "CLI config file written by `cleanroom login` (YAML: url, token, token_file, ca_file)")
	if withJSON {
		fs.BoolVar(&f.json, "json", false, "print JSON instead of a table (for scripts)")
	}
	return f
}

// defaultCLIConfig is $XDG_CONFIG_HOME/cleanroom/config.yaml, else
// ~/.config/cleanroom/config.yaml.
func defaultCLIConfig() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "cleanroom", "config.yaml")
}

// errNoCoordinator: no URL from any source.
var errNoCoordinator = errors.New("no coordinator configured: run `cleanroom login --url URL --token TOKEN` or set CLEANROOM_URL")

// setting is one resolved value and where it came from ("flag --url",
// "env CLEANROOM_URL", "config file …"); Source is empty when unset.
type setting struct {
	Value, Source string
	isFile        bool // Value names a file holding the token
}

// connection is what the client commands connect with.
type connection struct {
	URL, Token, CAFile setting
}

// readCLIConfig reads the CLI config at path; a missing file is an empty
// config.
func readCLIConfig(path string) (cliConfig, error) {
	var fc cliConfig
	if path == "" {
		return fc, nil
	}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fc, nil
	case err != nil:
		return fc, fmt.Errorf("reading CLI config: %w", err)
	}
	if err := yaml.Unmarshal(b, &fc); err != nil {
		return fc, fmt.Errorf("parsing CLI config %s: %w", path, err)
	}
	return fc, nil
}

// resolve finds the URL, token and CA bundle: each from its flag, else the
// environment, else the config file. A token file (flag or config) counts
// at the level it was given at.
func (f *clientFlags) resolve() (connection, error) {
	fc, err := readCLIConfig(f.config)
	if err != nil {
		return connection{}, err
	}
	file := "config file " + f.config
	var c connection
	c.URL = first(
		setting{Value: f.url, Source: "flag --url"},
		setting{Value: os.Getenv("CLEANROOM_URL"), Source: "env CLEANROOM_URL"},
		setting{Value: fc.URL, Source: file})
	if c.URL.Value == "" {
		return c, errNoCoordinator
	}
	c.Token = first(
		setting{Value: f.token, Source: "flag --token"},
		setting{f.tokenFile, "flag --token-file", true},
		setting{Value: os.Getenv("CLEANROOM_TOKEN"), Source: "env CLEANROOM_TOKEN"},
		setting{Value: fc.Token, Source: file},
		setting{fc.TokenFile, file + " (token_file:)", true})
	if c.Token.isFile {
		b, err := os.ReadFile(c.Token.Value)
		if err != nil {
			return c, fmt.Errorf("reading token file: %w", err)
		}
		c.Token.Source += " (" + c.Token.Value + ")"
		c.Token.Value = strings.TrimSpace(string(b))
	}
	c.CAFile = first(setting{Value: f.caFile, Source: "flag --ca-file"}, setting{Value: fc.CAFile, Source: file})
	return c, nil
}

func first(ss ...setting) setting {
	for _, s := range ss {
		if s.Value != "" {
			return s
		}
	}
	return setting{}
}

// client resolves the connection settings and builds an API client.
func (f *clientFlags) client() (*api.Client, error) {
	c, err := f.resolve()
	if err != nil {
		return nil, err
	}
	return c.client()
}

// client builds an API client for c (trusting its CA bundle, if any).
func (c connection) client() (*api.Client, error) {
	cl := api.NewClient(c.URL.Value, c.Token.Value)
	if ca := c.CAFile.Value; ca != "" {
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

// printJSON writes v as indented JSON to stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
