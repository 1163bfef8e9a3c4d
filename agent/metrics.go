package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cleanroom-ci/cleanroom/api"
	cmetrics "github.com/cleanroom-ci/cleanroom/internal/metrics"
)

// Metrics is an agent's Prometheus instrumentation, on a registry of its own
// (internal/metrics; never the global default one). The job loop counts what it uploads and
// exposes its running jobs and slots; the executor reports sandbox and
// network setup and teardown through ObserveIsolation and garbage
// collection through GCRemoved. One Metrics serves one Agent (WithMetrics).
type Metrics struct {
	reg       *prometheus.Registry
	isolation *prometheus.HistogramVec
	failures  *prometheus.CounterVec
	gcRemoved *prometheus.CounterVec
	uploaded  *prometheus.CounterVec
	egress    prometheus.Counter
}

// NewMetrics registers the agent's metrics (docs/operations.md lists them).
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: cmetrics.NewRegistry(),
		isolation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "cleanroom_agent_isolation_duration_seconds",
			Help:    "Time to set up or tear down a job's sandbox or network, by part (sandbox, network) and op (setup, teardown).",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"part", "op"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_agent_isolation_failures_total",
			Help: "Sandbox or network setups and teardowns that failed (a failed setup means the job did not run).",
		}, []string{"part", "op"}),
		gcRemoved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_agent_gc_removed_total",
			Help: "Objects left by crashed jobs that garbage collection removed, by kind.",
		}, []string{"kind"}),
		uploaded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cleanroom_agent_uploaded_bytes_total",
			Help: "Bytes of job logs and artifacts the coordinator accepted, by kind (log, artifact); a log chunk resent after a lost answer counts again.",
		}, []string{"kind"}),
		egress: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "cleanroom_agent_egress_events_posted_total",
			Help: "Egress events the coordinator accepted from this agent.",
		}),
	}
	for _, part := range []string{"sandbox", "network"} {
		for _, op := range []string{"setup", "teardown"} {
			m.isolation.WithLabelValues(part, op)
			m.failures.WithLabelValues(part, op)
		}
	}
	for _, k := range []string{"log", "artifact"} {
		m.uploaded.WithLabelValues(k)
	}
	m.reg.MustRegister(m.isolation, m.failures, m.gcRemoved, m.uploaded, m.egress)
	return m
}

// ObserveIsolation records one setup or teardown of a job's sandbox or
// network (buildexec's Config.Observe).
func (m *Metrics) ObserveIsolation(part, op string, d time.Duration, failed bool) {
	m.isolation.WithLabelValues(part, op).Observe(d.Seconds())
	if failed {
		m.failures.WithLabelValues(part, op).Inc()
	}
}

// GCRemoved counts n objects of a kind (containers, namespaces, chains…)
// that garbage collection removed.
func (m *Metrics) GCRemoved(kind string, n int) {
	if n > 0 {
		m.gcRemoved.WithLabelValues(kind).Add(float64(n))
	}
}

// WithMetrics makes the agent report to m (made before the executor, whose
// observer feeds it) instead of metrics of its own.
func WithMetrics(m *Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// bind registers the gauges that read a's state at scrape.
func (m *Metrics) bind(a *Agent) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cleanroom_agent_jobs_running", Help: "Jobs this agent is running."},
			func() float64 { return float64(a.running.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cleanroom_agent_slots", Help: "Jobs this agent runs at once at most (concurrency)."},
			func() float64 { return float64(a.cfg.Concurrency) }),
	} {
		if err := m.reg.Register(c); err != nil {
			return fmt.Errorf("registering agent metrics (one Metrics per agent): %w", err)
		}
	}
	return nil
}

// meteredCoordinator counts what the coordinator accepted.
type meteredCoordinator struct {
	Coordinator
	m *Metrics
}

func (c meteredCoordinator) AppendLog(ctx context.Context, jobID string, token, offset int64, data []byte) (int64, error) {
	next, err := c.Coordinator.AppendLog(ctx, jobID, token, offset, data)
	if err == nil {
		c.m.uploaded.WithLabelValues("log").Add(float64(len(data)))
	}
	return next, err
}

func (c meteredCoordinator) UploadArtifact(ctx context.Context, jobID string, token int64, name, kind, sha256 string, r io.Reader) (api.Artifact, error) {
	art, err := c.Coordinator.UploadArtifact(ctx, jobID, token, name, kind, sha256, r)
	if err == nil {
		c.m.uploaded.WithLabelValues("artifact").Add(float64(art.Size))
	}
	return art, err
}

func (c meteredCoordinator) PostEgress(ctx context.Context, jobID string, token, firstSeq int64, events []api.EgressEvent) error {
	err := c.Coordinator.PostEgress(ctx, jobID, token, firstSeq, events)
	if err == nil {
		c.m.egress.Add(float64(len(events)))
	}
	return err
}

// ReadyCheck is one cheap check that the agent could run a job now (the
// containerd daemon answers, the image is there, the network policy can be
// set up). Check should return within a second or two.
type ReadyCheck struct {
	Name  string
	Check func(context.Context) error
}

// ReadinessReporter is implemented by executors that know what they need;
// the agent's /readyz runs their checks (cached for ReadyCacheTTL).
type ReadinessReporter interface {
	ReadyChecks() []ReadyCheck
}

// ReadyCacheTTL is how long /readyz reuses the executor's check results,
// so a scraper polling it cannot load containerd.
const ReadyCacheTTL = 5 * time.Second

// readiness runs and caches the executor's checks.
type readiness struct {
	checks []ReadyCheck
	mu     sync.Mutex
	at     time.Time
	failed map[string]string
}

func (r *readiness) run(ctx context.Context) map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < ReadyCacheTTL {
		return r.failed
	}
	failed := map[string]string{}
	for _, c := range r.checks {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := c.Check(cctx); err != nil {
			failed[c.Name] = err.Error()
		}
		cancel()
	}
	r.at, r.failed = time.Now(), failed
	return failed
}

// ready reports what keeps the agent from running jobs now: its job loop
// not running (not started yet, or stopped), and the executor's failed
// checks.
func (a *Agent) ready(ctx context.Context) map[string]string {
	failed := map[string]string{}
	for k, v := range a.readiness.run(ctx) {
		failed[k] = v
	}
	a.startedMu.Lock()
	started := a.started
	a.startedMu.Unlock()
	select {
	case <-a.done:
		failed["job_loop"] = "stopped"
	default:
		if !started {
			failed["job_loop"] = "not started"
		}
	}
	return failed
}

// ServeMetrics serves the agent's /metrics (Prometheus), /healthz (the
// process answers) and /readyz (200, or 503 naming each failed check) on ln
// until ctx is done. It is plain HTTP: listen on loopback or an internal
// address (the agent's metrics_listen).
func (a *Agent) ServeMetrics(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", cmetrics.Handler(a.metrics.reg, a.log))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeStatus(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if failed := a.ready(r.Context()); len(failed) > 0 {
			writeStatus(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "failed": failed})
			return
		}
		writeStatus(w, http.StatusOK, map[string]any{"status": "ready"})
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving agent metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

func writeStatus(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
