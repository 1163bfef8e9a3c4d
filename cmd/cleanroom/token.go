package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	tokenCmd := &cobra.Command{Use: "token", Short: "Manage registration, submit and audit tokens (admin)"}
	var req api.TokenRequest
	var expires time.Duration
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a registration (agent register), submit (pipelines) or audit (security team) token",
		Long: `Create a token with the admin token.

  registration  exchanged by "cleanroom agent register" for a runner token
  submit        submits jobs, and reads and cancels the jobs submitted with
                it (their logs, artifacts and egress events); other jobs do
                not exist for it. Give each team or pipeline its own.
  audit         reads every job, log, artifact and egress event; submits and
                cancels nothing

The token is printed once; only its hash is stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := tokenFlags.client()
			if err != nil {
				return err
			}
			req.Expires = api.Duration(expires)
			resp, err := cl.CreateToken(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("creating token: %w", err)
			}
			if tokenFlags.json {
				return printJSON(resp)
			}
			fmt.Println(resp.Token)
			exp := "never"
			if resp.ExpiresAt != nil {
				exp = resp.ExpiresAt.Local().Format(time.RFC3339)
			}
			uses := "unlimited"
			if resp.Uses > 0 {
				uses = fmt.Sprint(resp.Uses)
			}
			fmt.Fprintf(os.Stderr, "%s token %s: expires %s, uses %s\n", resp.Kind, resp.ID, exp, uses)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Kind, "kind", api.TokenRegistration, "registration, submit or audit")
	cmd.Flags().DurationVar(&expires, "expires", time.Hour, "lifetime of the token (0 = never expires)")
	cmd.Flags().IntVar(&req.Uses, "uses", 1, "how many times a registration token can be used (0 = unlimited)")
	cmd.Flags().StringVar(&req.Note, "note", "", "free text stored with the token")
	tokenFlags = addClientFlags(cmd, true)

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens: id, kind, note, expiry, uses left, revoked (never the secrets)",
		Args:  cobra.NoArgs,
	}
	lf := addClientFlags(list, true)
	list.RunE = func(cmd *cobra.Command, _ []string) error {
		cl, err := lf.client()
		if err != nil {
			return err
		}
		ts, err := cl.ListTokens(cmd.Context())
		if err != nil {
			return fmt.Errorf("listing tokens: %w", err)
		}
		if lf.json {
			return printJSON(ts)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tNOTE\tCREATED\tEXPIRES\tUSES LEFT\tSTATUS")
		for _, t := range ts {
			exp, uses, status := "never", "unlimited", "active"
			if t.ExpiresAt != nil {
				exp = t.ExpiresAt.Local().Format(time.RFC3339)
				if !time.Now().Before(*t.ExpiresAt) {
					status = "expired"
				}
			}
			if t.UsesLeft != nil {
				uses = fmt.Sprint(*t.UsesLeft)
				if *t.UsesLeft <= 0 {
					status = "used up"
				}
			}
			if t.RevokedAt != nil {
				status = "revoked " + t.RevokedAt.Local().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, orDash(t.Note),
				t.CreatedAt.Local().Format(time.RFC3339), exp, uses, status)
		}
		return tw.Flush()
	}

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a registration, submit or audit token: every call with it fails from now on",
		Long: `Revoke a token by its id (the part between the prefix and the dot, as
"cleanroom token list" shows it). Jobs already submitted with a revoked submit
token keep running; nobody but the admin and audit tokens can read them any
more. To revoke a runner's token, use "cleanroom runner rm".`,
		Args: cobra.ExactArgs(1),
	}
	rf := addClientFlags(revoke, true)
	revoke.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := rf.client()
		if err != nil {
			return err
		}
		t, err := cl.RevokeToken(cmd.Context(), args[0])
		if err != nil {
			return fmt.Errorf("revoking token %s: %w", args[0], err)
		}
		if rf.json {
			return printJSON(t)
		}
		fmt.Printf("%s token %s revoked at %s\n", t.Kind, t.ID, t.RevokedAt.Local().Format(time.RFC3339))
		return nil
	}
	tokenCmd.AddCommand(cmd, list, revoke)
	rootCmd.AddCommand(tokenCmd)
}

var tokenFlags *clientFlags
