package coordinator_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

func TestRegistrationRefusesExpiredUsedAndRevokedTokens(t *testing.T) {
	checkGoroutines(t)
	clk := &clock{}
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.Now = clk.Now })
	ctx := context.Background()
	admin := c.AdminClient()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	register := func(tok, name string) error {
		_, err := c.client("").Register(ctx, api.RegisterRequest{Token: tok, Name: name, PublicKey: pub})
		return err
	}

	once, err := admin.CreateToken(ctx, api.TokenRequest{Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	expiring, err := admin.CreateToken(ctx, api.TokenRequest{Expires: api.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	submit, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenSubmit})
	if err != nil {
		t.Fatal(err)
	}
	if err := register(once.Token, "first"); err != nil {
		t.Fatalf("registering with a fresh one-use token: %v", err)
	}
	clk.Advance(2 * time.Hour)

	tests := []struct {
		name  string
		token string
	}{
		{"used up", once.Token},
		{"expired", expiring.Token},
		{"wrong secret", once.Token[:len(once.Token)-4] + "AAAA"},
		{"submit token is not a registration token", submit.Token},
		{"admin token is not a registration token", c.Admin},
		{"garbage", "crg_nothing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, register(tc.token, "r-"+strings.ReplaceAll(tc.name, " ", "-")), api.ErrUnauthorized)
		})
	}
}

func TestRevokedRunnerGetsUnauthorizedOnEveryCall(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	runner, id := c.Register("build-1", nil)
	j := c.Submit(nil)
	cl, ok := claimOne(t, runner, time.Second)
	if !ok || cl.Job.ID != j.ID {
		t.Fatalf("claim before revoke: got %+v", cl)
	}
	if _, err := c.AdminClient().RemoveRunner(ctx, "build-1"); err != nil {
		t.Fatalf("removing runner by name: %v", err)
	}
	calls := map[string]func() error{
		"claim": func() error { _, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1}); return err },
		"heartbeat": func() error {
			_, err := runner.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: cl.Lease.Token})
			return err
		},
		"log": func() error { _, err := runner.AppendLog(ctx, j.ID, cl.Lease.Token, 0, []byte("x")); return err },
		"result": func() error {
			return runner.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded})
		},
		"egress": func() error {
			return runner.PostEgress(ctx, j.ID, cl.Lease.Token, 0, []api.EgressEvent{{Proto: "tcp", Verdict: "deny"}})
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) { wantStatus(t, call(), api.ErrUnauthorized) })
	}
	key, err := c.client("").RunnerKey(ctx, id)
	if err != nil || key.RevokedAt == nil || len(key.PublicKey) != ed25519.PublicKeySize {
		t.Fatalf("runner key after revoke: %+v, %v", key, err)
	}
	// The revoked runner's job goes back to the queue for someone else.
	other, _ := c.Register("build-2", nil)
	got, ok := claimOne(t, other, 10*time.Second)
	if !ok || got.Job.ID != j.ID || got.Lease.Token != cl.Lease.Token+1 {
		t.Fatalf("re-claim after revoke: got %+v ok=%v", got, ok)
	}
}

func TestRunnerTokenCannotUseAdminEndpoints(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	runner, _ := c.Register("r1", nil)
	_, err := runner.CreateToken(context.Background(), api.TokenRequest{})
	wantStatus(t, err, api.ErrForbidden)
	_, err = c.client("").ListJobs(context.Background(), api.JobFilter{})
	wantStatus(t, err, api.ErrUnauthorized)
}

