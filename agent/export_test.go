package agent

import "github.com/prometheus/client_golang/prometheus"

// Gatherer exposes the registry to the lint test.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }
