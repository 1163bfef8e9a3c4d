package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/preflight"
	"github.com/cleanroom-ci/cleanroom/api"
)

func newAgentCheckCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check this build host's prerequisites and print how to fix what is missing",
		Long: `Check what the agent needs of this host, one line each, "OK …" or
"FAIL … — fix: <command or setting>": root, the data dir writable, containerd
reachable (and its version), runc, the sandbox image in containerd, the memory,
pids and cpu cgroup controllers, net.ipv4.ip_forward=1 in the namespace the
sandboxes' veths live in (forward mode), iptables and ip6tables, NFLOG and
conntrack netlink, loop devices and mkfs.ext4, and a TCP connection to each
registry and git host of the config. Exits 1 if anything failed.

"agent register" runs the same checks before it spends the registration
token, and "agent run" at start (there an unreachable registry is only a
warning).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := agent.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			rep := preflight.Run(cmd.Context(), cfg, preflight.Options{ContainerdAddress: agentContainerdAddress(cfg)})
			return reportCheck(os.Stdout, rep, true)
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", defaultAgentConfig, "agent config file (written by agent register)")
	return cmd
}

// reportCheck prints rep and fails when a check failed (reachability
// counted or not).
func reportCheck(w io.Writer, rep preflight.Report, reachability bool) error {
	rep.Print(w)
	if n := len(rep.Failed(reachability)); n > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("host check: %d problem(s), each with its fix above", n)}
	}
	return nil
}

// registerFlagOf names the register flag that sets a config field, for the
// fix of a refused registration.
func registerFlagOf(field string) string {
	for prefix, flag := range map[string]string{
		"coordinator":        "--url https://coordinator.example:7070 (http:// only on loopback)",
		"network.registries": "--registry https://npm.internal.example/ (a full URL)",
		"network.hosts":      "--host NAME=IP",
		"labels":             "--labels key=value,key2=value2",
		"name":               "--name build-01",
		"concurrency":        "--concurrency 1 to 256",
		"data_dir":           "--data-dir /var/lib/cleanroom/agent",
	} {
		if strings.HasPrefix(field, prefix) {
			return flag
		}
	}
	return ""
}

// explainRegisterError turns a validation failure of register's options
// into one line per field with the flag that fixes it.
func explainRegisterError(err error) error {
	var fe api.FieldErrors
	if !errors.As(err, &fe) {
		return err
	}
	lines := []string{"refusing to register (the registration token was not spent):"}
	for _, f := range fe {
		line := fmt.Sprintf("  %s: %s", f.Field, f.Message)
		if flag := registerFlagOf(f.Field); flag != "" {
			line += " — fix: " + flag
		}
		lines = append(lines, line)
	}
	return &exitError{code: 1, msg: strings.Join(lines, "\n")}
}

// parseHosts reads --host NAME=IP flags into network.hosts.
func parseHosts(flags []string) (map[string]string, error) {
	if len(flags) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for _, f := range flags {
		name, ip, ok := strings.Cut(f, "=")
		if !ok || name == "" || ip == "" {
			return nil, fmt.Errorf("--host %q: want NAME=IP, e.g. --host npm.internal=10.0.0.5", f)
		}
		out[name] = ip
	}
	return out, nil
}
