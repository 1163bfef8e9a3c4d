package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// killable is a coordinator served by an http.Server the test can close
// abruptly: listener and open connections at once, no graceful shutdown,
// as when its process is killed.
type killable struct {
	URL  string
	hs   *http.Server
	srv  *coordinator.Server
	dead bool
}

func startKillable(t *testing.T, cfg coordinator.Config) *killable {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := coordinator.New(context.Background(), cfg)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	k := &killable{URL: "http://" + ln.Addr().String(), hs: &http.Server{Handler: srv.Handler()}, srv: srv}
	go k.hs.Serve(ln)
	t.Cleanup(k.kill)
	return k
}

func (k *killable) kill() {
	if !k.dead {
		k.dead = true
		k.hs.Close()
		k.srv.Close()
	}
}

// Two coordinators on one store; the agent knows both. Coordinator A, which
// the agent talks to, dies mid-job: heartbeats, log chunks and egress
// batches go on through B, and the job ends there with every log line and
// every egress event stored exactly once.
func TestAgentFailsOverToAnotherCoordinatorMidJob(t *testing.T) {
	testutil.CheckGoroutines(t)
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "shared.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	admin := coordinator.NewAdminToken()
	cfg := func(name string) coordinator.Config {
		return coordinator.Config{DataDir: filepath.Join(dir, name), AdminToken: admin, Store: st, LeaseTTL: 5 * time.Second, ReapInterval: time.Second}
	}
	a, b := startKillable(t, cfg("a")), startKillable(t, cfg("b"))
	ctx := context.Background()
	adminB := api.NewClient(b.URL, admin)
	tok, err := adminB.CreateToken(ctx, api.TokenRequest{Uses: 1, Expires: api.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	cfgPath := filepath.Join(dir, "agent", "agent.yaml")
	if _, err := agent.Register(ctx, agent.RegisterOptions{URL: a.URL + "," + b.URL, Token: tok.Token, Name: "ha",
		ConfigPath: cfgPath, HTTP: &http.Client{Transport: tr}}); err != nil {
		t.Fatal(err)
	}
	acfg, err := agent.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := acfg.URLs(); len(got) != 2 || got[0] != a.URL || got[1] != b.URL {
		t.Fatalf("registered config lists %v, want both coordinators", got)
	}

	const lines = 200
	half, killed := make(chan struct{}), make(chan struct{})
	ex := agent.ExecutorFunc(func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (agent.Result, error) {
		for i := range lines {
			if i == lines/2 {
				close(half)
				<-killed
			}
			fmt.Fprintf(out, "line %03d\n", i)
			rep.Event(api.EgressEvent{Proto: "dns", Domain: fmt.Sprintf("d%03d.example", i), Verdict: api.VerdictDeny, Rule: "default-deny"})
			time.Sleep(3 * time.Millisecond)
		}
		return agent.Result{}, nil
	})
	ag, err := agent.New(acfg, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	ag.Client().HTTP = &http.Client{Transport: tr}
	ag.ClaimWait = 2 * time.Second
	ag.ReportTimeout = 20 * time.Second
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- ag.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })

	// Submitted to B, claimed by the agent long-polling A.
	data := tarGz(t, []entry{{name: "package.json", typ: tar.TypeReg, body: "{}"}})
	sum := sha256.Sum256(data)
	j, err := adminB.SubmitUpload(ctx, spec, hex.EncodeToString(sum[:]), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-half:
	case <-time.After(20 * time.Second):
		t.Fatal("the job did not start")
	}
	// A has stored the first half (its chunks and events went to A).
	waitUntil(t, 10*time.Second, "the first half stored", func() bool {
		var buf bytes.Buffer
		adminB.ReadLog(ctx, j.ID, 0, false, &buf)
		return strings.Contains(buf.String(), fmt.Sprintf("line %03d", lines/2-1))
	})
	if cur := ag.Client().Current(); cur != a.URL {
		t.Fatalf("the agent talks to %s before the kill, want A %s", cur, a.URL)
	}
	a.kill()
	close(killed)

	var got api.Job
	waitUntil(t, 30*time.Second, "the job to end", func() bool {
		got, err = adminB.GetJob(ctx, j.ID)
		return err == nil && api.Terminal(got.State)
	})
	var buf bytes.Buffer
	if _, err := adminB.ReadLog(ctx, j.ID, 0, false, &buf); err != nil {
		t.Fatal(err)
	}
	log := buf.String()
	if got.State != api.StateSucceeded || got.Attempts != 1 {
		t.Fatalf("job %s after %d attempt(s), want succeeded in one; log:\n%s", got.State, got.Attempts, log)
	}
	for i := range lines {
		if n := strings.Count(log, fmt.Sprintf("line %03d\n", i)); n != 1 {
			t.Fatalf("line %03d is in the log %d times, want once; log:\n%s", i, n, log)
		}
	}
	seen := map[string]int{}
	if err := adminB.QueryEgress(ctx, api.EgressFilter{Job: j.ID}, func(ev api.EgressEvent) error { seen[ev.Domain]++; return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range lines {
		if d := fmt.Sprintf("d%03d.example", i); seen[d] != 1 {
			t.Fatalf("event %s stored %d times, want once (%d distinct stored)", d, seen[d], len(seen))
		}
	}
	if len(seen) != lines {
		t.Fatalf("%d distinct events stored, want %d", len(seen), lines)
	}
	if cur := ag.Client().Current(); cur != b.URL {
		t.Fatalf("the agent talks to %s after the kill, want B %s", cur, b.URL)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
