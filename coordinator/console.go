package coordinator

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator/console"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
)

// consoleBackend gives the web console (coordinator/console) what the API
// gives the same token: authentication by authenticateToken, jobs through
// jobFor (visibleJob), lists and egress narrowed to a submit token's own
// jobs, runners to admin tokens only.
type consoleBackend struct {
	s  *Server
	st consoleStore
}

// consoleStore is what the console reads from the store: it writes nothing.
type consoleStore interface {
	store.JobReader
	store.RunnerReader
	store.LogReader
	store.EgressReader
	store.ArtifactReader
}

var _ console.Backend = consoleBackend{}

// newConsole is the console the coordinator serves under /ui/.
func (s *Server) newConsole() *console.Console {
	return console.New(consoleBackend{s: s, st: s.store}, console.Options{Logger: s.log.Named("console"), Now: s.cfg.Now})
}

func toPrincipal(p console.Principal) principal {
	return principal{kind: p.Kind, tokenID: p.TokenID}
}

// ownJobsOnly is the submitter filter of p's lists: a submit token's id,
// "" (every job) for admin and audit tokens.
func (p principal) ownJobsOnly() string {
	if p.kind == principalSubmit {
		return p.tokenID
	}
	return ""
}

func (b consoleBackend) Authenticate(ctx context.Context, token string) (console.Principal, error) {
	p, err := b.s.authenticateToken(ctx, token)
	if err != nil {
		return console.Principal{}, err
	}
	switch p.kind {
	case principalAdmin:
		return console.Principal{Kind: console.KindAdmin}, nil
	case principalSubmit:
		return console.Principal{Kind: console.KindSubmit, TokenID: p.tokenID}, nil
	case principalAudit:
		return console.Principal{Kind: console.KindAudit, TokenID: p.tokenID}, nil
	}
	return console.Principal{}, fmt.Errorf("a %s token cannot sign in to the console: %w", p.kind, api.ErrUnauthorized)
}

func (b consoleBackend) Jobs(ctx context.Context, p console.Principal, f store.JobFilter) ([]store.Job, error) {
	f.Submitter = toPrincipal(p).ownJobsOnly()
	return b.st.ListJobs(ctx, f)
}

func (b consoleBackend) Job(ctx context.Context, p console.Principal, id string) (store.Job, error) {
	return b.s.jobFor(ctx, toPrincipal(p), id)
}

func (b consoleBackend) DeniedCounts(ctx context.Context, p console.Principal, jobIDs []string) (map[string]int, error) {
	return b.st.CountEgress(ctx, jobIDs, api.VerdictDeny)
}

func (b consoleBackend) ReadLog(ctx context.Context, p console.Principal, jobID string, offset int64, max int) ([]byte, error) {
	if _, err := b.s.jobFor(ctx, toPrincipal(p), jobID); err != nil {
		return nil, err
	}
	return b.st.ReadLog(ctx, jobID, offset, max)
}

func (b consoleBackend) LogChanged(jobID string) <-chan struct{} {
	return b.s.hub.wait(store.ChangeLog(jobID))
}

func (b consoleBackend) Egress(ctx context.Context, p console.Principal, f store.EgressFilter, fn func(api.EgressEvent) error) error {
	f.Submitter = toPrincipal(p).ownJobsOnly()
	return b.st.QueryEgress(ctx, f, fn)
}

func (b consoleBackend) Artifacts(ctx context.Context, p console.Principal, jobID string) ([]api.Artifact, error) {
	if _, err := b.s.jobFor(ctx, toPrincipal(p), jobID); err != nil {
		return nil, err
	}
	return b.st.ListArtifacts(ctx, jobID)
}

func (b consoleBackend) OpenArtifact(ctx context.Context, p console.Principal, jobID, name string) (io.ReadCloser, api.Artifact, error) {
	if _, err := b.s.jobFor(ctx, toPrincipal(p), jobID); err != nil {
		return nil, api.Artifact{}, err
	}
	a, err := b.st.Artifact(ctx, jobID, name)
	if err != nil {
		return nil, a, err
	}
	f, err := b.s.store.OpenBlob(ctx, a.SHA256)
	if err != nil {
		return nil, a, err
	}
	return f, a, nil
}

func (b consoleBackend) Runners(ctx context.Context, p console.Principal) ([]store.Runner, error) {
	if p.Kind != console.KindAdmin {
		return nil, fmt.Errorf("a %s token may not list runners: %w", p.Kind, api.ErrForbidden)
	}
	return b.st.ListRunners(ctx)
}

func (b consoleBackend) RunnerKey(ctx context.Context, runnerID string) (ed25519.PublicKey, *time.Time, error) {
	rn, err := b.st.Runner(ctx, runnerID)
	if err != nil {
		return nil, nil, err
	}
	if len(rn.PublicKey) != ed25519.PublicKeySize {
		return nil, rn.RevokedAt, fmt.Errorf("runner %s has no ed25519 key", runnerID)
	}
	return ed25519.PublicKey(rn.PublicKey), rn.RevokedAt, nil
}

func (b consoleBackend) Done() <-chan struct{} { return b.s.stopCtx.Done() }
