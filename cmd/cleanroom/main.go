// Command cleanroom is the single binary of the project: coordinator server,
// build agent, and the CLI that developers, platform teams and security teams
// use. This package owns flags, config files, wiring and exit codes; each
// subcommand lives in its own file and registers itself on rootCmd in init.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code out of a command (for example the
// exit code of a build or of a sandboxed command) without printing twice.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

var rootCmd = &cobra.Command{
	Use:   "cleanroom",
	Short: "Sandboxed CI build runner for npm projects",
	Long: `cleanroom runs npm builds in a fresh, locked-down containerd sandbox whose
network egress is limited to the internal npm registry, with no deploy secrets
inside, and logs every egress attempt for audit.

Operators run "cleanroom server" (the coordinator) and "cleanroom agent run" on
each build host; developers and pipelines use "cleanroom submit"; security
teams use "cleanroom egress".`,
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(os.Stderr, "cleanroom:", ee.msg)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "cleanroom:", err)
		os.Exit(1)
	}
}
