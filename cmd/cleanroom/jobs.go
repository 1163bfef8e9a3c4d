package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	var f api.JobFilter
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List recent jobs, newest first",
		Args:  cobra.NoArgs,
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := api.CheckJobState(f.State); err != nil {
			return fmt.Errorf("--state: %w", err)
		}
		cl, err := cf.client()
		if err != nil {
			return err
		}
		js, err := cl.ListJobs(cmd.Context(), f)
		if err != nil {
			return fmt.Errorf("listing jobs: %w", err)
		}
		if cf.json {
			return printJSONList(js)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tSTATE\tEXIT\tRUNNER\tATTEMPTS\tCREATED\tREASON")
		for _, j := range js {
			exit := "-"
			if j.ExitCode != nil {
				exit = fmt.Sprint(*j.ExitCode)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", j.ID, j.State, exit, orDash(j.RunnerID), j.Attempts, j.MaxAttempts,
				formatTime(j.CreatedAt), api.Printable(j.Reason))
		}
		return tw.Flush()
	}
	cmd.Flags().StringVar(&f.State, "state", "", "only jobs in this state ("+strings.Join(api.JobStates, ", ")+")")
	cmd.Flags().IntVar(&f.Limit, "limit", 50, "at most this many jobs")
	rootCmd.AddCommand(cmd)
}
