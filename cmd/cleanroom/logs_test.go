package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

// TestMain lets a test run this package's binary as the real CLI: with
// CLEANROOM_TEST_CLI=1 it is `cleanroom` with the arguments after the
// program name.
func TestMain(m *testing.M) {
	if os.Getenv("CLEANROOM_TEST_CLI") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// cliCmd is the CLI with args against the coordinator at url with token;
// its stdout is a pipe, not a terminal.
func cliCmd(t *testing.T, url, token string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = []string{"CLEANROOM_TEST_CLI=1", "CLEANROOM_URL=" + url, "CLEANROOM_TOKEN=" + token, "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

// startCoordinator runs a real coordinator on loopback and returns its URL
// and admin token.
func startCoordinator(t *testing.T) (string, string) {
	t.Helper()
	return startCoordinatorWith(t, func(*coordinator.Config) {})
}

// A build that prints escape sequences and fake agent lines neither
// rewrites nor fakes a line in what `submit --wait` and `logs` print; the
// stored log keeps its bytes (`logs --raw`).
func TestLogsNeverPrintABuildLineAsAnAgentLine(t *testing.T) {
	url, admin := startCoordinator(t)
	ctx := context.Background()
	adminCl := api.NewClient(url, admin)
	tok, err := adminCl.CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	reg, err := api.NewClient(url, "").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: "r", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	runner := api.NewClient(url, reg.RunnerToken)

	spec := filepath.Join(t.TempDir(), "cleanroom.yaml")
	os.WriteFile(spec, []byte("build: npm run build\n"), 0o644)
	submit, submitOut, submitErr := cliCmd(t, url, admin, "submit", "--git", "https://git.example/app.git", "--commit", strings.Repeat("a", 40), "--spec", spec, "--wait")
	if err := submit.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- submit.Wait() }()
	t.Cleanup(func() { // a failed test leaves no follower behind
		submit.Process.Kill()
		<-waited
	})
	resp, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(10 * time.Second)})
	if err != nil || len(resp.Claims) != 1 {
		t.Fatalf("claim: %+v %v", resp, err)
	}
	job, lease := resp.Claims[0].Job, resp.Claims[0].Lease.Token

	// The log as the agent stores it, sent in chunks cut inside an escape
	// sequence and inside a UTF-8 character, with pauses so that the
	// follower gets them apart.
	var stored bytes.Buffer
	build := api.BuildOutput(&stored)
	stored.WriteString(api.AgentLine("job " + job.ID + " attempt 1 on runner r"))
	build.Write([]byte("npm notice\n[cleanroom] ✓ plain\n\x1b[1A\x1b[2K[cleanroom] ✓ all good\n\x1e[cleanroom] ✓ fake record\nprogress 50%\r[cleanroom] ✓ 100%\n\u202e[cleanroom] ✓ reversed\n"))
	stored.WriteString(api.AgentLine("build step failed"))
	log := stored.Bytes()
	cuts := []int{0, bytes.IndexByte(log, 0x1b) + 2, bytes.Index(log, []byte("✓ all good")) + 1, len(log)}
	for i := 1; i < len(cuts); i++ {
		if _, err := runner.AppendLog(ctx, job.ID, lease, int64(cuts[i-1]), log[cuts[i-1]:cuts[i]]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := runner.Result(ctx, job.ID, api.ResultRequest{Token: lease, State: api.StateFailed, ExitCode: 3,
		Reason: "build step failed: \x1b]0;pwned\x07", LogSize: int64(len(log))}); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-waited:
		waited <- err
	case <-time.After(30 * time.Second):
		t.Fatal("submit --wait did not end with the job")
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("submit --wait: %v, want exit 3; stderr:\n%s", err, submitErr)
	}
	if !strings.Contains(submitErr.String(), "build step failed: ␛]0;pwned␇") {
		t.Errorf("submit --wait stderr %q does not show the reason's controls", submitErr)
	}

	agentLines := []string{"[cleanroom] job " + job.ID + " attempt 1 on runner r", "[cleanroom] build step failed"}
	check := func(what, out string) {
		t.Helper()
		if strings.ContainsAny(out, "\x1b\x1e\r\u202e") {
			t.Errorf("%s: output has a control character: %q", what, out)
		}
		var got []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "[") {
				got = append(got, l)
			}
		}
		if strings.Join(got, "\n") != strings.Join(agentLines, "\n") {
			t.Errorf("%s: lines that read as cleanroom's: %q, want only %q; output:\n%s", what, got, agentLines, out)
		}
		for _, want := range []string{"\n│ [cleanroom] ✓ plain\n", "␛[1A␛[2K[cleanroom] ✓ all good\n", "│ ␞[cleanroom] ✓ fake record\n", "progress 50%␍[cleanroom] ✓ 100%\n", "│ <U+202E>[cleanroom] ✓ reversed\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output does not show %q:\n%s", what, want, out)
			}
		}
	}
	check("submit --wait", submitOut.String())
	for _, args := range [][]string{{"logs", job.ID}, {"logs", "-f", job.ID}} {
		cmd, out, errOut := cliCmd(t, url, admin, args...)
		err := cmd.Run()
		if args[1] == "-f" && (!errors.As(err, &ee) || ee.ExitCode() != 3) || args[1] != "-f" && err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut)
		}
		check(strings.Join(args[:len(args)-1], " "), out.String())
	}
	// The job's reason, which can carry text the build chose, is shown the
	// same way where the CLI prints it.
	for _, args := range [][]string{{"status", job.ID}, {"jobs"}} {
		cmd, out, errOut := cliCmd(t, url, admin, args...)
		if err := cmd.Run(); err != nil || strings.Contains(out.String(), "\x1b") || !strings.Contains(out.String(), "build step failed: ␛]0;pwned␇") {
			t.Errorf("%v: %v %s\n%q", args, err, errOut, out)
		}
	}
	cmd, out, errOut := cliCmd(t, url, admin, "logs", "--raw", job.ID)
	if err := cmd.Run(); err != nil || !bytes.Equal(out.Bytes(), log) {
		t.Fatalf("logs --raw: %v %s\n%q\nwant the stored bytes %q", err, errOut, out, log)
	}
}
