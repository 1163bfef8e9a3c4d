package main

import (
	"context"
	"os"

	"github.com/cleanroom-ci/cleanroom/sandbox"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
)

// containerdFlags are shared by the commands that talk to containerd directly
// (image build, sandbox run, gc).
type containerdFlags struct {
	address   string
	namespace string
	stateDir  string
}

func (f *containerdFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.address, "containerd", "", "containerd socket (default $CLEANROOM_CONTAINERD_ADDRESS, else "+sandbox.DefaultAddress+")")
	fs.StringVar(&f.namespace, "namespace", sandbox.DefaultNamespace, "containerd namespace cleanroom works in")
	fs.StringVar(&f.stateDir, "state-dir", "/var/lib/cleanroom/sandbox", "where sandboxes keep their workspaces and disk images")
}

func containerdAddress(flag string) string {
	if flag != "" {
		return flag
	}
	if a := os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"); a != "" {
		return a
	}
	return sandbox.DefaultAddress
}

func (f *containerdFlags) client(ctx context.Context, agent string, log hclog.Logger) (*sandbox.Client, error) {
	return sandbox.New(ctx, sandbox.Config{
		Address:   containerdAddress(f.address),
		Namespace: f.namespace,
		Agent:     agent,
		StateDir:  f.stateDir,
		Logger:    log,
	})
}

func cliLogger() hclog.Logger {
	lvl := hclog.Warn
	if os.Getenv("CLEANROOM_DEBUG") != "" {
		lvl = hclog.Debug
	}
	return hclog.New(&hclog.LoggerOptions{Name: "cleanroom", Level: lvl, Output: os.Stderr})
}
