package coordinator

import "github.com/prometheus/client_golang/prometheus"

// Gatherer exposes the server's metrics registry to the lint test.
func (s *Server) Gatherer() prometheus.Gatherer { return s.metrics.reg }
