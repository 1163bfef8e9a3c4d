package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/cleanroom-ci/cleanroom/api"
)

// Causes of a job's context cancellation; they decide the reported state.
var (
	// ErrCanceledByUser: the coordinator's heartbeat answer said cancel.
	ErrCanceledByUser = errors.New("canceled on request")
	// ErrTimedOut: the job ran past its timeout.
	ErrTimedOut = errors.New("timed out")
	// ErrShutdown: the agent is stopping and the grace period is over.
	ErrShutdown = errors.New("agent shutting down")
	// ErrLeaseLost: the coordinator gave the job to another runner (409);
	// nothing more is reported for it.
	ErrLeaseLost = errors.New("lease lost")
	// ErrRevoked: the runner's token was revoked (401); the agent stops.
	ErrRevoked = errors.New("runner revoked")
)

// Agent runs the job loop. Build it with New, then call Run.
type Agent struct {
	// OnStart runs once before the first claim (`agent run` runs sandbox and
	// network garbage collection here); an error stops Run.
	OnStart func(ctx context.Context) error
	// GracePeriod: after Run's context is done, running jobs get this long
	// to finish before they are canceled (default from the config).
	GracePeriod time.Duration
	// ClaimWait is the claim long-poll (default 30s).
	ClaimWait time.Duration
	// ReportTimeout bounds how long log, events and result are retried
	// after a job ends while the coordinator is unreachable (default 10m).
	ReportTimeout time.Duration
	// ExtractLimits bound source archives.
	ExtractLimits ExtractLimits
	// Capacity is sent with every claim: the most this runner gives one job.
	// The coordinator then leaves jobs that ask for more to bigger runners.
	// New takes it from the executor when it implements CapacityReporter.
	Capacity *api.Resources

	cfg    *Config
	client Coordinator
	exec   Executor
	log    hclog.Logger

	metrics   *Metrics
	readiness *readiness

	running   atomic.Int64
	freed     chan struct{}
	hardStop  context.CancelCauseFunc
	stopNow   chan struct{}
	stopOnce  sync.Once
	startedMu sync.Mutex
	started   bool
	done      chan struct{}
}

