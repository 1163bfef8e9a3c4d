package api

import "fmt"

// DefaultLogLimit is the per-job log cap of a coordinator whose max_log is
// not set, and the agent's when a lease carries no LogLimit.
const DefaultLogLimit = 16 << 20

// LogTruncatedMarker is the text stored once where a job's log passed limit
// bytes. The store writes it, and the agent writes the same text where it
// stops spooling, so a log capped at the agent reads as one capped at the
// coordinator.
// It is a record (api.Record), so it renders as cleanroom's own line.
func LogTruncatedMarker(limit int64) string {
	return "\n" + Record(fmt.Sprintf("[cleanroom: log truncated: more than %d bytes; the rest of this job's output was dropped]", limit))
}
