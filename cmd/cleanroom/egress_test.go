package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// testCoordinator is a real coordinator on 127.0.0.1 that can be restarted
// on the same address and data directory.
type testCoordinator struct {
	t     *testing.T
	dir   string
	addr  string
	admin string
	stop  context.CancelFunc
	done  chan error
}

func (c *testCoordinator) start() {
	c.t.Helper()
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	srv, err := coordinator.New(context.Background(), coordinator.Config{DataDir: c.dir, AdminToken: c.admin, LeaseTTL: 5 * time.Minute})
	if err != nil {
		ln.Close()
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.stop, c.done = cancel, make(chan error, 1)
	go func() { c.done <- srv.Serve(ctx, ln, "", "") }()
}

func (c *testCoordinator) Stop() {
	if c.stop != nil {
		c.stop()
		if err := <-c.done; err != nil {
			c.t.Errorf("serving: %v", err)
		}
		c.stop = nil
	}
}

// cutter is a TCP proxy to target that resets its first connection after
// passing cutAt bytes of the answer, as a network failure would in the
// middle of a line; later connections pass everything.
type cutter struct {
	ln net.Listener
	wg sync.WaitGroup
}

func newCutter(t *testing.T, target string, cutAt int64) *cutter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{ln: ln}
	var mu sync.Mutex
	var conns []net.Conn
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for first := true; ; first = false {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, down, up)
			mu.Unlock()
			c.wg.Add(2)
			go func() { defer c.wg.Done(); io.Copy(up, down); up.Close() }()
			go func() {
				defer c.wg.Done()
				if !first {
					io.Copy(down, up)
					down.Close()
					return
				}
				io.CopyN(down, up, cutAt)
				for _, conn := range []net.Conn{down, up} {
					conn.(*net.TCPConn).SetLinger(0) // RST
					conn.Close()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, conn := range conns {
			conn.Close()
		}
		mu.Unlock()
		c.wg.Wait()
	})
	return c
}

// postBatch posts events first..first+n-1 of the job, whose dst is the
// event's number.
func postBatch(t *testing.T, r *api.Client, cl api.Claim, first, n int) {
	t.Helper()
	evs := make([]api.EgressEvent, n)
	for i := range evs {
		evs[i] = api.EgressEvent{Time: time.Now(), Proto: "tcp", Dst: fmt.Sprint(first + i), Verdict: api.VerdictDeny, Rule: "default-deny"}
	}
	if err := r.PostEgress(context.Background(), cl.Job.ID, cl.Lease.Token, int64(first), evs); err != nil {
		t.Fatal(err)
	}
}

// coordinatorWithJob starts a coordinator and returns a runner client
// holding the lease of a job.
func coordinatorWithJob(t *testing.T) (*testCoordinator, *api.Client, api.Claim) {
	t.Helper()
	c := &testCoordinator{t: t, dir: t.TempDir(), addr: "127.0.0.1:0", admin: coordinator.NewAdminToken()}
	c.start()
	t.Cleanup(c.Stop)
	url := "http://" + c.addr
	ctx := context.Background()
	admin := api.NewClient(url, c.admin)
	reg, err := admin.CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	rr, err := api.NewClient(url, "").Register(ctx, api.RegisterRequest{Token: reg.Token, Name: "r", PublicKey: pub})
	if err != nil {
		t.Fatal(err)
	}
	runner := api.NewClient(url, rr.RunnerToken)
	if _, err := admin.SubmitGit(ctx, api.JobSpec{Build: api.Build{Script: "x"}}, api.Source{Kind: api.SourceGit, URL: "https://git.example/a.git", Commit: strings.Repeat("a", 40)}); err != nil {
		t.Fatal(err)
	}
	resp, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(time.Second)})
	if err != nil || len(resp.Claims) != 1 {
		t.Fatalf("claiming: %v %v", resp, err)
	}
	return c, runner, resp.Claims[0]
}