// Each submit token sees, follows and cancels only the jobs submitted with
// it; to it, other jobs do not exist (404, not 403). An audit token reads
// everything and changes nothing; the admin token does everything.
func TestSubmitTokensSeeOnlyTheirOwnJobsAuditTokensSeeAll(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	admin := c.AdminClient()
	token := func(kind string) *api.Client {
		tok, err := admin.CreateToken(ctx, api.TokenRequest{Kind: kind})
		if err != nil {
			t.Fatal(err)
		}
		return c.client(tok.Token)
	}
	teamA, teamB, audit := token(api.TokenSubmit), token(api.TokenSubmit), token(api.TokenAudit)
	spec, src := gitSpec()
	jobA, err := teamA.SubmitGit(ctx, spec, src)
	if err != nil {
		t.Fatal(err)
	}
	jobB, err := teamB.SubmitGit(ctx, spec, src)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := c.Register("r", nil)
	for range 2 {
		cl, _ := claimOne(t, r, time.Second)
		if err := r.PostEgress(ctx, cl.Job.ID, cl.Lease.Token, 0, []api.EgressEvent{{Time: time.Now(), Proto: "tcp", Dst: "10.0.0.9:80", Verdict: "deny", Rule: "default-deny"}}); err != nil {
			t.Fatal(err)
		}
	}
	egressJobs := func(cl *api.Client, f api.EgressFilter) (jobs []string) {
		t.Helper()
		if err := cl.QueryEgress(ctx, f, func(e api.EgressEvent) error { jobs = append(jobs, e.Job); return nil }); err != nil {
			t.Fatal(err)
		}
		return jobs
	}
	listed := func(cl *api.Client) (ids []string) {
		t.Helper()
		js, err := cl.ListJobs(ctx, api.JobFilter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range js {
			ids = append(ids, j.ID)
		}
		return ids
	}

	if got, err := teamA.GetJob(ctx, jobA.ID); err != nil || got.Submitter == "" || got.Submitter == "admin" {
		t.Fatalf("own job: %+v %v", got, err)
	}
	_, err = teamA.GetJob(ctx, jobB.ID)
	wantStatus(t, err, api.ErrNotFound)
	_, err = teamA.CancelJob(ctx, jobB.ID)
	wantStatus(t, err, api.ErrNotFound)
	_, err = teamA.ListArtifacts(ctx, jobB.ID)
	wantStatus(t, err, api.ErrNotFound)
	if ids := listed(teamA); len(ids) != 1 || ids[0] != jobA.ID {
		t.Fatalf("team A lists %v", ids)
	}
	if jobs := egressJobs(teamA, api.EgressFilter{}); len(jobs) != 1 || jobs[0] != jobA.ID {
		t.Fatalf("team A reads egress of %v", jobs)
	}
	if jobs := egressJobs(teamA, api.EgressFilter{Job: jobB.ID}); len(jobs) != 0 {
		t.Fatalf("team A reads team B's egress: %v", jobs)
	}

	if ids := listed(audit); len(ids) != 2 {
		t.Fatalf("audit lists %v", ids)
	}
	if jobs := egressJobs(audit, api.EgressFilter{}); len(jobs) != 2 {
		t.Fatalf("audit reads egress of %v", jobs)
	}
	if _, err := audit.GetJob(ctx, jobB.ID); err != nil {
		t.Fatal(err)
	}
	_, err = audit.CancelJob(ctx, jobA.ID)
	wantStatus(t, err, api.ErrForbidden)
	_, err = audit.SubmitGit(ctx, spec, src)
	wantStatus(t, err, api.ErrForbidden)

	if _, err := teamA.CancelJob(ctx, jobA.ID); err != nil {
		t.Fatalf("cancelling own job: %v", err)
	}
	if ids := listed(admin); len(ids) != 2 {
		t.Fatalf("admin lists %v", ids)
	}
}

func TestRevokedTokenIsRefusedAtOnceAndListed(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	admin := c.AdminClient()
	tok, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenSubmit, Note: "team-a ci"})
	if err != nil {
		t.Fatal(err)
	}
	team := c.client(tok.Token)
	if _, err := team.ListJobs(ctx, api.JobFilter{}); err != nil {
		t.Fatal(err)
	}
	_, err = team.ListTokens(ctx)
	wantStatus(t, err, api.ErrForbidden)
	for range 2 { // revoking twice is fine
		info, err := admin.RevokeToken(ctx, tok.ID)
		if err != nil || info.RevokedAt == nil || info.Kind != api.TokenSubmit {
			t.Fatalf("revoke: %+v %v", info, err)
		}
	}
	_, err = team.ListJobs(ctx, api.JobFilter{})
	wantStatus(t, err, api.ErrUnauthorized)
	_, err = admin.RevokeToken(ctx, "t-nosuch")
	wantStatus(t, err, api.ErrNotFound)
	ts, err := admin.ListTokens(ctx)
	if err != nil || len(ts) != 1 || ts[0].ID != tok.ID || ts[0].Note != "team-a ci" || ts[0].RevokedAt == nil {
		t.Fatalf("tokens = %+v %v", ts, err)
	}
}

func TestClaimHandsSubmittedJobToWaitingRunnerAtOnce(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	runner, _ := c.Register("r1", nil)
	type res struct {
		cl api.Claim
		ok bool
		at time.Time
	}
	ch := make(chan res, 1)
	go func() {
		cl, ok := claimOne(t, runner, 20*time.Second)
		ch <- res{cl, ok, time.Now()}
	}()
	time.Sleep(200 * time.Millisecond) // let the claim start waiting
	submitted := time.Now()
	j := c.Submit(nil)
	r := <-ch
	if !r.ok || r.cl.Job.ID != j.ID {
		t.Fatalf("claim: got %+v", r)
	}
	if d := r.at.Sub(submitted); d > time.Second {
		t.Fatalf("submit to claim took %v; a waiting runner must get the job at once", d)
	}
	if r.cl.Lease.Token != 1 || r.cl.Job.State != api.StateRunning {
		t.Fatalf("lease = %+v state=%s", r.cl.Lease, r.cl.Job.State)
	}
}

