package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/agent/buildexec"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/gateway"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

func init() {
	var cf containerdFlags
	cacheMax := int64(agent.DefaultGatewayCacheBytes)
	var (
		configPath, agentName, hostNS, netState string
		gatewayCache                            string
		all, dryRun, asJSON, check, usernsCache bool
	)
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove sandboxes, networks and rules that crashed jobs left behind",
		Long: `Finds what a crashed or killed agent left on this host and removes it:
containers, tasks, snapshots, workspace mounts and cgroups labelled by cleanroom
whose creating process is gone, then the network namespaces (cr-*), veths, host
firewall chains (CR-*) and address-pool leases of jobs that no longer have a
sandbox. Objects without cleanroom's labels or names are never touched, and a
sandbox whose agent still runs is left alone unless --all is given. Then the
registry gateway's cache (--gateway-cache, from the agent config when given)
loses its partial writes and its least recently used tarballs down to its cap.

With --config, the agent's config file supplies containerd, namespace and data
directory. The agent runs the same collection at start-up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" && !cmd.Flags().Changed("state-dir") {
				if _, err := os.Stat(defaultAgentConfig); err == nil {
					configPath = defaultAgentConfig
				}
			}
			if configPath != "" {
				cfg, err := agent.LoadConfig(configPath)
				if err != nil {
					return err
				}
				if !cmd.Flags().Changed("containerd") {
					cf.address = cfg.Containerd.Address
				}
				if !cmd.Flags().Changed("namespace") {
					cf.namespace = cfg.Containerd.Namespace
				}
				if !cmd.Flags().Changed("state-dir") {
					cf.stateDir = filepath.Join(cfg.DataDir, "sandbox")
				}
				if !cmd.Flags().Changed("net-state-dir") {
					netState = cfg.Network.StateDir
				}
				if !cmd.Flags().Changed("agent") {
					agentName = cfg.Name
				}
				if !cmd.Flags().Changed("host-netns") {
					hostNS = cfg.Network.HostNetNS
				}
				if !cmd.Flags().Changed("gateway-cache") {
					gatewayCache = cfg.Gateway.CacheDir
					cacheMax = int64(cfg.Gateway.CacheMaxBytes)
				}
			}
			c, err := cf.client(cmd.Context(), "gc", cliLogger())
			if err != nil {
				return err
			}
			defer c.Close()
			if check {
				res, err := c.Residue(cmd.Context(), agentName)
				if err != nil {
					return err
				}
				// The network side: namespaces anyone's sandboxes may have
				// left, and leases in this host's pool.
				nss, _ := filepath.Glob("/run/netns/cr-*")
				for _, ns := range nss {
					res = append(res, "network namespace "+ns)
				}
				if pool, err := netpolicy.NewPool("", netState); err == nil {
					if leases, err := pool.Leases(); err == nil {
						for _, l := range leases {
							res = append(res, fmt.Sprintf("address lease %s (job %s)", l.HostIP, l.Job))
						}
					}
				}
				for _, r := range res {
					fmt.Println(r)
				}
				if len(res) > 0 {
					return &exitError{code: 1, msg: fmt.Sprintf("%d object(s) of cleanroom remain", len(res))}
				}
				fmt.Println("nothing of cleanroom's remains")
				return nil
			}
			rep, err := buildexec.GC(cmd.Context(), c, buildexec.GCOptions{Agent: agentName, All: all, HostNS: hostNS, NetStateDir: netState, DryRun: dryRun, UserNSCache: usernsCache})
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(rep)
			} else {
				verb := "removed"
				if dryRun {
					verb = "would remove"
				}
				for _, line := range []struct {
					what  string
					items []string
				}{
					{"containers", rep.Sandbox.Containers}, {"snapshots", rep.Sandbox.Snapshots},
					{"workspaces", rep.Sandbox.StateDirs}, {"cgroups", rep.Sandbox.Cgroups},
					{"network namespaces", rep.Network.Namespaces}, {"veths", rep.Network.Links},
					{"firewall rules", rep.Network.Rules}, {"firewall chains", rep.Network.Chains},
					{"address leases", rep.Network.Leases}, {"remapped image snapshots", rep.Sandbox.UserNSCache},
				} {
					if len(line.items) > 0 {
						fmt.Printf("%s %d %s: %s\n", verb, len(line.items), line.what, strings.Join(line.items, ", "))
					}
				}
				if rep.Empty() {
					fmt.Println("nothing to collect")
				}
			}
			if gatewayCache != "" && !dryRun {
				crep, cerr := gcGatewayCache(cmd.Context(), gatewayCache, cacheMax)
				if cerr == nil && !asJSON {
					fmt.Printf("gateway cache %s: removed %d file(s) (%s), kept %d tarball(s) (%s)\n",
						gatewayCache, crep.Removed, api.ByteSize(crep.Bytes), crep.Kept, api.ByteSize(crep.Size))
				}
				err = errors.Join(err, cerr)
			}
			return err
		},
	}
	cf.register(cmd.Flags())
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "agent config file to take containerd, namespace and data dir from (default "+defaultAgentConfig+" when it exists)")
	f.StringVar(&agentName, "agent", "", "only objects of this agent (default: any agent's)")
	f.StringVar(&hostNS, "host-netns", "", "network namespace holding the sandboxes' host ends (default: this one)")
	f.StringVar(&netState, "net-state-dir", "/var/lib/cleanroom/net", "network state dir (address pool)")
	f.BoolVar(&all, "all", false, "also remove sandboxes whose agent is still running, and networks no pool lease explains")
	f.StringVar(&gatewayCache, "gateway-cache", "", "the registry gateway's cache dir to collect (default: the agent config's gateway.cache_dir)")
	f.Var((*byteSizeFlag)(&cacheMax), "gateway-cache-max", "the cache's cap (default: the agent config's gateway.cache_max_bytes, else 10GiB)")
	f.BoolVar(&dryRun, "dry-run", false, "only report what would be removed (sandboxes only)")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	f.BoolVar(&usernsCache, "userns-cache", false, "also remove the remapped image snapshots of user-namespace slots (a cache: the next job of each slot remaps the image again, a few seconds)")
	f.BoolVar(&check, "check", false, "only list what of cleanroom's remains (containers, snapshots, workspaces, cgroups, network namespaces, address leases); exit 1 if anything does")
	rootCmd.AddCommand(cmd)
}

// gcGatewayCache collects the registry gateway's cache in dir: partial
// writes, then the least recently used tarballs down to maxBytes.
func gcGatewayCache(ctx context.Context, dir string, maxBytes int64) (gateway.GCReport, error) {
	c, err := gateway.OpenCache(dir, maxBytes)
	if err != nil {
		return gateway.GCReport{}, fmt.Errorf("opening the gateway cache %s: %w", dir, err)
	}
	rep, err := c.GC(ctx)
	if err != nil {
		return rep, fmt.Errorf("collecting the gateway cache %s: %w", dir, err)
	}
	return rep, nil
}

// byteSizeFlag is a flag taking a size such as 10GiB.
type byteSizeFlag int64

func (b *byteSizeFlag) String() string { return api.ByteSize(*b).String() }
func (b *byteSizeFlag) Type() string   { return "size" }
func (b *byteSizeFlag) Set(s string) error {
	v, err := api.ParseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSizeFlag(v)
	return nil
}
