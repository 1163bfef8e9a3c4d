package agent

import (
	"context"
	"io"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Executor runs one claimed job. It is the seam between the job loop (this
// package: claiming, leases, source, log, upload, result) and the sandbox
// (supply-chain gate, secrets, network policy, containerd), which
// cmd/cleanroom/executor.go wires in (agent/buildexec).
type Executor interface {
	// Run executes job in workspace ws (the source is already extracted
	// there). Build output goes to out (the executor redacts secrets before
	// writing); egress events are reported through rep.Event; artifact files
	// to upload are returned. Cancel, timeout and agent shutdown arrive as
	// cancellation of ctx; Run must still tear everything down before it
	// returns. A non-nil error means the job could not be run (the job fails
	// with the error as its reason).
	Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep Reporter) (Result, error)
}

// StringRedactor is implemented by executors that hold secrets. The job loop
// passes its own log lines (a source fetch error, the final state, an
// artifact not uploaded) and the job's reason through it, so a secret that
// turns up in an error message is redacted there as in the build output.
type StringRedactor interface {
	RedactString(string) string
}

// SourceFetcher is implemented by executors that can fetch a git source in
// a cage of their own: a throwaway network namespace under the runner's
// egress policy for git hosts, as an unprivileged user, with size limits.
// The job loop never fetches a git source itself; an executor without it
// refuses git sources.
type SourceFetcher interface {
	// FetchGit puts job.Source (a git URL and commit) into the empty
	// workspace ws, checked out at exactly that commit. Its own log lines
	// go to out; every egress attempt of the fetch goes to rep, like a
	// build's. An error ends the job with it as the reason.
	FetchGit(ctx context.Context, job *api.Job, ws string, out io.Writer, rep Reporter) error
}

// CapacityReporter is implemented by executors with resource limits: the
// agent advertises them with its claims (see Agent.Capacity).
type CapacityReporter interface {
	Capacity() api.Resources
}

// Reporter receives egress events while a job runs. Event never blocks on
// the network: events are spooled and uploaded in batches.
type Reporter interface {
	Event(api.EgressEvent)
}

// Result is what an Executor reports.
type Result struct {
	// ExitCode of the build (or of the step that failed).
	ExitCode int
	// State is api.StateSucceeded, StateFailed or StateCanceled; empty
	// means "from ExitCode" (0 succeeded, else failed).
	State string
	// Reason explains a failure in one line ("npm ci: lockfile missing").
	Reason string
	// Class is the failure class of a result that is not a success
	// (api.ClassBuild, ClassRefused...). Empty on a failure means
	// api.ClassBuild when the executor returned no error (the build's
	// exit code), else api.ClassInfrastructure.
	Class string
	// Artifacts are files to upload, SBOM and provenance included.
	Artifacts []Artifact
	// Scratch, if set, is a directory the agent removes once the artifacts
	// are uploaded (where the executor kept them after its sandbox was gone).
	Scratch string
}

// Artifact is a file to upload. Path must be a regular file (symlinks are
// refused); Kind is api.KindFile, KindSBOM or KindProvenance.
type Artifact struct {
	Name string
	Path string
	Kind string
	// SHA256, if set, is the file's digest as the executor computed it while
	// it wrote the file, so the agent does not read it again; the
	// coordinator checks it on upload.
	SHA256 string
}

// ExecutorFunc adapts a function to Executor (tests, simple executors).
type ExecutorFunc func(ctx context.Context, job *api.Job, ws string, out io.Writer, rep Reporter) (Result, error)

// Run calls f.
func (f ExecutorFunc) Run(ctx context.Context, job *api.Job, ws string, out io.Writer, rep Reporter) (Result, error) {
	return f(ctx, job, ws, out, rep)
}
