// Command cleanroom is the single binary of the project: coordinator server,
// build agent, and the CLI that developers, platform teams and security teams
// use. This package owns flags, config files, wiring and exit codes; each
// subcommand lives in its own file and registers itself on rootCmd in init.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:   "cleanroom",
	Short: "Sandboxed CI build runner for npm projects",
	Long: `cleanroom runs npm builds in a fresh, locked-down containerd sandbox whose
network egress is limited to the internal npm registry, with no deploy secrets
inside, and logs every egress attempt for audit.

Operators run "cleanroom server" (the coordinator) and "cleanroom agent run" on
each build host; developers and pipelines use "cleanroom submit"; security
teams use "cleanroom egress".

` + exitCodeHelp,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	markUsageErrors(rootCmd)
	err := rootCmd.Execute()
	if err == nil {
		return
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintln(os.Stderr, "cleanroom:", msg)
	}
	os.Exit(exitCode(err))
}
