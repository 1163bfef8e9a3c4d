package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func init() {
	list := &cobra.Command{
		Use:   "runners",
		Short: "List registered runners (admin)",
		Args:  cobra.NoArgs,
	}
	lf := addClientFlags(list, true)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		cl, err := lf.client()
		if err != nil {
			return err
		}
		rs, err := cl.ListRunners(cmd.Context())
		if err != nil {
			return fmt.Errorf("listing runners: %w", err)
		}
		if lf.json {
			return printJSONList(rs)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAME\tLABELS\tSLOTS\tLAST SEEN\tSTATUS")
		for _, r := range rs {
			status := "active"
			if r.RevokedAt != nil {
				status = "revoked"
			}
			seen := "never"
			if r.LastSeen != nil {
				seen = time.Since(*r.LastSeen).Round(time.Second).String() + " ago"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Name, labelString(r.Labels), r.Concurrency, seen, status)
		}
		return tw.Flush()
	}

	runner := &cobra.Command{Use: "runner", Short: "Manage runners (admin)"}
	rm := &cobra.Command{
		Use:   "rm NAME|ID",
		Short: "Revoke a runner: every call with its token fails from now on, its running jobs are re-queued",
		Args:  cobra.ExactArgs(1),
	}
	rf := addClientFlags(rm, true)
	rm.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := rf.client()
		if err != nil {
			return err
		}
		r, err := cl.RemoveRunner(cmd.Context(), args[0])
		if err != nil {
			return fmt.Errorf("removing runner %s: %w", args[0], err)
		}
		if rf.json {
			return printJSON(r)
		}
		fmt.Printf("runner %s (%s) revoked\n", r.Name, r.ID)
		return nil
	}
	runner.AddCommand(rm)
	rootCmd.AddCommand(list, runner)
}

func labelString(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

// parseLabels parses "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parsing label %q: want key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
