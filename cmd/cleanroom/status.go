package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	cmd := &cobra.Command{
		Use:   "status JOB",
		Short: "Show a job's state, runner, attempts, exit code and reason",
		Args:  cobra.ExactArgs(1),
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		j, err := cl.GetJob(cmd.Context(), args[0])
		if err != nil {
			return fmt.Errorf("reading job %s: %w", args[0], err)
		}
		if cf.json {
			return printJSON(j)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
		row("job", j.ID)
		row("state", j.State)
		if j.Cancel && !api.Terminal(j.State) {
			row("cancel", "requested")
		}
		row("runner", orDash(j.RunnerID))
		row("submitted by", orDash(j.Submitter))
		row("attempts", fmt.Sprintf("%d of %d", j.Attempts, j.MaxAttempts))
		if j.ExitCode != nil {
			row("exit code", fmt.Sprint(*j.ExitCode))
		}
		if j.FailureClass != "" {
			row("failure class", j.FailureClass)
		}
		row("reason", orDash(api.Printable(j.Reason)))
		src := j.Source.Kind
		if j.Source.Kind == api.SourceGit {
			src += " " + j.Source.URL + " @ " + j.Source.Commit
		} else {
			src += fmt.Sprintf(" sha256:%s (%d bytes)", j.Source.SHA256, j.Source.Size)
		}
		row("source", src)
		if req := requirements(j.Spec); req != "" {
			// What a runner must have to claim it: the answer to "why is
			// it still queued".
			row("requires", req)
		}
		row("created", j.CreatedAt.Local().Format(time.RFC3339))
		if j.StartedAt != nil {
			row("started", j.StartedAt.Local().Format(time.RFC3339))
		}
		if j.FinishedAt != nil {
			row("finished", j.FinishedAt.Local().Format(time.RFC3339))
		}
		row("log", fmt.Sprintf("%d bytes", j.LogSize))
		return tw.Flush()
	}
	rootCmd.AddCommand(cmd)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// requirements says what a runner needs to take a job: its labels and any
// resources above the runners' defaults.
func requirements(s api.JobSpec) string {
	var out []string
	if len(s.Labels) > 0 {
		out = append(out, labelString(s.Labels))
	}
	r := s.Resources
	if r.Memory > 0 {
		out = append(out, "memory "+r.Memory.String())
	}
	if r.CPUs > 0 {
		out = append(out, fmt.Sprintf("cpus %g", r.CPUs))
	}
	if r.PIDs > 0 {
		out = append(out, fmt.Sprintf("pids %d", r.PIDs))
	}
	if r.Disk > 0 {
		out = append(out, "disk "+r.Disk.String())
	}
	return strings.Join(out, ", ")
}
