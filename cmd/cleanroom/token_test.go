package main

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

// One duration syntax everywhere: --expires takes days like --retention;
// the team is stored and listed; "token revoke" takes the whole token as
// well as its id; tables print times with their zone.
func TestTokenCreateTakesDaysListsTeamAndRevokeTakesTheWholeToken(t *testing.T) {
	url, admin := startCoordinator(t)
	run := func(args ...string) string {
		t.Helper()
		cmd, stdout, stderr := cliCmd(t, url, admin, args...)
		if err := cmd.Run(); err != nil {
			t.Fatalf("cleanroom %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return stdout.String()
	}
	var tok api.TokenResponse
	if err := json.Unmarshal([]byte(run("token", "create", "--kind", "submit", "--team", "web", "--expires", "90d", "--json")), &tok); err != nil {
		t.Fatal(err)
	}
	if tok.Team != "web" || tok.ExpiresAt == nil {
		t.Fatalf("created %+v", tok)
	}
	if d := time.Until(*tok.ExpiresAt); d < 89*24*time.Hour || d > 90*24*time.Hour {
		t.Fatalf("expires in %s, want 90 days", d)
	}
	table := run("token", "list")
	row := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(tok.ID) + `\s+submit\s+web\s+-\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)\s`)
	if !row.MatchString(table) {
		t.Fatalf("token list row without team or zone:\n%s", table)
	}
	out := run("token", "revoke", tok.Token)
	if !strings.Contains(out, tok.ID+" revoked at") || strings.Contains(out, tok.Token) {
		t.Fatalf("revoke printed %q", out)
	}
	var ts []api.TokenInfo
	if err := json.Unmarshal([]byte(run("token", "list", "--json")), &ts); err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].RevokedAt == nil {
		t.Fatalf("after revoke: %+v", ts)
	}
}

func TestTokenIDFromIDOrWholeToken(t *testing.T) {
	cases := []struct{ arg, id, err string }{
		{"t-0123ab", "t-0123ab", ""},
		{"crs_t-0123ab.c2VjcmV0", "t-0123ab", ""},
		{"crg_t-9.x", "t-9", ""},
		{" cru_t-7.y\n", "t-7", ""},
		{"crs_t-0123ab", "", "not a whole token"},
		{"cra_abcdef", "", "admin token cannot be revoked"},
		{"crr_r-1.x", "", "runner rm"},
		{"xyz_t-1.secret", "", "not a cleanroom"},
	}
	for _, tc := range cases {
		id, err := tokenID(tc.arg)
		if tc.err == "" && (err != nil || id != tc.id) {
			t.Errorf("tokenID(%q) = %q, %v; want %q", tc.arg, id, err, tc.id)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("tokenID(%q) = %q, %v; want an error with %q", tc.arg, id, err, tc.err)
		}
	}
}

// An unknown --state is refused before any request, listing the states;
// the coordinator refuses it too.
func TestJobsStateIsValidated(t *testing.T) {
	url, admin := startCoordinator(t)
	cmd, _, stderr := cliCmd(t, url, admin, "jobs", "--state", "done")
	if err := cmd.Run(); err == nil {
		t.Fatal("jobs --state done succeeded")
	}
	if !strings.Contains(stderr.String(), `"done"`) || !strings.Contains(stderr.String(), strings.Join(api.JobStates, ", ")) {
		t.Fatalf("stderr %q does not list the states", stderr)
	}
	if _, err := api.NewClient(url, admin).ListJobs(t.Context(), api.JobFilter{State: "done"}); !errors.Is(err, api.ErrInvalid) {
		t.Fatalf("coordinator answered %v, want invalid", err)
	}
	cmd, stdout, stderr := cliCmd(t, url, admin, "jobs", "--state", "queued")
	if err := cmd.Run(); err != nil {
		t.Fatalf("jobs --state queued: %v %s", err, stderr)
	}
	if !strings.HasPrefix(stdout.String(), "JOB") {
		t.Fatalf("jobs printed %q", stdout)
	}
}

// --json prints an array for every list, [] when it is empty, and one
// object for one thing.
func TestJSONListsAreArraysEvenWhenEmpty(t *testing.T) {
	url, admin := startCoordinator(t)
	for _, args := range [][]string{{"jobs"}, {"runners"}, {"token", "list"}, {"jobs", "--state", "lost"}} {
		cmd, stdout, stderr := cliCmd(t, url, admin, append(args, "--json")...)
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %v %s", args, err, stderr)
		}
		if got := strings.TrimSpace(stdout.String()); got != "[]" {
			t.Errorf("%v --json printed %q, want []", args, got)
		}
	}
}
