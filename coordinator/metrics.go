package coordinator

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	cmetrics "github.com/cleanroom-ci/cleanroom/internal/metrics"
)

// The coordinator's Prometheus metrics (docs/operations.md lists them). Each
// Server has a registry of its own (internal/metrics), never the global
// default one, so tests and several servers in one process do not mix. Counters and histograms are
// updated where things happen; what the store knows (jobs by state, runners
// online) is read from it at each scrape by jobsCollector, so it is never
// stale and survives restarts. No label carries a job or runner id.

// jobStates are always exposed, at 0 when no job is in them.
var jobStates = []string{api.StateQueued, api.StateRunning, api.StateSucceeded, api.StateFailed, api.StateCanceled, api.StateLost}

// egressRules are the rule names of docs/egress-log.md. The rule of a posted
// event comes from an agent: anything else is counted as "other", so an agent
// cannot grow the coordinator's label set at will.
var egressRules = []string{"default-deny", "metadata-deny", "allow-registry", "dns-allow", "dns-refused",
	// The registry gateway's (proto http).
	"lockfile", "not-in-lockfile", "registry-write", "registry-api", "integrity-mismatch", "release-too-new", "sha1-only", "upstream-error"}

type metrics struct {
	reg           *prometheus.Registry
	stats         *storeCollector
	queueWait     prometheus.Histogram
	claimDuration *prometheus.HistogramVec
	leaseExpiries *prometheus.CounterVec
	egressEvents  *prometheus.CounterVec
	storeDuration *prometheus.HistogramVec
	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec
}

// newMetrics registers every metric of s (whose store it reads at scrape).
func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: cmetrics.NewRegistry(),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "cleanroom_queue_wait_seconds",
			Help:    "Time from a job's submission to its first claim by a runner.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 15, 30, 60, 300, 900, 3600},
		}),
		claimDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cleanroom_claim_duration_seconds",
			Help:    "Time a runner's claim request waited for its answer (a long-poll), by outcome: job (it got one or more) or none.",
			Buckets: []float64{.005, .01, .05, .1, .5, 1, 5, 10, 30, 60},
		}, []string{"outcome"}),
		leaseExpiries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_lease_expiries_total",
			Help: "Leases that expired without a heartbeat, by the job's state afterwards (queued again, lost after its last attempt, or canceled).",
		}, []string{"state"}),
		egressEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_egress_events_total",
			Help: "Egress events posted by agents and stored, by verdict and rule.",
		}, []string{"verdict", "rule"}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cleanroom_store_operation_duration_seconds",
			Help:    "Time of store operations (one SQLite transaction or query each), by operation.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"operation"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_http_requests_total",
			Help: "HTTP requests answered, by route pattern (\"unmatched\" for none) and status code.",
		}, []string{"route", "code"}),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cleanroom_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route pattern; long-polls (claim, heartbeat, log follow) last up to their wait.",
			Buckets: []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60},
		}, []string{"route"}),
	}
	for _, o := range []string{"job", "none"} {
		m.claimDuration.WithLabelValues(o)
	}
	for _, st := range []string{api.StateQueued, api.StateLost, api.StateCanceled} {
		m.leaseExpiries.WithLabelValues(st)
	}
	for _, v := range []string{api.VerdictAllow, api.VerdictDeny} {
		for _, r := range append(egressRules, "other") {
			m.egressEvents.WithLabelValues(v, r)
		}
	}
	m.stats = newStoreCollector(s)
	m.reg.MustRegister(
		m.stats,
		m.queueWait, m.claimDuration, m.leaseExpiries, m.egressEvents,
		m.storeDuration, m.httpRequests, m.httpDuration,
	)
	return m
}

// claimed records a claim's answer: how long it waited, and for each job
// claimed for the first time, how long it was queued.
func (m *metrics) claimed(waited time.Duration, claims []store.Claim, now time.Time) {
	outcome := "none"
	if len(claims) > 0 {
		outcome = "job"
	}
	m.claimDuration.WithLabelValues(outcome).Observe(waited.Seconds())
	for _, c := range claims {
		if c.Job.Attempts == 1 {
			m.queueWait.Observe(max(now.Sub(c.Job.CreatedAt), 0).Seconds())
		}
	}
}

// egressStored counts stored events. A batch an agent sends again because
// the answer was lost is stored once but counted again.
func (m *metrics) egressStored(events []api.EgressEvent) {
	for _, e := range events {
		rule := "other"
		for _, r := range egressRules {
			if e.Rule == r {
				rule = r
				break
			}
		}
		m.egressEvents.WithLabelValues(e.Verdict, rule).Inc()
	}
}

// storeCollector reads jobs by state, the queue depth and the runners online
// from the store at each scrape.
type storeCollector struct {
	s *Server
	// health is the store it reads, set once the store is open (New).
	health                       store.Health
	jobs, queueDepth, runnersOnl *prometheus.Desc
}

