package coordinator_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// checkGoroutines fails t when goroutines started during the test are still
// running at its end (after cleanups ran).
var checkGoroutines = testutil.CheckGoroutines

// clock is an adjustable clock for token expiry tests.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// coord is a real coordinator on 127.0.0.1 with a real SQLite store.
type coord struct {
	t     *testing.T
	dir   string
	addr  string
	URL   string
	Admin string
	cfg   coordinator.Config
	srv   *coordinator.Server
	stop  context.CancelFunc
	done  chan error
	tr    *http.Transport
}

type option func(*coordinator.Config)

func withTTL(d time.Duration) option {
	return func(c *coordinator.Config) { c.LeaseTTL = d; c.ReapInterval = d / 5 }
}

func startCoord(t *testing.T, opts ...option) *coord {
	t.Helper()
	c := &coord{t: t, dir: t.TempDir(), Admin: coordinator.NewAdminToken(), tr: &http.Transport{}}
	c.cfg = coordinator.Config{DataDir: c.dir, AdminToken: c.Admin, LeaseTTL: 5 * time.Second}
	for _, o := range opts {
		o(&c.cfg)
	}
	c.start("127.0.0.1:0")
	t.Cleanup(func() {
		c.Stop()
		c.tr.CloseIdleConnections()
	})
	return c
}

func (c *coord) start(addr string) {
	c.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatalf("listening: %v", err)
	}
	c.addr = ln.Addr().String()
	c.URL = "http://" + c.addr
	srv, err := coordinator.New(context.Background(), c.cfg)
	if err != nil {
		ln.Close()
		c.t.Fatalf("starting coordinator: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.srv, c.stop, c.done = srv, cancel, make(chan error, 1)
	go func() { c.done <- srv.Serve(ctx, ln, "", "") }()
}

// Stop shuts the coordinator down (idempotent).
func (c *coord) Stop() {
	if c.stop == nil {
		return
	}
	c.stop()
	if err := <-c.done; err != nil {
		c.t.Errorf("serving: %v", err)
	}
	c.stop = nil
}

// Restart stops the coordinator and starts a new one on the same address and
// data directory.
func (c *coord) Restart() {
	c.Stop()
	c.tr.CloseIdleConnections()
	c.start(c.addr)
}

func (c *coord) client(token string) *api.Client {
	cl := api.NewClient(c.URL, token)
	cl.HTTP = &http.Client{Transport: c.tr}
	return cl
}

func (c *coord) AdminClient() *api.Client { return c.client(c.Admin) }

// Register creates a registration token and a runner with labels.
func (c *coord) Register(name string, labels map[string]string) (*api.Client, string) {
	c.t.Helper()
	ctx := context.Background()
	tok, err := c.AdminClient().CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1, Expires: api.Duration(time.Hour)})
	if err != nil {
		c.t.Fatalf("creating registration token: %v", err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	resp, err := c.client("").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: name, Labels: labels, PublicKey: pub})
	if err != nil {
		c.t.Fatalf("registering %s: %v", name, err)
	}
	return c.client(resp.RunnerToken), resp.RunnerID
}

func gitSpec() (api.JobSpec, api.Source) {
	return api.JobSpec{Build: api.Build{Script: "npm run build"}},
		api.Source{Kind: api.SourceGit, URL: "https://git.example/app.git", Commit: strings.Repeat("a", 40)}
}

// Submit submits a git job with labels.
func (c *coord) Submit(labels map[string]string) api.Job {
	c.t.Helper()
	spec, src := gitSpec()
	spec.Labels = labels
	j, err := c.AdminClient().SubmitGit(context.Background(), spec, src)
	if err != nil {
		c.t.Fatalf("submitting: %v", err)
	}
	return j
}

// claimOne long-polls for one job.
func claimOne(t *testing.T, cl *api.Client, wait time.Duration) (api.Claim, bool) {
	t.Helper()
	return claimFitting(t, cl, nil, wait)
}

// claimFitting long-polls for one job that fits capacity (nil: any).
func claimFitting(t *testing.T, cl *api.Client, capacity *api.Resources, wait time.Duration) (api.Claim, bool) {
	t.Helper()
	resp, err := cl.Claim(context.Background(), api.ClaimRequest{Slots: 1, Wait: api.Duration(wait), Capacity: capacity})
	if err != nil {
		t.Fatalf("claiming: %v", err)
	}
	if len(resp.Claims) == 0 {
		return api.Claim{}, false
	}
	return resp.Claims[0], true
}

func wantStatus(t *testing.T, err error, sentinel error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %v, want %v", err, sentinel)
	}
}
