package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/cleanroom-ci/cleanroom/api"
)

func init() {
	tokenCmd := &cobra.Command{Use: "token", Short: "Manage registration, submit and audit tokens (admin)"}
	req := api.TokenRequest{Expires: api.Duration(time.Hour)}
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a registration (agent register), submit (pipelines) or audit (security team) token",
		Long: `Create a token with the admin token.

  registration  exchanged by "cleanroom agent register" for a runner token
  submit        submits jobs, and reads and cancels the jobs submitted with
                it (their logs, artifacts and egress events); other jobs do
                not exist for it. Give each team or pipeline its own.
                --team records the token's team on every job it submits:
                a build secret with "teams:" in a runner's secrets file is
                granted only to jobs of those teams.
  audit         reads every job, log, artifact and egress event; submits and
                cancels nothing

The token is printed once; only its hash is stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := tokenFlags.client()
			if err != nil {
				return err
			}
			resp, err := cl.CreateToken(cmd.Context(), req)
			if err != nil {
				return fmt.Errorf("creating token: %w", err)
			}
			if tokenFlags.json {
				return printJSON(resp)
			}
			fmt.Println(resp.Token)
			uses := "unlimited"
			if resp.Uses > 0 {
				uses = fmt.Sprint(resp.Uses)
			}
			team := ""
			if resp.Team != "" {
				team = ", team " + resp.Team
			}
			fmt.Fprintf(os.Stderr, "%s token %s: expires %s, uses %s%s\n", resp.Kind, resp.ID, whenOr(resp.ExpiresAt, "never"), uses, team)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Kind, "kind", api.TokenRegistration, "registration, submit or audit")
	cmd.Flags().Var(durationFlag{&req.Expires}, "expires", "lifetime of the token, e.g. 30m, 12h or 90d (0 = never expires)")
	cmd.Flags().IntVar(&req.Uses, "uses", 1, "how many times a registration token can be used (0 = unlimited)")
	cmd.Flags().StringVar(&req.Note, "note", "", "free text stored with the token")
	cmd.Flags().StringVar(&req.Team, "team", "", "team of a submit token, recorded on its jobs (build secrets may be restricted to teams)")
	tokenFlags = addClientFlags(cmd, true)

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens: id, kind, team, note, expiry, uses left, revoked (never the secrets)",
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
			return printJSONList(ts)
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tKIND\tTEAM\tNOTE\tCREATED\tEXPIRES\tUSES LEFT\tSTATUS")
		for _, t := range ts {
			uses, status := "unlimited", "active"
			if t.ExpiresAt != nil {
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
				status = "revoked " + formatTime(*t.RevokedAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Kind, orDash(t.Team), orDash(t.Note),
				formatTime(t.CreatedAt), whenOr(t.ExpiresAt, "never"), uses, status)
		}
		return tw.Flush()
	}

	revoke := &cobra.Command{
		Use:   "revoke ID|TOKEN",
		Short: "Revoke a registration, submit or audit token: every call with it fails from now on",
		Long: `Revoke a token by its id, as "cleanroom token list" shows it, or by the
token itself (crs_..., crg_..., cru_...: only its id, the part between the
prefix and the dot, is sent to the coordinator). Jobs already submitted with a revoked submit
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
		id, err := tokenID(args[0])
		if err != nil {
			return err
		}
		t, err := cl.RevokeToken(cmd.Context(), id)
		if err != nil {
			return fmt.Errorf("revoking token %s: %w", id, err)
		}
		if rf.json {
			return printJSON(t)
		}
		fmt.Printf("%s token %s revoked at %s\n", t.Kind, t.ID, whenOr(t.RevokedAt, "-"))
		return nil
	}
	tokenCmd.AddCommand(cmd, list, revoke)
	rootCmd.AddCommand(tokenCmd)
}

var tokenFlags *clientFlags

// revocablePrefixes are the prefixes of the tokens "token revoke" takes
// whole (coordinator.Prefix*; runner tokens are revoked with "runner rm").
var revocablePrefixes = []string{"crs_", "crg_", "cru_"}

// tokenID returns the id of a token given by id ("t-…") or whole
// ("<prefix><id>.<secret>"), so the secret itself never leaves the machine.
func tokenID(arg string) (string, error) {
	arg = strings.TrimSpace(arg)
	for _, p := range revocablePrefixes {
		if rest, ok := strings.CutPrefix(arg, p); ok {
			id, _, ok := strings.Cut(rest, ".")
			if !ok || id == "" {
				return "", fmt.Errorf("reading token: %s... is not a whole token (<prefix><id>.<secret>); give its id as \"cleanroom token list\" shows it", p)
			}
			return id, nil
		}
	}
	switch {
	case strings.HasPrefix(arg, "cra_"):
		return "", errors.New("the admin token cannot be revoked: replace the server's admin token file and restart it")
	case strings.HasPrefix(arg, "crr_"):
		return "", errors.New("a runner token is revoked with \"cleanroom runner rm RUNNER\"")
	case strings.Contains(arg, "."):
		return "", errors.New("reading token: not a cleanroom registration, submit or audit token")
	}
	return arg, nil
}
