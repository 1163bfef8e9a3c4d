package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/internal/version"
)

func init() {
	info := version.Get()
	rootCmd.Version = info.Version
	rootCmd.SetVersionTemplate(info.String() + "\n")
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version and commit this binary was built from",
		Long: `Print the version (git describe at build time), the commit and the Go version.
"make build" stamps them; a plain "go build" falls back to what Go recorded.
The coordinator and the agent expose the same in the cleanroom_build_info metric.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			_, err := fmt.Fprintf(out, "cleanroom %s\ncommit: %s\ngo:     %s\n", info.Version, info.Commit, info.GoVersion)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	rootCmd.AddCommand(cmd)
}