// startEgress runs `cleanroom egress args...` in this process, with every
// flag of an earlier run back at its default, and returns its outcome.
func startEgress(ctx context.Context, t *testing.T, stdout, stderr io.Writer, args ...string) <-chan error {
	t.Helper()
	cmd, _, err := rootCmd.Find([]string{"egress"})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		f.Value.Set(f.DefValue)
		f.Changed = false
	})
	cmd.SetContext(ctx) // cobra would keep the first run's
	rootCmd.SetArgs(append([]string{"egress", "--cli-config", ""}, args...))
	rootCmd.SetOut(stdout)
	rootCmd.SetErr(stderr)
	done := make(chan error, 1)
	go func() {
		err := rootCmd.ExecuteContext(ctx)
		rootCmd.SetOut(nil)
		rootCmd.SetErr(nil)
		rootCmd.SetArgs(nil)
		done <- err
	}()
	return done
}

// `cleanroom egress --follow --after 0 --json` keeps printing while its
// connection is reset mid-stream and then the coordinator restarts under
// it: it says on stderr that it reconnects, resumes after the last cursor
// it printed, and prints every event once.
func TestEgressFollowCommandResumesAcrossACoordinatorRestart(t *testing.T) {
	c, runner, cl := coordinatorWithJob(t)
	const total = 3000
	postBatch(t, runner, cl, 0, 1000)
	var stdout, stderr testutil.SyncBuffer
	proxy := newCutter(t, c.addr, 100_000) // about half of the first 1000 events
	runCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := startEgress(runCtx, t, &stdout, &stderr, "--url", "http://"+proxy.ln.Addr().String(), "--token", c.admin,
		"--follow", "--after", "0", "--json", "--limit", fmt.Sprint(total), "--state", filepath.Join(c.dir, "cursor"))

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s; stdout has %d lines, stderr:\n%s", what, strings.Count(stdout.String(), "\n"), stderr.String())
			}
		}
	}
	waitFor("a reconnect", func() bool { return strings.Count(stderr.String(), "reconnecting after cursor") == 1 })
	if strings.Contains(stderr.String(), "after cursor 1000 ") {
		t.Fatalf("the reset came after the first 1000 events were printed, not mid-stream:\n%s", stderr.String())
	}
	postBatch(t, runner, cl, 1000, 1000)
	waitFor("more events", func() bool { return strings.Count(stdout.String(), "\n") >= 1500 })
	c.Stop() // the coordinator ends the stream
	c.start()
	waitFor("a second reconnect", func() bool { return strings.Count(stderr.String(), "reconnecting after cursor") >= 2 })
	postBatch(t, runner, cl, 2000, 1000)
	if err := <-done; err != nil {
		t.Fatalf("egress --follow: %v\nstderr:\n%s", err, stderr.String())
	}

	seen := map[string]int{}
	var last int64
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r api.EgressRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Cursor <= last {
			t.Fatalf("cursor %d printed after %d", r.Cursor, last)
		}
		last = r.Cursor
		seen[r.Dst]++
	}
	t.Logf("stderr:\n%s", stderr.String())
	if b, _ := os.ReadFile(filepath.Join(c.dir, "cursor")); strings.TrimSpace(string(b)) != fmt.Sprint(last) {
		t.Errorf("state file holds %q, want the last cursor printed, %d", b, last)
	}
	for i := range total {
		if seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("event %d printed %d times; stderr:\n%s", i, seen[fmt.Sprint(i)], stderr.String())
		}
	}
}

func TestEgressRowShowsCursorAndDomain(t *testing.T) {
	r := api.EgressRecord{Cursor: 42, EgressEvent: api.EgressEvent{Runner: "r-1", Job: "j-1", Proto: "dns", Domain: "x.example", Dst: "10.0.0.1:53", Verdict: api.VerdictDeny}}
	got := fmt.Sprint(egressRow(r)...)
	for _, want := range []string{"42", "x.example (10.0.0.1:53)", "deny"} {
		if !strings.Contains(got, want) {
			t.Errorf("row %q lacks %q", got, want)
		}
	}
	if row := egressRow(r); len(row) != len(egressHeader) || row[len(row)-1] != "-" {
		t.Errorf("row %q: want one cell per column, PROCESS - when unknown", row)
	}
	r.Process = &api.EgressProcess{PID: 4242, Comm: "node", Cmdline: "node postinstall.js", Package: "@cleanroom-demo/telemetry-helper"}
	if got := egressRow(r)[len(egressHeader)-1]; got != "4242 node: node postinstall.js [@cleanroom-demo/telemetry-helper]" {
		t.Errorf("PROCESS cell %q", got)
	}
}

