// Package coordinator owns the coordinator: the HTTP JSON API under /v1
// (docs/api.md), authentication of admin, submit and runner tokens, the
// claim dispatcher (long-poll with in-process wake-ups), the lease reaper,
// and the blob directory for uploaded sources and artifacts; it mounts the
// read-only web console (coordinator/console) under /ui/ and decides what
// each signed-in token sees there. Persistent state lives behind
// coordinator/store.
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// Config configures a Server. Zero values take the defaults below.
type Config struct {
	// DataDir holds cleanroom.db and blobs/ (sources, artifacts).
	DataDir string
	// AdminToken is the admin bearer token (see EnsureAdminToken).
	AdminToken string
	// LeaseTTL is how long a claim or heartbeat keeps a job (default 30s).
	LeaseTTL time.Duration
	// MaxAttempts is the default number of leases a job gets before it is
	// lost (default 3).
	MaxAttempts int
	// MaxUpload caps an uploaded source tarball (default 100 MiB).
	MaxUpload int64
	// MaxArtifact caps one artifact (default 1 GiB).
	MaxArtifact int64
	// MaxLog caps the stored log of one job (default 16 MiB).
	MaxLog int64
	// MaxClaimWait caps a claim's long-poll (default 30s).
	MaxClaimWait time.Duration
	// ReapInterval is how often expired leases are looked for (default
	// LeaseTTL/4, at most 5s).
	ReapInterval time.Duration
	// Retention, when positive, deletes jobs that ended longer ago than
	// this, with their logs, egress events and artifacts, and then the
	// blobs nothing refers to any more. 0 keeps everything.
	Retention time.Duration
	// PurgeInterval is how often Retention is applied (default 1h).
	PurgeInterval time.Duration
	// DisableMetrics turns /metrics off (it answers 404).
	DisableMetrics bool
	// MetricsToken, when set, is the bearer token /metrics requires; empty
	// leaves /metrics open, as Prometheus endpoints usually are (it shows
	// counts and timings, no job, runner or token).
	MetricsToken string
	// RunnerOnlineWindow is how recently a runner must have claimed to count
	// as online in cleanroom_runners_online (default 3 × MaxClaimWait; a
	// runner holding a live lease is online too).
	RunnerOnlineWindow time.Duration
	// EgressHeartbeat is how often an egress follow stream with nothing
	// to send writes an empty line, so proxies keep it open, and checks
	// that its token is still valid (default 15s).
	EgressHeartbeat time.Duration
	// Store overrides the SQLite store in DataDir (tests, PostgreSQL).
	Store store.Store
	// Logger receives the server's logs (default: discard).
	Logger hclog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 30 * time.Second
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.MaxUpload <= 0 {
		c.MaxUpload = 100 << 20
	}
	if c.MaxArtifact <= 0 {
		c.MaxArtifact = 1 << 30
	}
	if c.MaxLog <= 0 {
		c.MaxLog = sqlite.DefaultLogMax
	}
	if c.MaxClaimWait <= 0 {
		c.MaxClaimWait = 30 * time.Second
	}
	if c.RunnerOnlineWindow <= 0 {
		c.RunnerOnlineWindow = 3 * c.MaxClaimWait
	}
	if c.ReapInterval <= 0 {
		c.ReapInterval = min(c.LeaseTTL/4, 5*time.Second)
	}
	if c.PurgeInterval <= 0 {
		c.PurgeInterval = time.Hour
	}
	if c.EgressHeartbeat <= 0 {
		c.EgressHeartbeat = 15 * time.Second
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Server is a running coordinator: store, dispatcher and reaper. Serve it
// with Handler (any http.Server) or Serve.
type Server struct {
	cfg       Config
	store     store.Store
	ownStore  bool
	adminHash []byte
	log       hclog.Logger
	hub       *hub
	disp      *dispatcher
	mux       *http.ServeMux
	handler   http.Handler // mux, counted and timed
	metrics   *metrics
	// metricsHash is the sha256 of Config.MetricsToken (nil: open).
	metricsHash []byte

	// stopCtx ends long-polls and log follows when the server closes, so a
	// shutdown never waits 30 s for them.
	stopCtx  context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup
	closeMu  sync.Once
	closeErr error
}

// New opens the store (migrating its schema), gives running leases a fresh
// TTL (the time the coordinator was down does not count against agents),
// and starts the dispatcher and the reaper.
func New(ctx context.Context, cfg Config) (_ *Server, retErr error) {
	cfg.setDefaults()
	if cfg.AdminToken == "" {
		return nil, errors.New("configuring coordinator: no admin token")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("configuring coordinator: no data directory")
	}
	s := &Server{cfg: cfg, log: cfg.Logger, hub: newHub(), adminHash: hashSecret(cfg.AdminToken)}
	if cfg.MetricsToken != "" {
		s.metricsHash = hashSecret(cfg.MetricsToken)
	}
	s.metrics = newMetrics(s)
	s.store = cfg.Store
	if s.store == nil {
		st, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, "cleanroom.db"), sqlite.Options{Log: store.LogLimits{MaxBytes: cfg.MaxLog}, Now: cfg.Now})
		if err != nil {
			return nil, fmt.Errorf("opening store: %w", err)
		}
		s.store, s.ownStore = st, true
	}
	s.store = timedStore{Store: s.store, d: s.metrics.storeDuration}
	s.metrics.stats.health = s.store
	defer func() {
		if retErr != nil && s.ownStore {
			s.store.Close()
		}
	}()
	if err := s.store.ExtendLeases(ctx, s.now().Add(cfg.LeaseTTL)); err != nil {
		return nil, err
	}
	s.disp = newDispatcher(s)
	s.stopCtx, s.stop = context.WithCancel(context.Background())
	s.mux = http.NewServeMux()
	s.routes()
	s.handler = s.metrics.instrument(s.mux)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.listen(s.stopCtx) }()
	go func() { defer s.wg.Done(); s.disp.run(s.stopCtx, 2*time.Second) }()
	go func() { defer s.wg.Done(); s.reapLoop(s.stopCtx, s.store) }()
	if cfg.Retention > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.purgeLoop(s.stopCtx) }()
	}
	return s, nil
}

