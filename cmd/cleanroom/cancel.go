package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func init() {
	cmd := &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a job: a queued job at once, a running one within a heartbeat",
		Args:  cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		j, err := cl.CancelJob(cmd.Context(), args[0])
		if err != nil {
			return fmt.Errorf("canceling %s: %w", args[0], err)
		}
		if cf.json {
			return printJSON(j)
		}
		if j.State == "running" {
			fmt.Printf("job %s: cancel requested; the agent stops it at its next heartbeat\n", j.ID)
		} else {
			fmt.Printf("job %s: %s\n", j.ID, j.State)
		}
		return nil
	}
	rootCmd.AddCommand(cmd)
}
