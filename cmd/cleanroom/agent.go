package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/preflight"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

const defaultAgentConfig = "/etc/cleanroom/agent.yaml"

func init() {
	agentCmd := &cobra.Command{Use: "agent", Short: "Register and run a build agent"}

	var o agent.RegisterOptions
	var labels string
	var hosts []string
	var skipCheck bool
	reg := &cobra.Command{
		Use:   "register",
		Short: "Register this host as a runner and write its config",
		Long: `Exchange a registration token (from "cleanroom token create") for a runner token.
An ed25519 signing key is generated here (agent.key, mode 0600, next to the
config; its public half is sent to the coordinator so provenance signed by
this runner can be verified). The config (YAML, mode 0600) is written to
--config. Give the internal registry with --registry (or add network.registries
to the config later), and the secrets file, limits and other policy settings in
the config before "cleanroom agent run" (docs/configuration.md lists them).

Before the token is spent, every field is validated as "agent run" will
validate the written config, and the host is checked as "agent check" does
(--skip-check skips the latter); a failure names its fix and spends nothing.`,
		Example: `  cleanroom agent register --url https://ci.example:7070 --token crg_… \
      --name build-01 --labels os=linux --registry https://npm.internal.example/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := parseLabels(labels)
			if err != nil {
				return err
			}
			o.Labels = l
			// Relative paths would be written relative to here but read
			// relative to the config's folder: store absolute ones.
			if o.ConfigPath, err = filepath.Abs(o.ConfigPath); err != nil {
				return err
			}
			for _, p := range []*string{&o.DataDir, &o.CAFile} {
				if *p != "" {
					if *p, err = filepath.Abs(*p); err != nil {
						return err
					}
				}
			}
			if o.Name == "" {
				if o.Name, err = os.Hostname(); err != nil {
					return fmt.Errorf("reading host name: %w", err)
				}
			}
			if o.Hosts, err = parseHosts(hosts); err != nil {
				return err
			}
			// Everything is checked before the registration token is
			// spent: the fields, then (unless --skip-check) the host.
			pending, err := o.Config()
			if err != nil {
				return explainRegisterError(err)
			}
			if !skipCheck {
				rep := preflight.Run(cmd.Context(), pending, preflight.Options{ContainerdAddress: agentContainerdAddress(pending)})
				if err := reportCheck(os.Stdout, rep, true); err != nil {
					return &exitError{code: 1, msg: "refusing to register (the registration token was not spent): fix the failed checks above, or pass --skip-check to register anyway"}
				}
			}
			cfg, err := agent.Register(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Printf("registered runner %s (%s); config written to %s\n", cfg.Name, cfg.RunnerID, o.ConfigPath)
			return nil
		},
	}
	rf := reg.Flags()
	rf.StringVar(&o.URL, "url", "", "coordinator URL, or several (sharing one store) separated by commas")
	rf.StringVar(&o.Token, "token", "", "registration token")
	rf.StringVar(&o.Name, "name", "", "runner name (default: host name)")
	rf.StringVar(&labels, "labels", "", "labels jobs can select, as k=v,k2=v2")
	rf.IntVar(&o.Concurrency, "concurrency", 1, "jobs this runner runs at once")
	rf.StringVar(&o.ConfigPath, "config", defaultAgentConfig, "where to write the agent config")
	rf.StringVar(&o.DataDir, "data-dir", "", "workspaces and spool (default: data/ next to the config)")
	rf.StringVar(&o.CAFile, "ca-file", "", "PEM CA bundle for the coordinator's certificate")
	rf.BoolVar(&o.Force, "force", false, "overwrite an existing config and key")
	rf.StringArrayVar(&o.Registries, "registry", nil, "internal npm registry URL builds may install from (repeatable)")
	rf.StringArrayVar(&hosts, "host", nil, "NAME=IP: a static answer for a registry or git host name DNS does not know (network.hosts; repeatable)")
	rf.BoolVar(&skipCheck, "skip-check", false, "register without checking the host first (see agent check)")
	_ = reg.MarkFlagRequired("url")
	_ = reg.MarkFlagRequired("token")

	var cfgPath, logFormat string
	run := &cobra.Command{
		Use:   "run",
		Short: "Claim and run jobs until stopped",
		Long: `Run the agent: claim jobs (long-poll, --concurrency slots from the config), run
each in a fresh sandbox, stream logs and egress events, upload artifacts and
report results. SIGTERM or SIGINT stops gracefully: no new claims, running
jobs get grace_period, then they are canceled and reported. A second signal
cancels running jobs at once (they are still torn down).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger("agent", logFormat)
			cfg, err := agent.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			m := agent.NewMetrics()
			ex, err := newExecutor(cfg, log, m)
			if err != nil {
				return err
			}
			a, err := agent.New(cfg, ex, log, agent.WithMetrics(m))
			if err != nil {
				return err
			}
			if cfg.MetricsListen != "" {
				stop, err := serveAgentMetrics(cmd.Context(), a, cfg.MetricsListen, log)
				if err != nil {
					return err
				}
				defer stop()
			}
			// An executor that must reclaim a crashed run's leftovers (sandboxes,
			// namespaces, rules) does so before the first claim.
			if s, ok := ex.(interface {
				Startup(context.Context, hclog.Logger) error
			}); ok {
				a.OnStart = func(ctx context.Context) error { return s.Startup(ctx, log) }
			}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			go func() {
				select {
				case <-sigs:
				case <-ctx.Done():
					return
				}
				log.Info("stop signal: finishing running jobs (send again to cancel them)")
				cancel()
				select {
				case <-sigs:
					log.Warn("second stop signal: canceling running jobs")
					a.StopNow()
				case <-a.Done():
				}
			}()
			runErr := a.Run(ctx)
			// Sandbox networks hand their addresses back once the kernel
			// has destroyed their veths; wait for that before exiting
			// (GC would collect them otherwise, at the next start).
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			if err := netpolicy.Settle(sctx); err != nil {
				log.Warn("exiting before every sandbox network was released", "error", err)
			}
			if c, ok := ex.(io.Closer); ok {
				if err := c.Close(); err != nil {
					log.Warn("closing the sandbox client", "error", err)
				}
			}
			return runErr
		},
	}
	run.Flags().StringVar(&cfgPath, "config", defaultAgentConfig, "agent config file (written by agent register)")
	run.Flags().StringVar(&logFormat, "log-format", "text", "log format: text (for people) or json (for machines)")
	agentCmd.AddCommand(reg, run, newAgentCheckCmd())
	rootCmd.AddCommand(agentCmd)
}

// serveAgentMetrics serves the agent's /metrics, /healthz and /readyz on
// addr until the returned stop is called (after Run, so /readyz says the
// job loop stopped while the agent shuts down).
func serveAgentMetrics(ctx context.Context, a *agent.Agent, addr string, log hclog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.ServeMetrics(mctx, ln) }()
	log.Info("metrics listening", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() {
		cancel()
		if err := <-done; err != nil {
			log.Warn("serving metrics", "error", err)
		}
	}, nil
}
