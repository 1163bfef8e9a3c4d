package main

import (
	"fmt"
	"os"
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
	tokenCmd.AddCommand(cmd)
	rootCmd.AddCommand(tokenCmd)
}

var tokenFlags *clientFlags
