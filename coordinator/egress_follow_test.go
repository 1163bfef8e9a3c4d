package coordinator_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
)

func withHeartbeat(d time.Duration) option {
	return func(c *coordinator.Config) { c.EgressHeartbeat = d }
}

// postEgress posts n events for a claimed job in batches of size, each
// batch twice (an agent's retry), as the runner cl; every event's dst is
// unique ("<job>:<i>").
func postEgress(t *testing.T, r *api.Client, cl api.Claim, n, size int) error {
	t.Helper()
	ctx := context.Background()
	for seq := 0; seq < n; seq += size {
		batch := make([]api.EgressEvent, 0, size)
		for i := seq; i < min(seq+size, n); i++ {
			batch = append(batch, api.EgressEvent{Time: time.Now(), Proto: "tcp", Dst: fmt.Sprintf("%s:%d", cl.Job.ID, i), Verdict: api.VerdictDeny, Rule: "default-deny"})
		}
		for range 2 {
			if err := r.PostEgress(ctx, cl.Job.ID, cl.Lease.Token, int64(seq), batch); err != nil {
				return err
			}
		}
	}
	return nil
}

// A follower killed mid-stream twice (its context cancelled, which closes
// the connection) and resumed from the last cursor it received sees all
// 10,000 events two runners post in batches, each once, in cursor order.
func TestEgressFollowResumedFromLastCursorMissesAndRepeatsNothing(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withTTL(5*time.Minute)) // no heartbeats here
	const jobs, perJob, batch = 2, 5000, 250
	var claims []api.Claim
	var runners []*api.Client
	for i := range jobs {
		r, _ := c.Register(fmt.Sprintf("r%d", i), nil)
		c.Submit(nil)
		cl, ok := claimOne(t, r, time.Second)
		if !ok {
			t.Fatal("no claim")
		}
		runners, claims = append(runners, r), append(claims, cl)
	}
	audit, err := c.AdminClient().CreateToken(context.Background(), api.TokenRequest{Kind: api.TokenAudit})
	if err != nil {
		t.Fatal(err)
	}
	follower := c.client(audit.Token)

	// The runners post while the follower reads; a failed post ends the
	// follower early.
	runCtx, abort := context.WithTimeout(context.Background(), 2*time.Minute)
	defer abort()
	var wg sync.WaitGroup
	postErr := make(chan error, jobs)
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := postEgress(t, runners[i], claims[i], perJob, batch)
			if err != nil {
				abort()
			}
			postErr <- err
		}()
	}

	seen := map[string]int{}
	var last int64
	kills := []int{1500, 6000} // kill the follower after this many events
	for conn := 0; len(seen) < jobs*perJob && runCtx.Err() == nil; conn++ {
		if conn > 10 {
			t.Fatalf("%d connections and only %d events", conn, len(seen))
		}
		ctx, cancel := context.WithCancel(runCtx)
		after := last
		err := follower.FollowEgress(ctx, api.EgressFilter{After: &after}, func(r api.EgressRecord) error {
			if r.Cursor <= last {
				t.Errorf("cursor %d after %d", r.Cursor, last)
			}
			last = r.Cursor
			seen[r.Dst]++
			if len(kills) > 0 && len(seen) == kills[0] {
				kills = kills[1:]
				cancel() // mid-stream: the rest of this page is in flight
			}
			if len(seen) == jobs*perJob {
				cancel()
			}
			return nil
		})
		cancel()
		if err != nil && !errors.Is(err, context.Canceled) && runCtx.Err() == nil {
			t.Fatalf("following: %v", err)
		}
	}
	wg.Wait()
	close(postErr)
	for err := range postErr {
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(kills) != 0 {
		t.Fatalf("the follower was not killed at %v", kills)
	}
	for i := range jobs {
		for n := range perJob {
			if k := seen[fmt.Sprintf("%s:%d", claims[i].Job.ID, n)]; k != 1 {
				t.Fatalf("event %d of job %d seen %d times", n, i, k)
			}
		}
	}
	if len(seen) != jobs*perJob {
		t.Fatalf("saw %d distinct events, want %d", len(seen), jobs*perJob)
	}
}

// An idle stream carries an empty line every heartbeat (so the client's
// idle timeout does not fire) and ends within a heartbeat of its token's
// revocation; the reconnect is refused.
func TestEgressFollowHeartbeatsAndEndsWhenTheTokenIsRevoked(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withHeartbeat(20*time.Millisecond))
	ctx := context.Background()
	admin := c.AdminClient()
	audit, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenAudit})
	if err != nil {
		t.Fatal(err)
	}
	follower := c.client(audit.Token)
	follower.FollowIdle = 300 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		done <- follower.FollowEgress(ctx, api.EgressFilter{}, func(api.EgressRecord) error { return nil })
	}()
	select {
	case err := <-done:
		t.Fatalf("an idle follow with heartbeats ended: %v", err)
	case <-time.After(time.Second): // > 3 idle timeouts
	}
	if _, err := admin.RevokeToken(ctx, audit.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow ended with %v, want the coordinator to end it", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream of a revoked token goes on")
	}
	err = follower.FollowEgress(ctx, api.EgressFilter{}, func(api.EgressRecord) error { return nil })
	wantStatus(t, err, api.ErrUnauthorized)
}