func TestClaimIsFairBetweenTwoRunnersAndMatchesLabels(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	a, idA := c.Register("a", map[string]string{"arch": "amd64"})
	b, idB := c.Register("b", map[string]string{"arch": "amd64", "gpu": "yes"})
	counts := map[string]int{}
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		got := make([]api.Claim, 2)
		for i, cl := range []*api.Client{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], _ = claimOne(t, cl, 10*time.Second)
			}()
		}
		time.Sleep(100 * time.Millisecond)
		c.Submit(map[string]string{"arch": "amd64"})
		c.Submit(map[string]string{"arch": "amd64"})
		wg.Wait()
		for _, g := range got {
			counts[g.Job.RunnerID]++
		}
	}
	if counts[idA] != 5 || counts[idB] != 5 {
		t.Fatalf("jobs per runner = %v, want 5 each", counts)
	}
	// A job that needs gpu=yes only goes to b, even though a waits first.
	done := make(chan api.Claim, 1)
	go func() { cl, _ := claimOne(t, a, 700*time.Millisecond); done <- cl }()
	time.Sleep(100 * time.Millisecond)
	gpu := c.Submit(map[string]string{"gpu": "yes"})
	if cl := <-done; cl.Job.ID != "" {
		t.Fatalf("runner without gpu label claimed %s", cl.Job.ID)
	}
	cl, ok := claimOne(t, b, time.Second)
	if !ok || cl.Job.ID != gpu.ID {
		t.Fatalf("gpu runner claim = %+v", cl)
	}
}

// A job that asks for more than a runner gives is left for a runner that
// has it, even when the small runner has waited longer; jobs without
// resources go anywhere.
func TestClaimLeavesJobsThatDoNotFitToBiggerRunners(t *testing.T) {
	c := startCoord(t)
	small, _ := c.Register("small", nil)
	big, idBig := c.Register("big", nil)
	smallCap := &api.Resources{Memory: 2 << 30, CPUs: 2, PIDs: 1024, Disk: 4 << 30}
	bigCap := &api.Resources{Memory: 16 << 30, CPUs: 8, PIDs: 4096, Disk: 64 << 30}
	spec, src := gitSpec()
	spec.Resources = api.Resources{Memory: 8 << 30}
	bigJob, err := c.AdminClient().SubmitGit(context.Background(), spec, src)
	if err != nil {
		t.Fatal(err)
	}
	if cl, ok := claimFitting(t, small, smallCap, 300*time.Millisecond); ok {
		t.Fatalf("2GiB runner claimed a job asking 8GiB: %s", cl.Job.ID)
	}
	// A job that fits anywhere, submitted after it, goes to the small one.
	plain := c.Submit(nil)
	if cl, ok := claimFitting(t, small, smallCap, time.Second); !ok || cl.Job.ID != plain.ID {
		t.Fatalf("small runner claim = %+v, want %s", cl, plain.ID)
	}
	if cl, ok := claimFitting(t, big, bigCap, time.Second); !ok || cl.Job.ID != bigJob.ID || cl.Job.RunnerID != idBig {
		t.Fatalf("big runner claim = %+v, want %s", cl, bigJob.ID)
	}
}

func TestExpiredLeaseRequeuesJobAndFencesOutTheOldRunner(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withTTL(600*time.Millisecond))
	ctx := context.Background()
	a, _ := c.Register("a", nil)
	b, idB := c.Register("b", nil)
	j := c.Submit(nil)
	ca, _ := claimOne(t, a, time.Second)
	if _, err := a.AppendLog(ctx, j.ID, ca.Lease.Token, 0, []byte("attempt one\n")); err != nil {
		t.Fatal(err)
	}
	// a stops heartbeating; b is waiting and gets the job after expiry.
	cb, ok := claimOne(t, b, 10*time.Second)
	if !ok || cb.Job.ID != j.ID || cb.Job.RunnerID != idB || cb.Lease.Token <= ca.Lease.Token || cb.Job.Attempts != 2 {
		t.Fatalf("re-claim = %+v", cb)
	}
	if cb.Lease.LogOffset <= int64(len("attempt one\n")) {
		t.Fatalf("second attempt's log starts at %d, want after the first attempt and the re-queue note", cb.Lease.LogOffset)
	}
	stale := map[string]func() error{
		"heartbeat": func() error {
			_, err := a.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: ca.Lease.Token})
			return err
		},
		"log": func() error { _, err := a.AppendLog(ctx, j.ID, ca.Lease.Token, 12, []byte("late")); return err },
		"egress": func() error {
			return a.PostEgress(ctx, j.ID, ca.Lease.Token, 0, []api.EgressEvent{{Proto: "dns", Verdict: "deny"}})
		},
		"artifact": func() error {
			_, err := a.UploadArtifact(ctx, j.ID, ca.Lease.Token, "x", "file", sha(nil), bytes.NewReader(nil))
			return err
		},
		"result": func() error {
			return a.Result(ctx, j.ID, api.ResultRequest{Token: ca.Lease.Token, State: api.StateSucceeded})
		},
		"stale token from the new runner": func() error {
			_, err := b.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: ca.Lease.Token})
			return err
		},
	}
	for name, call := range stale {
		t.Run(name, func(t *testing.T) { wantStatus(t, call(), api.ErrConflict) })
	}
	if err := b.Result(ctx, j.ID, api.ResultRequest{Token: cb.Lease.Token, State: api.StateSucceeded, LogSize: cb.Lease.LogOffset}); err != nil {
		t.Fatalf("result from current lease: %v", err)
	}
	got, _ := c.AdminClient().GetJob(ctx, j.ID)
	if got.State != api.StateSucceeded || got.Attempts != 2 {
		t.Fatalf("job = %+v", got)
	}
}