// A registry gateway event shows its request; --proto and --rule keep
// only the matching events.
func TestEgressShowsAndFiltersGatewayRequests(t *testing.T) {
	tarball := api.EgressEvent{Proto: "http", Dst: "10.0.0.1:4873", Verdict: api.VerdictAllow, Rule: "lockfile",
		Method: "GET", Path: "/left-pad/-/left-pad-1.3.0.tgz", Package: "left-pad", Version: "1.3.0", Status: 200, Cache: "hit", Bytes: 2048}
	adduser := api.EgressEvent{Proto: "http", Dst: "10.0.0.1:4873", Verdict: api.VerdictDeny, Rule: "registry-write",
		Method: "PUT", Path: "/-/user/org.couchdb.user:x", Status: 403}
	dns := api.EgressEvent{Proto: "dns", Domain: "evil.example", Verdict: api.VerdictDeny, Rule: "dns-refused"}
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 2048: "2KiB", 4174590: "4.0MiB", 3 << 30: "3GiB"} {
		if got := approxSize(n); got != want {
			t.Errorf("approxSize(%d) = %q, want %q", n, got, want)
		}
	}
	for ev, want := range map[*api.EgressEvent]string{&tarball: "GET left-pad@1.3.0 200 hit 2KiB", &adduser: "PUT /-/user/org.couchdb.user:x 403", &dns: "-"} {
		row := egressRow(api.EgressRecord{EgressEvent: *ev})
		if got := row[len(row)-2]; got != want { // REQUEST, before PROCESS
			t.Errorf("REQUEST = %q, want %q", got, want)
		}
	}
	for _, tc := range []struct {
		m    egressMatch
		want []bool
	}{
		{egressMatch{proto: "http"}, []bool{true, true, false}},
		{egressMatch{proto: "http", rule: "registry-write"}, []bool{false, true, false}},
		{egressMatch{rule: "dns-refused"}, []bool{false, false, true}},
	} {
		for i, ev := range []api.EgressEvent{tarball, adduser, dns} {
			if got := tc.m.matches(ev); got != tc.want[i] {
				t.Errorf("%+v matches event %d = %v", tc.m, i, got)
			}
		}
	}
}

// --state keeps the last cursor printed: a second run prints only the
// events stored since, and --after counts only before the file exists.
func TestEgressStateFileResumesAfterTheLastCursorPrinted(t *testing.T) {
	c, runner, cl := coordinatorWithJob(t)
	state := filepath.Join(t.TempDir(), "cursor")
	run := func(args ...string) []api.EgressRecord {
		t.Helper()
		var stdout, stderr testutil.SyncBuffer
		args = append([]string{"--url", "http://" + c.addr, "--token", c.admin, "--json", "--state", state}, args...)
		if err := <-startEgress(context.Background(), t, &stdout, &stderr, args...); err != nil {
			t.Fatalf("egress %v: %v\n%s", args, err, stderr.String())
		}
		var out []api.EgressRecord
		for _, line := range strings.Fields(stdout.String()) {
			var r api.EgressRecord
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		return out
	}
	postBatch(t, runner, cl, 0, 3)
	if got := run("--after", "1"); len(got) != 2 || got[0].Dst != "1" {
		t.Fatalf("first run printed %+v, want events 1 and 2 (after cursor 1)", got)
	}
	if b, _ := os.ReadFile(state); strings.TrimSpace(string(b)) != "3" {
		t.Fatalf("state %q after the first run, want 3", b)
	}
	postBatch(t, runner, cl, 3, 2)
	if got := run("--after", "0"); len(got) != 2 || got[0].Dst != "3" || got[1].Dst != "4" {
		t.Fatalf("second run printed %+v, want events 3 and 4", got)
	}
	if got := run(); len(got) != 0 {
		t.Fatalf("third run printed %+v, want nothing new", got)
	}
}
