package buildexec

import (
	"context"
	"time"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// Observation is one timed step of a job's isolation, for the agent's
// metrics: the sandbox or the network, set up or torn down.
type Observation struct {
	Part     string // PartSandbox or PartNetwork
	Op       string // OpSetup or OpTeardown
	Duration time.Duration
	Err      error
}

// Observation parts and operations.
const (
	PartSandbox = "sandbox"
	PartNetwork = "network"
	OpSetup     = "setup"
	OpTeardown  = "teardown"
)

// observe wraps the seams so each Create/Setup and Destroy/Close is timed
// and reported to fn; the phases themselves (run.go) know nothing of it.
func observe(sb sandboxes, nw networks, fn func(Observation)) (sandboxes, networks) {
	return observedSandboxes{sb, fn}, observedNetworks{nw, fn}
}

func timed(fn func(Observation), part, op string, do func() error) error {
	start := time.Now()
	err := do()
	fn(Observation{Part: part, Op: op, Duration: time.Since(start), Err: err})
	return err
}

type observedSandboxes struct {
	sandboxes
	fn func(Observation)
}

func (o observedSandboxes) Create(ctx context.Context, opts sandbox.Options) (jobSandbox, error) {
	var sb jobSandbox
	err := timed(o.fn, PartSandbox, OpSetup, func() (err error) { sb, err = o.sandboxes.Create(ctx, opts); return err })
	if err != nil {
		return nil, err
	}
	return observedSandbox{sb, o.fn}, nil
}

type observedSandbox struct {
	jobSandbox
	fn func(Observation)
}

func (o observedSandbox) Destroy(ctx context.Context) error {
	return timed(o.fn, PartSandbox, OpTeardown, func() error { return o.jobSandbox.Destroy(ctx) })
}

type observedNetworks struct {
	networks
	fn func(Observation)
}

func (o observedNetworks) Setup(ctx context.Context, cfg netpolicy.Config) (jobNetwork, error) {
	var nw jobNetwork
	err := timed(o.fn, PartNetwork, OpSetup, func() (err error) { nw, err = o.networks.Setup(ctx, cfg); return err })
	if err != nil {
		return nil, err
	}
	return observedNetwork{nw, o.fn}, nil
}

type observedNetwork struct {
	jobNetwork
	fn func(Observation)
}

func (o observedNetwork) Close(ctx context.Context) error {
	return timed(o.fn, PartNetwork, OpTeardown, func() error { return o.jobNetwork.Close(ctx) })
}