func TestJobIsLostAfterMaxAttempts(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withTTL(300*time.Millisecond))
	ctx := context.Background()
	a, _ := c.Register("a", nil)
	spec, src := gitSpec()
	spec.MaxAttempts = 1
	j, err := c.AdminClient().SubmitGit(ctx, spec, src)
	if err != nil {
		t.Fatal(err)
	}
	claimOne(t, a, time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := c.AdminClient().GetJob(ctx, j.ID)
		if got.State == api.StateLost {
			if !strings.Contains(got.Reason, "lease expired") {
				t.Fatalf("lost reason = %q", got.Reason)
			}
			// The coordinator's line in the log is one of cleanroom's own.
			var buf bytes.Buffer
			c.AdminClient().ReadLog(ctx, j.ID, 0, false, &buf)
			if want := "\n" + api.Record("[cleanroom: "+got.Reason+"]"); !strings.HasSuffix(buf.String(), want) {
				t.Fatalf("log = %q, want it to end with %q", buf.String(), want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job state %s, want lost", got.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCancelReachesQueuedAndRunningJobs(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	admin := c.AdminClient()
	queued := c.Submit(map[string]string{"never": "matched"})
	got, err := admin.CancelJob(ctx, queued.ID)
	if err != nil || got.State != api.StateCanceled {
		t.Fatalf("cancel queued: %+v %v", got, err)
	}

	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	hb := make(chan api.HeartbeatResponse, 1)
	go func() {
		resp, err := r.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: cl.Lease.Token, Wait: api.Duration(2 * time.Second)})
		if err != nil {
			t.Errorf("heartbeat: %v", err)
		}
		hb <- resp
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if _, err := admin.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	resp := <-hb
	if !resp.Cancel {
		t.Fatal("waiting heartbeat did not report the cancel")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancel took %v to reach the heartbeat", d)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateCanceled, ExitCode: -1}); err != nil {
		t.Fatal(err)
	}
}

func TestLogAppendIsIdempotentAndRefusesGaps(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.MaxLog = 64 })
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	tok := cl.Lease.Token
	steps := []struct {
		name     string
		offset   int64
		data     string
		wantNext int64
		wantGap  int64 // expected offset in a 409, or -1
	}{
		{"first chunk", 0, "hello ", 6, -1},
		{"same chunk again", 0, "hello ", 6, -1},
		{"overlapping chunk", 3, "lo world\n", 12, -1},
		{"gap", 20, "late", 0, 12},
		{"prefix of stored bytes", 0, "hel", 12, -1},
	}
	for _, st := range steps {
		next, err := r.AppendLog(ctx, j.ID, tok, st.offset, []byte(st.data))
		if st.wantGap >= 0 {
			exp, ok := api.ExpectedOffset(err)
			if !errors.Is(err, api.ErrConflict) || !ok || exp != st.wantGap {
				t.Fatalf("%s: err=%v expected=%d, want 409 with %d", st.name, err, exp, st.wantGap)
			}
			continue
		}
		if err != nil || next != st.wantNext {
			t.Fatalf("%s: next=%d err=%v, want %d", st.name, next, err, st.wantNext)
		}
	}
	var buf bytes.Buffer
	if _, err := c.AdminClient().ReadLog(ctx, j.ID, 0, false, &buf); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "hello world\n" {
		t.Fatalf("log = %q", buf.String())
	}
	// Past the 64-byte cap: a marker, later bytes acknowledged and dropped.
	big := strings.Repeat("x", 100)
	next, err := r.AppendLog(ctx, j.ID, tok, 12, []byte(big))
	if err != nil || next != 112 {
		t.Fatalf("append past cap: next=%d err=%v", next, err)
	}
	if next, err = r.AppendLog(ctx, j.ID, tok, 112, []byte("more")); err != nil || next != 116 {
		t.Fatalf("append after cap: next=%d err=%v", next, err)
	}
	// The result is refused until the coordinator holds every byte.
	err = r.Result(ctx, j.ID, api.ResultRequest{Token: tok, State: api.StateSucceeded, LogSize: 200})
	if exp, _ := api.ExpectedOffset(err); !errors.Is(err, api.ErrConflict) || exp != 116 {
		t.Fatalf("result with missing log: %v", err)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: tok, State: api.StateSucceeded, LogSize: 116}); err != nil {
		t.Fatal(err)
	}
	buf.Reset()
	c.AdminClient().ReadLog(ctx, j.ID, 0, true, &buf)
	if !strings.HasPrefix(buf.String(), "hello world\n"+strings.Repeat("x", 52)) || !strings.Contains(buf.String(), "\n"+string(api.RecordMarker)+"[cleanroom: log truncated") || !strings.HasSuffix(buf.String(), "dropped]\n") {
		t.Fatalf("truncated log = %q", buf.String())
	}
}