// purgeLoop applies Retention at start and every PurgeInterval.
func (s *Server) purgeLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.PurgeInterval)
	defer t.Stop()
	for {
		if _, err := s.Purge(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("applying retention", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PurgeReport says what one Purge removed.
type PurgeReport struct {
	Jobs      []string
	Blobs     int
	BlobBytes int64
}

// Purge deletes the jobs that ended more than Retention ago (in batches,
// so the database is never locked for long) and then the blobs no
// remaining job refers to. It is what the retention loop runs.
func (s *Server) Purge(ctx context.Context) (PurgeReport, error) {
	var rep PurgeReport
	if s.cfg.Retention <= 0 {
		return rep, nil
	}
	before := s.now().Add(-s.cfg.Retention)
	for {
		ids, err := s.store.PurgeFinished(ctx, before, 500)
		if err != nil {
			return rep, err
		}
		rep.Jobs = append(rep.Jobs, ids...)
		if len(ids) < 500 {
			break
		}
	}
	refs, err := s.store.BlobRefs(ctx)
	if err != nil {
		return rep, err
	}
	rep.Blobs, rep.BlobBytes, err = s.store.SweepBlobs(ctx, refs, s.now().Add(-blobGrace))
	if len(rep.Jobs) > 0 || rep.Blobs > 0 {
		s.log.Info("retention applied", "jobs_deleted", len(rep.Jobs), "ended_before", before.UTC().Format(time.RFC3339),
			"blobs_deleted", rep.Blobs, "blob_bytes", rep.BlobBytes)
	}
	return rep, err
}

func (s *Server) now() time.Time { return s.cfg.Now() }

// blobGrace protects blobs (and half-written uploads) younger than this
// from retention: a source is stored before the job that refers to it
// exists.
const blobGrace = time.Hour

// changed wakes this coordinator's waiters for keys at once, and publishes
// them to every coordinator on the store (this one hears them again
// through listen, a harmless second wake-up). A failed publish is logged:
// other coordinators' waiters still wake at their own timeouts and their
// dispatchers at the safety tick.
func (s *Server) changed(keys ...string) {
	for _, k := range keys {
		s.wake(k)
	}
	ctx, cancel := context.WithTimeout(s.stopCtx, 5*time.Second)
	defer cancel()
	for _, k := range keys {
		if err := s.store.Publish(ctx, k); err != nil && ctx.Err() == nil {
			s.log.Warn("publishing a change", "key", k, "error", err)
		}
	}
}

// wake wakes this coordinator's waiters for key.
func (s *Server) wake(key string) {
	switch key {
	case store.ChangeQueue:
		s.disp.kick()
	case store.ChangeAll:
		s.hub.notifyAll()
		s.disp.kick()
	default:
		s.hub.notify(key)
	}
}

// listen turns the store's change notifications (from any coordinator)
// into local wake-ups until ctx ends, listening again after an error.
func (s *Server) listen(ctx context.Context) {
	for ctx.Err() == nil {
		err := s.store.Listen(ctx, s.wake)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("listening for changes from other coordinators", "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// Handler returns the HTTP API (with /healthz, /readyz and /metrics).
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops long-polls, the dispatcher and the reaper, and closes the
// store if the server opened it. Stop the http.Server first.
func (s *Server) Close() error {
	s.closeMu.Do(func() {
		s.stop()
		s.wg.Wait()
		if s.ownStore {
			s.closeErr = s.store.Close()
		}
	})
	return s.closeErr
}

// reapLoop ends expired leases in q every ReapInterval.
func (s *Server) reapLoop(ctx context.Context, q store.Queue) {
	t := time.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		reaped, err := q.ReapExpired(ctx, s.now())
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("reaping expired leases", "error", err)
			}
			continue
		}
		for _, r := range reaped {
			s.metrics.leaseExpiries.WithLabelValues(r.State).Inc()
			s.log.Warn("lease expired", "job", r.JobID, "new_state", r.State)
			s.changed(store.ChangeJob(r.JobID), store.ChangeLog(r.JobID))
		}
		if len(reaped) > 0 {
			s.changed(store.ChangeQueue)
		}
	}
}

// ErrInsecureListen is returned by CheckListen for plain HTTP on an address
// other machines can reach.
var ErrInsecureListen = errors.New("refusing plain HTTP on a non-loopback address: use --tls-cert/--tls-key, or --insecure-http if a proxy terminates TLS")

// CheckListen refuses plain HTTP on a non-loopback listen address unless
// insecure is set: tokens and build logs must not cross a network in clear.
func CheckListen(addr string, useTLS, insecure bool) error {
	if useTLS || insecure {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("parsing listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listening on %q: %w", addr, ErrInsecureListen)
	}
	return nil
}

// Serve serves the API on ln until ctx is done, then shuts down gracefully
// (long-polls end at once) and closes the server. With cert and key set it
// serves TLS.
func (s *Server) Serve(ctx context.Context, ln net.Listener, certFile, keyFile string) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.stopCtx },
		ErrorLog:          s.log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	if certFile != "" {
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	errCh := make(chan error, 1)
	go func() {
		if certFile != "" {
			errCh <- hs.ServeTLS(ln, certFile, keyFile)
		} else {
			errCh <- hs.Serve(ln)
		}
	}()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errCh:
	}
	s.stop() // end long-polls and follows
	shCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(shCtx); err != nil && serveErr == nil {
		serveErr = fmt.Errorf("shutting down http server: %w", err)
	}
	if err := s.Close(); err != nil && serveErr == nil {
		serveErr = err
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}