// New builds an agent from its config. Unless WithCoordinator says otherwise,
// it talks to the config's coordinator through an api.Client with the runner
// token; tests may replace that client's transport via Client().HTTP.
func New(cfg *Config, exec Executor, log hclog.Logger, opts ...Option) (*Agent, error) {
	if exec == nil {
		return nil, errors.New("creating agent: no executor")
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	cl := o.coordinator
	if cl == nil {
		tok, err := cfg.Token()
		if err != nil {
			return nil, err
		}
		if cl, err = newClient(cfg, tok); err != nil {
			return nil, err
		}
	}
	a := &Agent{
		GracePeriod:   cfg.GracePeriod.D(),
		ClaimWait:     30 * time.Second,
		ReportTimeout: 10 * time.Minute,
		cfg:           cfg,
		client:        cl,
		exec:          exec,
		log:           log.With("runner", cfg.RunnerID),
		freed:         make(chan struct{}, 1),
		stopNow:       make(chan struct{}),
		done:          make(chan struct{}),
	}
	if c, ok := exec.(CapacityReporter); ok {
		capacity := c.Capacity()
		a.Capacity = &capacity
	}
	if a.metrics = o.metrics; a.metrics == nil {
		a.metrics = NewMetrics()
	}
	if err := a.metrics.bind(a); err != nil {
		return nil, err
	}
	a.client = meteredCoordinator{cl, a.metrics}
	a.readiness = &readiness{}
	if r, ok := exec.(ReadinessReporter); ok {
		a.readiness.checks = r.ReadyChecks()
	}
	return a, nil
}

// Done is closed when Run has returned.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Client is the agent's coordinator client, or nil when New was given
// another Coordinator.
func (a *Agent) Client() *api.Client {
	c := a.client
	if m, ok := c.(meteredCoordinator); ok {
		c = m.Coordinator
	}
	cl, _ := c.(*api.Client)
	return cl
}

// StopNow cancels running jobs at once (the second SIGTERM). They are still
// torn down, and their results reported with a short deadline.
func (a *Agent) StopNow() {
	a.stopOnce.Do(func() { close(a.stopNow) })
}

// Run claims and runs jobs until ctx is done, then stops gracefully: no new
// claims, running jobs get GracePeriod, then they are canceled and reported.
// It returns nil after a requested stop, ErrRevoked if the runner was
// revoked, or OnStart's error.
func (a *Agent) Run(ctx context.Context) error {
	a.startedMu.Lock()
	if a.started {
		a.startedMu.Unlock()
		return errors.New("running agent: already running")
	}
	a.started = true
	a.startedMu.Unlock()
	defer close(a.done)
	// Nothing here survives a run: a crashed run's workspaces and spools
	// belong to jobs whose leases have expired (and which were re-queued).
	for _, d := range []string{a.wsRoot(), a.spoolRoot(), a.scratchRoot()} {
		if err := removeAll(d); err != nil {
			return fmt.Errorf("clearing %s left by a previous run: %w", d, err)
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if a.OnStart != nil {
		if err := a.OnStart(ctx); err != nil {
			return fmt.Errorf("running start-up hook: %w", err)
		}
	}
	// Jobs run under hardCtx: it outlives ctx by the grace period.
	hardCtx, hardStop := context.WithCancelCause(context.WithoutCancel(ctx))
	defer hardStop(nil)
	a.hardStop = hardStop
	go func() {
		select {
		case <-a.stopNow:
			hardStop(ErrShutdown)
		case <-hardCtx.Done():
		}
	}()
	a.log.Info("agent started", "name", a.cfg.Name, "slots", a.cfg.Concurrency, "coordinators", a.cfg.URLs())

	var wg sync.WaitGroup
	runErr := a.claimLoop(ctx, hardCtx, &wg)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if n := a.running.Load(); n > 0 {
		a.log.Info("stopping: waiting for running jobs", "jobs", n, "grace", a.GracePeriod)
	}
	grace := time.NewTimer(a.GracePeriod)
	defer grace.Stop()
	if errors.Is(runErr, ErrRevoked) {
		hardStop(ErrRevoked)
	}
	select {
	case <-done:
	case <-grace.C:
		a.log.Warn("grace period over: canceling running jobs")
		hardStop(ErrShutdown)
		<-done
	case <-hardCtx.Done():
		<-done
	}
	a.log.Info("agent stopped")
	return runErr
}

func (a *Agent) wsRoot() string    { return filepath.Join(a.cfg.DataDir, "workspaces") }
func (a *Agent) spoolRoot() string { return filepath.Join(a.cfg.DataDir, "spool") }

// scratchRoot holds executors' per-job output (artifact copies, SBOM,
// provenance) until uploaded; see Result.Scratch.
func (a *Agent) scratchRoot() string { return filepath.Join(a.cfg.DataDir, "jobs") }

// claimLoop long-polls for as many jobs as there are free slots and starts
// each in its own goroutine.
func (a *Agent) claimLoop(ctx, hardCtx context.Context, wg *sync.WaitGroup) error {
	bo := backoff{min: 200 * time.Millisecond, max: 30 * time.Second}
	for ctx.Err() == nil {
		free := int64(a.cfg.Concurrency) - a.running.Load()
		if free <= 0 {
			select {
			case <-a.freed:
			case <-ctx.Done():
			}
			continue
		}
		resp, err := a.client.Claim(ctx, api.ClaimRequest{Slots: int(free), Wait: api.Duration(a.ClaimWait), Capacity: a.Capacity, Registries: a.cfg.GateRegistries()})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, api.ErrUnauthorized) {
				a.log.Error("runner token refused: the runner was removed or its token is wrong", "error", err)
				return fmt.Errorf("claiming jobs: %w", ErrRevoked)
			}
			d := bo.next()
			a.log.Warn("claiming failed; retrying", "error", err, "in", d)
			sleep(ctx, d)
			continue
		}
		bo.reset()
		for _, c := range resp.Claims {
			a.running.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					a.running.Add(-1)
					select {
					case a.freed <- struct{}{}:
					default:
					}
				}()
				a.runJob(hardCtx, c)
			}()
		}
	}
	return nil
}

// backoff is exponential backoff with jitter (half to full of the step).
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.n++
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// retry calls fn until it succeeds, returns a final (non-retryable) error,
// or ctx ends.
func (a *Agent) retry(ctx context.Context, what string, fn func() error) error {
	bo := backoff{min: 100 * time.Millisecond, max: 10 * time.Second}
	for {
		err := fn()
		if err == nil || !api.Retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w (last error: %v)", what, ctx.Err(), err)
		}
		d := bo.next()
		a.log.Debug("retrying", "what", what, "error", err, "in", d)
		sleep(ctx, d)
	}
}
