package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/secrets"
)

// gatewayWiring is what the executor needs to know of the gateway's
// upstreams: every registry URL lockfiles may resolve to, the scopes the
// job's npmrc points at the gateway, and the secrets that are upstream
// credentials (no job may be granted one).
type gatewayWiring struct {
	registries      []string
	scopes          []string
	upstreamSecrets []string
}

// newGateway builds the agent's registry gateway: upstreams with their
// credentials (read here, once; a credential that cannot be read stops the
// agent — fail closed), the verified-tarball cache and the upstream client.
func newGateway(cfg *agent.Config, store *secrets.Store, hosts map[string][]net.IP, log hclog.Logger) (*gateway.Gateway, gatewayWiring, error) {
	ups, w, err := gatewayUpstreams(cfg, store)
	if err != nil {
		return nil, w, err
	}
	cache, err := gateway.OpenCache(cfg.Gateway.CacheDir, int64(cfg.Gateway.CacheMaxBytes))
	if err != nil {
		return nil, w, fmt.Errorf("opening the registry gateway's cache %s: %w", cfg.Gateway.CacheDir, err)
	}
	gcfg := gateway.Config{
		Upstreams: ups, Aliases: cfg.RegistryAliases, Cache: cache,
		AllowSHA1: cfg.AllowSHA1, MinReleaseAge: cfg.MinReleaseAge.D(),
		Logger: log.Named("gateway"),
	}
	if len(hosts) > 0 {
		gcfg.Client = staticHostsClient(hosts)
	}
	gw, err := gateway.New(gcfg)
	if err != nil {
		return nil, w, fmt.Errorf("configuring the registry gateway: %w", err)
	}
	return gw, w, nil
}

// gatewayUpstreams maps the config onto the gateway's upstreams, in order:
// network.registries (the first is the default for every name), each with
// the credential and scopes a registries entry of the same URL gives it,
// then the registries entries naming other URLs. registry_token_secret is
// the first registry's credential when no entry gives one.
func gatewayUpstreams(cfg *agent.Config, store *secrets.Store) ([]gateway.Upstream, gatewayWiring, error) {
	var ups []gateway.Upstream
	var w gatewayWiring
	index := map[string]int{}
	key := func(u string) string { return strings.TrimSuffix(strings.ToLower(u), "/") }
	for _, u := range cfg.Network.Registries {
		if _, dup := index[key(u)]; !dup {
			index[key(u)] = len(ups)
			ups = append(ups, gateway.Upstream{URL: u})
		}
	}
	fromSecret := func(name, what string) (string, error) {
		v, err := store.Credential(name)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		w.upstreamSecrets = append(w.upstreamSecrets, name)
		return string(v), nil
	}
	for i, r := range cfg.Registries {
		j, ok := index[key(r.URL)]
		if !ok {
			j = len(ups)
			index[key(r.URL)] = j
			ups = append(ups, gateway.Upstream{URL: r.URL})
		}
		ups[j].Scopes = append(ups[j].Scopes, r.Scopes...)
		w.scopes = append(w.scopes, r.Scopes...)
		what := fmt.Sprintf("registries[%d] (%s)", i, r.URL)
		switch {
		case r.TokenSecret != "":
			tok, err := fromSecret(r.TokenSecret, what+" token_secret")
			if err != nil {
				return nil, w, err
			}
			ups[j].Token = tok
		case r.TokenFile != "":
			tok, err := readTokenFile(r.TokenFile)
			if err != nil {
				return nil, w, fmt.Errorf("%s token_file: %w", what, err)
			}
			// Redacted everywhere, never grantable.
			store.AddAgentCredential("registry token "+r.URL, []byte(tok))
			ups[j].Token = tok
		}
	}
	if cfg.RegistryTokenSecret != "" && len(ups) > 0 && ups[0].Token == "" {
		tok, err := fromSecret(cfg.RegistryTokenSecret, "registry_token_secret")
		if err != nil {
			return nil, w, err
		}
		ups[0].Token = tok
	}
	for _, u := range ups {
		w.registries = append(w.registries, u.URL)
	}
	return ups, w, nil
}

// readTokenFile reads a registry token from a file only its owner may read.
func readTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by group or others (mode %04o); run: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}

// staticHostsClient is the gateway's upstream client when network.hosts
// names hosts no DNS knows (labs): those names dial their configured
// address, others resolve as usual. Proxy settings of the environment are
// ignored, as by the gateway's own default client.
func staticHostsClient(hosts map[string][]net.IP) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{Transport: &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, port, err := net.SplitHostPort(addr)
			if err == nil {
				if ips := hosts[strings.ToLower(host)]; len(ips) > 0 {
					addr = net.JoinHostPort(ips[0].String(), port)
				}
			}
			return d.DialContext(ctx, network, addr)
		},
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConnsPerHost:   16,
	}}
}
