package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	var f api.EgressFilter
	var denied bool
	var since, until string
	cmd := &cobra.Command{
		Use:   "egress",
		Short: "Query the egress audit log (every allowed and denied attempt, DNS included)",
		Long: `Query egress events. By default a table; with --json one JSON object per line,
in the format of docs/egress-log.md, ready for a SIEM. --since and --until take an
RFC 3339 time or a duration back from now (e.g. 24h).`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cl, err := cf.client()
		if err != nil {
			return err
		}
		if denied {
			f.Verdict = api.VerdictDeny
		}
		if f.Since, err = parseWhen(since); err != nil {
			return fmt.Errorf("parsing --since: %w", err)
		}
		if f.Until, err = parseWhen(until); err != nil {
			return fmt.Errorf("parsing --until: %w", err)
		}
		if cf.json {
			enc := json.NewEncoder(os.Stdout)
			return cl.QueryEgress(cmd.Context(), f, func(e api.EgressEvent) error { return enc.Encode(e) })
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tRUNNER\tJOB\tPROTO\tDESTINATION\tVERDICT\tRULE")
		err = cl.QueryEgress(cmd.Context(), f, func(e api.EgressEvent) error {
			dst := e.Dst
			if e.Domain != "" {
				dst = e.Domain
				if e.Dst != "" {
					dst += " (" + e.Dst + ")"
				}
			}
			_, err := fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05.000"),
				e.Runner, e.Job, e.Proto, orDash(dst), e.Verdict, orDash(e.Rule))
			return err
		})
		if err != nil {
			return fmt.Errorf("querying egress: %w", err)
		}
		return tw.Flush()
	}
	fl := cmd.Flags()
	fl.StringVar(&f.Job, "job", "", "only this job")
	fl.StringVar(&f.Runner, "runner", "", "only this runner id")
	fl.BoolVar(&denied, "denied", false, "only denied attempts")
	fl.StringVar(&since, "since", "", "from this time (RFC 3339, or a duration ago like 24h)")
	fl.StringVar(&until, "until", "", "before this time (RFC 3339, or a duration ago)")
	fl.IntVar(&f.Limit, "limit", 0, "at most this many events (0 = all)")
	rootCmd.AddCommand(cmd)
}

func parseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return time.Now().Add(-d), nil
	}
	return time.Parse(time.RFC3339Nano, s)
}