// Without heartbeats (longer than the client's idle timeout) the client
// gives a silent connection up.
func TestEgressFollowClientGivesASilentStreamUp(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t, withHeartbeat(time.Hour))
	follower := c.AdminClient()
	follower.FollowIdle = 200 * time.Millisecond
	start := time.Now()
	err := follower.FollowEgress(context.Background(), api.EgressFilter{}, func(api.EgressRecord) error { return nil })
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("follow of a silent stream: %v after %s", err, time.Since(start))
	}
}

// The raw stream: NDJSON records with cursors, sent as they are stored,
// with the query's filters; a submit token follows only its own jobs.
func TestEgressFollowStreamsNewMatchingEventsAsStored(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	team, err := c.AdminClient().CreateToken(ctx, api.TokenRequest{Kind: api.TokenSubmit})
	if err != nil {
		t.Fatal(err)
	}
	spec, src := gitSpec()
	own, err := c.client(team.Token).SubmitGit(ctx, spec, src)
	if err != nil {
		t.Fatal(err)
	}
	other := c.Submit(nil)
	r, _ := c.Register("r", nil)
	leases := map[string]api.Claim{}
	for range 2 {
		cl, _ := claimOne(t, r, time.Second)
		leases[cl.Job.ID] = cl
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/v1/egress?follow=1&verdict=deny", nil)
	req.Header.Set("Authorization", "Bearer "+team.Token)
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	lines := bufio.NewScanner(resp.Body)
	post := func(job string, seq int64, verdict string) {
		t.Helper()
		cl := leases[job]
		ev := api.EgressEvent{Time: time.Now(), Proto: "tcp", Dst: fmt.Sprintf("%s:%d", job, seq), Verdict: verdict}
		if err := r.PostEgress(ctx, job, cl.Lease.Token, seq, []api.EgressEvent{ev}); err != nil {
			t.Fatal(err)
		}
	}
	post(other.ID, 0, api.VerdictDeny) // another team's
	post(own.ID, 0, api.VerdictAllow)  // filtered out
	post(own.ID, 1, api.VerdictDeny)
	if !lines.Scan() {
		t.Fatalf("stream ended: %v", lines.Err())
	}
	want := `{"cursor":3,"time":`
	if got := lines.Text(); len(got) < len(want) || got[:len(want)] != want {
		t.Fatalf("first line %s, want the own denied event with cursor 3 (%s…)", got, want)
	}
	if want := own.ID + ":1"; !strings.Contains(lines.Text(), want) {
		t.Fatalf("first line %s is not %s", lines.Text(), want)
	}
}

// GET /v1/egress?after=N answers the later events in cursor order, with
// their cursors; a bad cursor is a field error.
func TestEgressQueryAfterCursor(t *testing.T) {
	checkGoroutines(t)
	c := startCoord(t)
	ctx := context.Background()
	r, _ := c.Register("r", nil)
	c.Submit(nil)
	cl, _ := claimOne(t, r, time.Second)
	t0 := time.Now()
	// Stored in this order, with times in the reverse order.
	evs := []api.EgressEvent{
		{Time: t0.Add(2 * time.Second), Proto: "tcp", Dst: "a", Verdict: api.VerdictDeny},
		{Time: t0.Add(time.Second), Proto: "tcp", Dst: "b", Verdict: api.VerdictDeny},
		{Time: t0, Proto: "tcp", Dst: "c", Verdict: api.VerdictDeny},
	}
	if err := r.PostEgress(ctx, cl.Job.ID, cl.Lease.Token, 0, evs); err != nil {
		t.Fatal(err)
	}
	admin := c.AdminClient()
	query := func(f api.EgressFilter) (out []api.EgressRecord) {
		t.Helper()
		if err := admin.QueryEgressRecords(ctx, f, func(r api.EgressRecord) error { out = append(out, r); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	byTime := query(api.EgressFilter{})
	if len(byTime) != 3 || byTime[0].Dst != "c" || byTime[0].Cursor != 3 {
		t.Fatalf("by time: %+v", byTime)
	}
	first := byTime[2].Cursor
	got := query(api.EgressFilter{After: &first})
	if len(got) != 2 || got[0].Dst != "b" || got[1].Dst != "c" || got[0].Cursor <= first || got[1].Cursor <= got[0].Cursor {
		t.Fatalf("after %d: %+v", first, got)
	}
	neg := int64(-1)
	wantStatus(t, admin.QueryEgressRecords(ctx, api.EgressFilter{After: &neg}, func(api.EgressRecord) error { return nil }), api.ErrInvalid)
}