func newStoreCollector(s *Server) *storeCollector {
	return &storeCollector{
		s:          s,
		jobs:       prometheus.NewDesc("cleanroom_jobs", "Jobs in the store by state.", []string{"state"}, nil),
		queueDepth: prometheus.NewDesc("cleanroom_queue_depth", "Jobs waiting for a runner (queued).", nil, nil),
		runnersOnl: prometheus.NewDesc("cleanroom_runners_online", "Runners not revoked that claimed within the online window or hold a live lease.", nil, nil),
	}
}

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.jobs
	ch <- c.queueDepth
	ch <- c.runnersOnl
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.s.stopCtx, 5*time.Second)
	defer cancel()
	now := c.s.now()
	st, err := c.health.Stats(ctx, now.Add(-c.s.cfg.RunnerOnlineWindow), now)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.jobs, err)
		return
	}
	for _, state := range jobStates {
		ch <- prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(st.Jobs[state]), state)
	}
	ch <- prometheus.MustNewConstMetric(c.queueDepth, prometheus.GaugeValue, float64(st.Jobs[api.StateQueued]))
	ch <- prometheus.MustNewConstMetric(c.runnersOnl, prometheus.GaugeValue, float64(st.RunnersOnline))
}

// instrument counts and times every request by the pattern the mux matched
// (r.Pattern, set on the request the mux was given) and status code.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		code := rec.status
		if code == 0 {
			code = http.StatusOK
		}
		m.httpRequests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		m.httpDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// statusRecorder remembers the status code; it keeps Flush (log follow) and
