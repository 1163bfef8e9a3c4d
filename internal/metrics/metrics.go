// Package metrics owns what the coordinator's and the agent's Prometheus
// registries share: a fresh registry per process (never the global default
// one) holding cleanroom_build_info and the Go runtime and process
// collectors, and the HTTP handler that serves it. Each component registers
// its own metrics next to the code they measure.
package metrics

import (
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cleanroom-ci/cleanroom/internal/version"
)

// NewRegistry returns a registry with cleanroom_build_info{version,commit,
// goversion} (always 1), go_* and process_*.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(BuildInfo(version.Get()), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// BuildInfo is the cleanroom_build_info gauge (always 1) whose labels name
// the build.
func BuildInfo(i version.Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "cleanroom_build_info",
		Help:        "The version, commit and Go version this binary was built from; always 1.",
		ConstLabels: prometheus.Labels{"version": i.Version, "commit": i.Commit, "goversion": i.GoVersion},
	}, func() float64 { return 1 })
}

// Handler serves reg in the Prometheus text (or OpenMetrics) format. A
// collector that fails drops only its own metrics (logged, and counted in
// promhttp_metric_handler_errors_total); a scrape takes at most 10 s.
func Handler(reg *prometheus.Registry, log hclog.Logger) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      log.StandardLogger(&hclog.StandardLoggerOptions{ForceLevel: hclog.Error}),
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
		Timeout:       10 * time.Second,
	})
}