func TestLogFollowStreamsUntilJobEnds(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	var buf bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := c.AdminClient().ReadLog(ctx, j.ID, 0, true, &buf); done <- err }()
	var off int64
	for i := 0; i < 5; i++ {
		off, _ = r.AppendLog(ctx, j.ID, cl.Lease.Token, off, []byte("line\n"))
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("follow ended before the job did")
	case <-time.After(100 * time.Millisecond):
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateFailed, ExitCode: 2, LogSize: off}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil || buf.String() != strings.Repeat("line\n", 5) {
			t.Fatalf("followed log = %q, %v", buf.String(), err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end with the job")
	}
}

func TestCoordinatorRestartMidJobLosesNothing(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withTTL(2*time.Second))
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	tok := cl.Lease.Token
	if _, err := r.AppendLog(ctx, j.ID, tok, 0, []byte("before restart\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.PostEgress(ctx, j.ID, tok, 0, []api.EgressEvent{{Proto: "tcp", Verdict: "deny", Dst: "10.0.0.1:443"}}); err != nil {
		t.Fatal(err)
	}
	c.Restart()
	// The lease survives (the outage is not counted), writes continue.
	if _, err := r.Heartbeat(ctx, j.ID, api.HeartbeatRequest{Token: tok}); err != nil {
		t.Fatalf("heartbeat after restart: %v", err)
	}
	next, err := r.AppendLog(ctx, j.ID, tok, 0, []byte("before restart\nafter restart\n"))
	if err != nil || next != 29 {
		t.Fatalf("append after restart: %d %v", next, err)
	}
	if err := r.PostEgress(ctx, j.ID, tok, 0, []api.EgressEvent{{Proto: "tcp", Verdict: "deny", Dst: "10.0.0.1:443"}, {Proto: "dns", Verdict: "deny", Domain: "exfil.example"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: tok, State: api.StateSucceeded, LogSize: next}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c.AdminClient().ReadLog(ctx, j.ID, 0, false, &buf)
	if buf.String() != "before restart\nafter restart\n" {
		t.Fatalf("log after restart = %q", buf.String())
	}
	var n int
	c.AdminClient().QueryEgress(ctx, api.EgressFilter{Job: j.ID}, func(api.EgressEvent) error { n++; return nil })
	if n != 2 {
		t.Fatalf("egress events = %d, want 2 (a retried batch is stored once)", n)
	}
}

func sha(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func TestSubmitRefusesMalformedSpecsWithEveryFieldError(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.MaxUpload = 64 << 10 })
	ctx := context.Background()
	admin := c.AdminClient()
	tests := []struct {
		name       string
		body       string
		wantFields []string
	}{
		{"many bad fields",
			`{"spec":{"timeout":"-5s","secrets":["bad name"],"network":{"on_violation":"ignore","extra":["nohost"]},"resources":{"memory":"1k","pids":3},"artifacts":["../x","/abs"]},
			  "source":{"kind":"git","url":"","commit":"abc"}}`,
			[]string{"spec.build", "spec.timeout", "spec.secrets[0]", "spec.network.on_violation", "spec.network.extra[0]", "spec.resources.memory", "spec.resources.pids", "spec.artifacts[0]", "spec.artifacts[1]", "source.url", "source.commit"}},
		{"unknown field", `{"spec":{"build":"x","timout":"5m"},"source":{"kind":"git"}}`, []string{"spec.timout"}},
		{"wrong type", `{"spec":{"build":"x","labels":["a"]},"source":{"kind":"git"}}`, []string{"spec.labels"}},
		{"upload as json", `{"spec":{"build":"x"},"source":{"kind":"upload","sha256":"` + strings.Repeat("a", 64) + `"}}`, []string{"source.kind"}},
		{"git url option injection", `{"spec":{"build":"x"},"source":{"kind":"git","url":"--upload-pack=x","commit":"` + strings.Repeat("a", 40) + `"}}`, []string{"source.url"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", c.URL+"/v1/jobs", strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+c.Admin)
			req.Header.Set("Content-Type", "application/json")
			resp, err := (&http.Client{Transport: c.tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			for _, f := range tc.wantFields {
				if !strings.Contains(string(body), `"field":"`+f+`"`) {
					t.Errorf("no error for field %s in %s", f, body)
				}
			}
		})
	}

	t.Run("oversized upload", func(t *testing.T) {
		big := make([]byte, 256<<10)
		rand.Read(big)
		data := gz(t, big)
		_, err := admin.SubmitUpload(ctx, api.JobSpec{Build: api.Build{Script: "x"}}, sha(data), bytes.NewReader(data))
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 400 || len(ae.Fields) == 0 || ae.Fields[0].Field != "source" {
			t.Fatalf("oversized upload: %v", err)
		}
	})
	t.Run("upload with wrong sha256", func(t *testing.T) {
		data := gz(t, []byte("tar"))
		_, err := admin.SubmitUpload(ctx, api.JobSpec{Build: api.Build{Script: "x"}}, sha([]byte("other")), bytes.NewReader(data))
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != 400 || ae.Fields[0].Field != "sha256" {
			t.Fatalf("wrong sha256: %v", err)
		}
	})
	t.Run("upload that is not gzip", func(t *testing.T) {
		data := []byte("plain text")
		_, err := admin.SubmitUpload(ctx, api.JobSpec{Build: api.Build{Script: "x"}}, sha(data), bytes.NewReader(data))
		wantStatus(t, err, api.ErrInvalid)
	})
	t.Run("valid upload records sha256 and serves it to the lease holder", func(t *testing.T) {
		data := gz(t, []byte("tar bytes"))
		j, err := admin.SubmitUpload(ctx, api.JobSpec{Build: api.Build{Argv: []string{"npm", "run", "build"}}}, sha(data), bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if j.Source.SHA256 != sha(data) || j.Source.Size != int64(len(data)) || j.MaxAttempts != 3 {
			t.Fatalf("job source = %+v", j.Source)
		}
		r, _ := c.Register("r", nil)
		cl, _ := claimOne(t, r, time.Second)
		var buf bytes.Buffer
		if _, err := r.DownloadSource(ctx, j.ID, cl.Lease.Token, &buf); err != nil || !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("download: %v", err)
		}
		_, err = r.DownloadSource(ctx, j.ID, cl.Lease.Token+1, io.Discard)
		wantStatus(t, err, api.ErrConflict)
	})
}

func TestEgressEventsAreStoredOnceAndQueryable(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, rid := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	t0 := time.Now().UTC().Truncate(time.Millisecond)
	evs := []api.EgressEvent{
		{Time: t0, Proto: "dns", Domain: "registry.lab", Answer: "10.0.0.2", Verdict: "allow", Rule: "registry", Runner: "spoofed"},
		{Time: t0.Add(time.Second), Proto: "tcp", Dst: "169.254.169.254:80", Verdict: "deny", Rule: "default-deny"},
		{Time: t0.Add(2 * time.Second), Proto: "dns", Domain: "exfil.example", Verdict: "deny", Rule: "dns-not-allowed"},
	}
	for i := 0; i < 2; i++ { // the retry must not duplicate
		if err := r.PostEgress(ctx, j.ID, cl.Lease.Token, 0, evs); err != nil {
			t.Fatal(err)
		}
	}
	bad := []api.EgressEvent{{Proto: "tcp", Verdict: "maybe"}}
	wantStatus(t, r.PostEgress(ctx, j.ID, cl.Lease.Token, 3, bad), api.ErrInvalid)

	tests := []struct {
		name string
		f    api.EgressFilter
		want int
	}{
		{"all of the job", api.EgressFilter{Job: j.ID}, 3},
		{"denied only", api.EgressFilter{Verdict: "deny"}, 2},
		{"by runner", api.EgressFilter{Runner: rid}, 3},
		{"spoofed runner field ignored", api.EgressFilter{Runner: "spoofed"}, 0},
		{"since", api.EgressFilter{Since: t0.Add(500 * time.Millisecond)}, 2},
		{"until", api.EgressFilter{Until: t0.Add(500 * time.Millisecond)}, 1},
		{"other job", api.EgressFilter{Job: "j-none"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []api.EgressEvent
			err := c.AdminClient().QueryEgress(ctx, tc.f, func(e api.EgressEvent) error { got = append(got, e); return nil })
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d events (%v), want %d", len(got), err, tc.want)
			}
			for _, e := range got {
				if e.Runner != rid || e.Job != j.ID {
					t.Fatalf("event runner/job = %s/%s", e.Runner, e.Job)
				}
			}
		})
	}
}

func TestArtifactsAreVerifiedListedAndDownloaded(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	data := []byte(`{"bomFormat":"CycloneDX"}`)
	_, err := r.UploadArtifact(ctx, j.ID, cl.Lease.Token, "sbom.cdx.json", api.KindSBOM, sha([]byte("x")), bytes.NewReader(data))
	wantStatus(t, err, api.ErrInvalid)
	_, err = r.UploadArtifact(ctx, j.ID, cl.Lease.Token, "../../etc/passwd", api.KindFile, sha(data), bytes.NewReader(data))
	if err == nil {
		t.Fatal("artifact name with .. accepted")
	}
	// Names that would rewrite a terminal or reorder text: 400 naming the field.
	for _, name := range []string{"dist/\x1b[2Japp.js", "dist/a\nb", "dist/a\x7f", "dist/a\u009bb", "dist/evil\u202esj.exe", "dist/a\u2066b"} {
		_, err := r.UploadArtifact(ctx, j.ID, cl.Lease.Token, name, api.KindFile, sha(data), bytes.NewReader(data))
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest || len(ae.Fields) != 1 || ae.Fields[0].Field != "name" {
			t.Errorf("uploading %q: %v, want 400 naming the field name", name, err)
		}
	}
	a, err := r.UploadArtifact(ctx, j.ID, cl.Lease.Token, "sbom.cdx.json", api.KindSBOM, sha(data), bytes.NewReader(data))
	if err != nil || a.SHA256 != sha(data) || a.Kind != api.KindSBOM {
		t.Fatalf("upload: %+v %v", a, err)
	}
	if _, err := r.UploadArtifact(ctx, j.ID, cl.Lease.Token, "dist/app.js", api.KindFile, sha([]byte("js")), strings.NewReader("js")); err != nil {
		t.Fatal(err)
	}
	list, err := c.AdminClient().ListArtifacts(ctx, j.ID)
	if err != nil || len(list) != 2 || list[0].Name != "dist/app.js" {
		t.Fatalf("list = %+v %v", list, err)
	}
	var buf bytes.Buffer
	if _, err := c.AdminClient().DownloadArtifact(ctx, j.ID, "dist/app.js", &buf); err != nil || buf.String() != "js" {
		t.Fatalf("download = %q %v", buf.String(), err)
	}
	_, err = c.AdminClient().DownloadArtifact(ctx, j.ID, "missing", io.Discard)
	wantStatus(t, err, api.ErrNotFound)
}

// Retention deletes jobs that ended long enough ago with everything stored
// for them, and the blobs nothing refers to any more; it keeps queued and
// recent jobs, and a source blob a remaining job still uses.
func TestRetentionPurgesOldJobsAndUnreferencedBlobs(t *testing.T) {
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	c := startCoord(t, func(cfg *coordinator.Config) { cfg.Now, cfg.Retention = now, 24*time.Hour })
	ctx := context.Background()
	admin := c.AdminClient()
	r, _ := c.Register("r", nil)
	src := tgz(t, "package.json", `{"name":"app"}`)
	// old: runs, logs, reports egress and an artifact, then ends.
	old, err := admin.SubmitUpload(ctx, gitSpecOnly(), sha(src), bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	// waiting: the same source, still queued when retention runs.
	waiting, err := admin.SubmitUpload(ctx, gitSpecOnly(), sha(src), bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	cl, _ := claimOne(t, r, time.Second)
	if cl.Job.ID != old.ID {
		t.Fatalf("claimed %s, want %s", cl.Job.ID, old.ID)
	}
	art := []byte("only the old job built this")
	if _, err := r.UploadArtifact(ctx, old.ID, cl.Lease.Token, "dist/app.js", api.KindFile, sha(art), bytes.NewReader(art)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AppendLog(ctx, old.ID, cl.Lease.Token, 0, []byte("building\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.PostEgress(ctx, old.ID, cl.Lease.Token, 0, []api.EgressEvent{{Time: now(), Proto: "tcp", Dst: "10.0.0.9:80", Verdict: "deny", Rule: "default-deny"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Result(ctx, old.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateSucceeded, LogSize: 9}); err != nil {
		t.Fatal(err)
	}
	advance(48 * time.Hour)
	recent := c.Submit(nil)
	if _, err := admin.CancelJob(ctx, recent.ID); err != nil {
		t.Fatal(err)
	}

	rep, err := c.srv.Purge(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Jobs) != 1 || rep.Jobs[0] != old.ID || rep.Blobs != 1 {
		t.Fatalf("purge report %+v, want only %s and its artifact blob", rep, old.ID)
	}
	_, err = admin.GetJob(ctx, old.ID)
	wantStatus(t, err, api.ErrNotFound)
	var evs []api.EgressEvent
	if err := admin.QueryEgress(ctx, api.EgressFilter{Job: old.ID}, func(e api.EgressEvent) error { evs = append(evs, e); return nil }); err != nil || len(evs) != 0 {
		t.Fatalf("egress of a purged job: %v %v", evs, err)
	}
	for _, id := range []string{waiting.ID, recent.ID} {
		if _, err := admin.GetJob(ctx, id); err != nil {
			t.Fatalf("job %s purged: %v", id, err)
		}
	}
	blobs := func() (n int) {
		m, _ := filepath.Glob(filepath.Join(c.dir, "blobs", "sha256", "*", "*"))
		return len(m)
	}
	if n := blobs(); n != 1 {
		t.Fatalf("%d blobs left, want the shared source only", n)
	}
	// The queued job still gets its source.
	cl, _ = claimOne(t, r, time.Second)
	var buf bytes.Buffer
	if _, err := r.DownloadSource(ctx, cl.Job.ID, cl.Lease.Token, &buf); err != nil || !bytes.Equal(buf.Bytes(), src) {
		t.Fatalf("source of the waiting job: %q %v", buf.String(), err)
	}
}

func gitSpecOnly() api.JobSpec { s, _ := gitSpec(); return s }

// tgz is a gzip-compressed tar archive of one file.
func tgz(t *testing.T, name, body string) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(body))
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestCheckListenRefusesPlainHTTPOffLoopback(t *testing.T) {
	tests := []struct {
		addr          string
		tls, insecure bool
		ok            bool
	}{
		{"127.0.0.1:7070", false, false, true},
		{"[::1]:7070", false, false, true},
		{"localhost:7070", false, false, true},
		{"0.0.0.0:7070", false, false, false},
		{":7070", false, false, false},
		{"192.0.2.10:7070", false, false, false},
		{"0.0.0.0:7070", true, false, true},
		{"0.0.0.0:7070", false, true, true},
	}
	for _, tc := range tests {
		err := coordinator.CheckListen(tc.addr, tc.tls, tc.insecure)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, tls=%v, insecure=%v) = %v, want ok=%v", tc.addr, tc.tls, tc.insecure, err, tc.ok)
		}
		if err != nil && !errors.Is(err, coordinator.ErrInsecureListen) {
			t.Errorf("error %v is not ErrInsecureListen", err)
		}
	}
}

// A submit token's team is stored with it, listed, copied onto every job it
// submits and handed to the runner that claims the job; an admin-submitted
// job has no team, and only a submit token may have one.
func TestSubmitTokenTeamReachesItsJobsAndTheirClaims(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	admin := c.AdminClient()
	tok, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenSubmit, Team: "web"})
	if err != nil || tok.Team != "web" {
		t.Fatalf("create: %+v %v", tok, err)
	}
	for _, bad := range []api.TokenRequest{{Kind: api.TokenAudit, Team: "web"}, {Kind: api.TokenSubmit, Team: "Web"}, {Kind: api.TokenSubmit, Team: "a b"}} {
		_, err := admin.CreateToken(ctx, bad)
		wantStatus(t, err, api.ErrInvalid)
	}
	ts, err := admin.ListTokens(ctx)
	if err != nil || len(ts) != 1 || ts[0].Team != "web" {
		t.Fatalf("tokens = %+v %v", ts, err)
	}
	spec, src := gitSpec()
	web, err := c.client(tok.Token).SubmitGit(ctx, spec, src)
	if err != nil || web.Team != "web" {
		t.Fatalf("team job: %+v %v", web, err)
	}
	byAdmin, err := admin.SubmitGit(ctx, spec, src)
	if err != nil || byAdmin.Team != "" {
		t.Fatalf("admin job: %+v %v", byAdmin, err)
	}
	r, _ := c.Register("r", nil)
	teams := map[string]string{}
	for range 2 {
		cl, _ := claimOne(t, r, time.Second)
		teams[cl.Job.ID] = cl.Job.Team
	}
	if teams[web.ID] != "web" || teams[byAdmin.ID] != "" || len(teams) != 2 {
		t.Fatalf("claimed teams %v", teams)
	}
}

func TestResultFailureClassIsStoredAndReturned(t *testing.T) {
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	j := c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateFailed, ExitCode: 1, Class: "oops"})
	wantStatus(t, err, api.ErrInvalid)
	if got, err := c.AdminClient().GetJob(ctx, j.ID); err != nil || got.State != api.StateRunning {
		t.Fatalf("after an invalid class: %+v, %v; want the job still running", got, err)
	}
	if err := r.Result(ctx, j.ID, api.ResultRequest{Token: cl.Lease.Token, State: api.StateFailed, ExitCode: 1,
		Reason: "lockfile rejected", Class: api.ClassRefused}); err != nil {
		t.Fatal(err)
	}
	c.Restart() // stored, not only held in memory
	got, err := c.AdminClient().GetJob(ctx, j.ID)
	if err != nil || got.FailureClass != api.ClassRefused || got.Reason != "lockfile rejected" {
		t.Fatalf("job = %+v, %v; want failure_class refused", got, err)
	}
	list, err := c.AdminClient().ListJobs(ctx, api.JobFilter{})
	if err != nil || len(list) != 1 || list[0].FailureClass != api.ClassRefused {
		t.Fatalf("list = %+v, %v; want failure_class refused", list, err)
	}
}
