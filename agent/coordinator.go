package agent

import (
	"context"
	"io"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Coordinator is the part of the coordinator's API the job loop calls: claim,
// lease renewal, source, log, egress events, artifacts and result. The agent
// owns this interface, as buildkite's agent owns its APIClient, so the job
// loop can be tested against an in-memory coordinator that answers with the
// errors a real one seldom gives on cue (a 409 on a heartbeat, a 401, a lost
// answer to a stored log chunk). *api.Client implements it; errors are
// classified with the api sentinels (errors.Is) and api.Retryable.
type Coordinator interface {
	// Claim long-polls for up to req.Slots jobs.
	Claim(ctx context.Context, req api.ClaimRequest) (api.ClaimResponse, error)
	// Heartbeat renews a lease and says whether the job was canceled.
	Heartbeat(ctx context.Context, jobID string, req api.HeartbeatRequest) (api.HeartbeatResponse, error)
	// DownloadSource copies an uploaded job source to w.
	DownloadSource(ctx context.Context, jobID string, token int64, w io.Writer) (int64, error)
	// AppendLog sends log bytes from offset and returns the next offset the
	// coordinator expects; a chunk sent again is stored once.
	AppendLog(ctx context.Context, jobID string, token, offset int64, data []byte) (int64, error)
	// PostEgress stores a batch of events whose first has number firstSeq;
	// a batch sent again is stored once.
	PostEgress(ctx context.Context, jobID string, token, firstSeq int64, events []api.EgressEvent) error
	// UploadArtifact stores one artifact file with its sha256.
	UploadArtifact(ctx context.Context, jobID string, token int64, name, kind, sha256 string, r io.Reader) (api.Artifact, error)
	// Result ends the job; the same result sent again is accepted.
	Result(ctx context.Context, jobID string, req api.ResultRequest) error
}

var _ Coordinator = (*api.Client)(nil)

// Option changes how New builds an agent.
type Option func(*options)

type options struct {
	coordinator Coordinator
	metrics     *Metrics
}

// WithCoordinator makes the agent talk to c instead of an api.Client built
// from the config (whose coordinator URL, CA file and runner token are then
// not used). Tests pass an in-memory coordinator here.
func WithCoordinator(c Coordinator) Option {
	return func(o *options) { o.coordinator = c }
}