// Unwrap (http.ResponseController) working.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// handleMetrics serves /metrics, behind the metrics token when one is set.
func (s *Server) handleMetrics() http.HandlerFunc {
	h := cmetrics.Handler(s.metrics.reg, s.log) // a failed store read drops only the metrics that need it
	return func(w http.ResponseWriter, r *http.Request) {
		if s.metricsHash != nil {
			tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if subtle.ConstantTimeCompare(hashSecret(strings.TrimSpace(tok)), s.metricsHash) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="cleanroom metrics"`)
				writeJSON(w, http.StatusUnauthorized, &api.Error{Status: http.StatusUnauthorized, Message: "unauthorized: /metrics needs the metrics token"})
				return
			}
		}
		h.ServeHTTP(w, r)
	}
}

// handleReady answers /readyz: 200 when the store answers a short query at
// the schema version this build needs and the server is not stopping, 503
// with a reason otherwise (details go to the log, not to the unauthenticated
// caller).
func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if s.stopCtx.Err() != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": "shutting down"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ready(ctx); err != nil {
		s.log.Warn("not ready: store check failed", "error", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": "store unreachable or schema not migrated"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// timedStore times every store operation into
// cleanroom_store_operation_duration_seconds. Operations it does not list
// (added to store.Store later) pass through untimed.
type timedStore struct {
	store.Store
	d *prometheus.HistogramVec
}

// time starts timing op; call the result when it is done.
func (t timedStore) time(op string) func() {
	start := time.Now()
	return func() { t.d.WithLabelValues(op).Observe(time.Since(start).Seconds()) }
}

func (t timedStore) Ready(ctx context.Context) error {
	defer t.time("ready")()
	return t.Store.Ready(ctx)
}

func (t timedStore) Stats(ctx context.Context, seenSince, now time.Time) (store.Stats, error) {
	defer t.time("stats")()
	return t.Store.Stats(ctx, seenSince, now)
}

func (t timedStore) CreateToken(ctx context.Context, tok store.Token) error {
	defer t.time("create_token")()
	return t.Store.CreateToken(ctx, tok)
}

func (t timedStore) ListTokens(ctx context.Context) ([]store.Token, error) {
	defer t.time("list_tokens")()
	return t.Store.ListTokens(ctx)
}

func (t timedStore) RevokeToken(ctx context.Context, id string, now time.Time) (store.Token, error) {
	defer t.time("revoke_token")()
	return t.Store.RevokeToken(ctx, id, now)
}

func (t timedStore) CheckToken(ctx context.Context, kind, id string, hash []byte, now time.Time) (store.Token, error) {
	defer t.time("check_token")()
	return t.Store.CheckToken(ctx, kind, id, hash, now)
}

func (t timedStore) RegisterRunner(ctx context.Context, regID string, regHash []byte, r store.Runner, now time.Time) error {
	defer t.time("register_runner")()
	return t.Store.RegisterRunner(ctx, regID, regHash, r, now)
}

func (t timedStore) Runner(ctx context.Context, id string) (store.Runner, error) {
	defer t.time("runner")()
	return t.Store.Runner(ctx, id)
}

func (t timedStore) RunnerByName(ctx context.Context, name string) (store.Runner, error) {
	defer t.time("runner_by_name")()
	return t.Store.RunnerByName(ctx, name)
}

func (t timedStore) ListRunners(ctx context.Context) ([]store.Runner, error) {
	defer t.time("list_runners")()
	return t.Store.ListRunners(ctx)
}

func (t timedStore) RevokeRunner(ctx context.Context, id string, now time.Time) (store.Runner, error) {
	defer t.time("revoke_runner")()
	return t.Store.RevokeRunner(ctx, id, now)
}

func (t timedStore) TouchRunner(ctx context.Context, id string, now time.Time) error {
	defer t.time("touch_runner")()
	return t.Store.TouchRunner(ctx, id, now)
}

func (t timedStore) ReportClaim(ctx context.Context, id string, c store.ClaimReport, now time.Time) error {
	defer t.time("report_claim")()
	return t.Store.ReportClaim(ctx, id, c, now)
}

func (t timedStore) CloseClaim(ctx context.Context, id string, openUntil, now time.Time) error {
	defer t.time("close_claim")()
	return t.Store.CloseClaim(ctx, id, openUntil, now)
}

func (t timedStore) CreateJob(ctx context.Context, j store.Job) error {
	defer t.time("create_job")()
	return t.Store.CreateJob(ctx, j)
}

func (t timedStore) Job(ctx context.Context, id string) (store.Job, error) {
	defer t.time("job")()
	return t.Store.Job(ctx, id)
}

func (t timedStore) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, error) {
	defer t.time("list_jobs")()
	return t.Store.ListJobs(ctx, f)
}

func (t timedStore) ClaimJobs(ctx context.Context, r store.Runner, capacity *api.Resources, n int, ttl time.Duration, now time.Time) ([]store.Claim, error) {
	defer t.time("claim_jobs")()
	return t.Store.ClaimJobs(ctx, r, capacity, n, ttl, now)
}

func (t timedStore) ReleaseClaim(ctx context.Context, f store.Fence) error {
	defer t.time("release_claim")()
	return t.Store.ReleaseClaim(ctx, f)
}

func (t timedStore) Heartbeat(ctx context.Context, f store.Fence, ttl time.Duration, now time.Time) (store.Job, error) {
	defer t.time("heartbeat")()
	return t.Store.Heartbeat(ctx, f, ttl, now)
}

func (t timedStore) CheckLease(ctx context.Context, f store.Fence) (store.Job, error) {
	defer t.time("check_lease")()
	return t.Store.CheckLease(ctx, f)
}

func (t timedStore) RequestCancel(ctx context.Context, id string, now time.Time) (store.Job, error) {
	defer t.time("request_cancel")()
	return t.Store.RequestCancel(ctx, id, now)
}

func (t timedStore) Finish(ctx context.Context, f store.Fence, state string, exitCode int, reason, class string, logSize int64, now time.Time) (store.Job, error) {
	defer t.time("finish")()
	return t.Store.Finish(ctx, f, state, exitCode, reason, class, logSize, now)
}

func (t timedStore) ReapExpired(ctx context.Context, now time.Time) ([]store.Reaped, error) {
	defer t.time("reap_expired")()
	return t.Store.ReapExpired(ctx, now)
}

func (t timedStore) ExtendLeases(ctx context.Context, until time.Time) error {
	defer t.time("extend_leases")()
	return t.Store.ExtendLeases(ctx, until)
}

func (t timedStore) PurgeFinished(ctx context.Context, before time.Time, limit int) ([]string, error) {
	defer t.time("purge_finished")()
	return t.Store.PurgeFinished(ctx, before, limit)
}

func (t timedStore) BlobRefs(ctx context.Context) (map[string]bool, error) {
	defer t.time("blob_refs")()
	return t.Store.BlobRefs(ctx)
}

func (t timedStore) AppendLog(ctx context.Context, f store.Fence, offset int64, data []byte) (int64, error) {
	defer t.time("append_log")()
	return t.Store.AppendLog(ctx, f, offset, data)
}

func (t timedStore) ReadLog(ctx context.Context, jobID string, offset int64, n int) ([]byte, error) {
	defer t.time("read_log")()
	return t.Store.ReadLog(ctx, jobID, offset, n)
}

func (t timedStore) AddEgress(ctx context.Context, f store.Fence, firstSeq int64, events []api.EgressEvent) error {
	defer t.time("add_egress")()
	return t.Store.AddEgress(ctx, f, firstSeq, events)
}

// QueryEgress's time includes streaming the events to the client.
func (t timedStore) QueryEgress(ctx context.Context, f store.EgressFilter, fn func(api.EgressEvent) error) error {
	defer t.time("query_egress")()
	return t.Store.QueryEgress(ctx, f, fn)
}

func (t timedStore) AddArtifact(ctx context.Context, f store.Fence, a store.Artifact) error {
	defer t.time("add_artifact")()
	return t.Store.AddArtifact(ctx, f, a)
}

func (t timedStore) ListArtifacts(ctx context.Context, jobID string) ([]store.Artifact, error) {
	defer t.time("list_artifacts")()
	return t.Store.ListArtifacts(ctx, jobID)
}

func (t timedStore) Artifact(ctx context.Context, jobID, name string) (store.Artifact, error) {
	defer t.time("artifact")()
	return t.Store.Artifact(ctx, jobID, name)
}
