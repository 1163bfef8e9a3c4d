package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// lockedBuffer is a process's output read while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// `cleanroom logs -f` and `cleanroom egress --follow` given two coordinators
// on one store resume on the second when the first dies mid-stream, from
// their offset and cursor: every line and every event printed once.
func TestFollowersResumeOnAnotherCoordinator(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "shared.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	admin := coordinator.NewAdminToken()
	start := func(name string) (string, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv, err := coordinator.New(context.Background(), coordinator.Config{DataDir: filepath.Join(dir, name), AdminToken: admin, Store: st, LeaseTTL: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: srv.Handler()}
		go hs.Serve(ln)
		var once sync.Once
		kill := func() { once.Do(func() { hs.Close(); srv.Close() }) } // abruptly, as a killed process
		t.Cleanup(kill)
		return "http://" + ln.Addr().String(), kill
	}
	urlA, killA := start("a")
	urlB, _ := start("b")
	ctx := context.Background()
	runner := registerRunner(t, urlB, admin)
	job, err := api.NewClient(urlB, admin).SubmitGit(ctx, api.JobSpec{Build: api.Build{Script: "npm test"}},
		api.Source{Kind: api.SourceGit, URL: "https://git.example/app.git", Commit: strings.Repeat("a", 40)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(5 * time.Second)})
	if err != nil || len(resp.Claims) != 1 {
		t.Fatalf("claim: %+v %v", resp, err)
	}
	lease := resp.Claims[0].Lease.Token
	var off, seq int64
	send := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if off, err = runner.AppendLog(ctx, job.ID, lease, off, []byte(fmt.Sprintf("line %03d\n", i))); err != nil {
				t.Fatal(err)
			}
			if err := runner.PostEgress(ctx, job.ID, lease, seq, []api.EgressEvent{{Proto: "dns", Domain: fmt.Sprintf("d%03d.example", i), Verdict: api.VerdictDeny, Time: time.Now()}}); err != nil {
				t.Fatal(err)
			}
			seq++
		}
	}
	send(0, 50)

	both := urlA + "," + urlB
	logs, _, logsErr := cliCmd(t, both, admin, "logs", "-f", job.ID)
	var logsOut lockedBuffer
	logs.Stdout = &logsOut
	egress, _, egressErr := cliCmd(t, both, admin, "egress", "--follow", "--job", job.ID, "--limit", "100")
	var egressOut lockedBuffer
	egress.Stdout = &egressOut
	for _, c := range []interface{ Start() error }{logs, egress} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitOutput := func(what string, out *lockedBuffer, want string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never printed %q:\n%s", what, want, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOutput("logs -f", &logsOut, "line 049")
	waitOutput("egress --follow", &egressOut, "d049.example")
	killA()
	send(50, 100)
	if err := runner.Result(ctx, job.ID, api.ResultRequest{Token: lease, State: api.StateSucceeded, LogSize: off}); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]interface{ Wait() error }{"logs -f": logs, "egress --follow": egress} {
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v\nstderr: %s%s", name, err, logsErr, egressErr)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not end", name)
		}
	}
	for i := range 100 {
		if n := strings.Count(logsOut.String(), fmt.Sprintf("line %03d\n", i)); n != 1 {
			t.Fatalf("logs -f printed line %03d %d times, want once:\n%s\nstderr: %s", i, n, logsOut.String(), logsErr)
		}
		if n := strings.Count(egressOut.String(), fmt.Sprintf("d%03d.example", i)); n != 1 {
			t.Fatalf("egress --follow printed event %d %d times, want once:\n%s\nstderr: %s", i, n, egressOut.String(), egressErr)
		}
	}
}
