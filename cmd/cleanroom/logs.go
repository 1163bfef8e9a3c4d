package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func init() {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [-f] JOB",
		Short: "Print a job's log; with -f, follow it until the job ends",
		Args:  cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		if follow {
			return followAndExit(cmd.Context(), cl, args[0], false)
		}
		if _, err := cl.ReadLog(cmd.Context(), args[0], 0, false, os.Stdout); err != nil {
			return fmt.Errorf("reading log of %s: %w", args[0], err)
		}
		return nil
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "stream new output until the job ends, then exit with its exit code")
	rootCmd.AddCommand(cmd)
}
