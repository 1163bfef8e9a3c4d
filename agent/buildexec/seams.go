package buildexec

import (
	"context"

	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// The executor reaches containerd and the kernel only through these narrow
// interfaces, so the order of a job's phases — above all that nothing runs
// when the policy cannot be set up — is unit-tested with fakes, and the root
// tests exercise the real ones (containerdSandboxes, kernelNetworks).

// sandboxes creates job sandboxes.
type sandboxes interface {
	Create(ctx context.Context, o sandbox.Options) (jobSandbox, error)
	ImageDigest(ctx context.Context, ref string) (string, error)
}

// jobSandbox is the part of *sandbox.Sandbox a job run uses.
type jobSandbox interface {
	ID() string
	WorkspacePath() string
	Run(ctx context.Context, st sandbox.Step) (sandbox.Result, error)
	Kill(ctx context.Context) error
	StopAll(ctx context.Context) error
	Destroy(ctx context.Context) error
}

// networks sets up job networks.
type networks interface {
	Setup(ctx context.Context, cfg netpolicy.Config) (jobNetwork, error)
}

// jobNetwork is the part of *netpolicy.Network a job run uses.
type jobNetwork interface {
	Allowed() []netpolicy.Destination
	Violations() <-chan netpolicy.Event
	AuditFailed() <-chan error
	Close(ctx context.Context) error
}

// containerdSandboxes is sandboxes on a real containerd.
type containerdSandboxes struct{ *sandbox.Client }

func (c containerdSandboxes) Create(ctx context.Context, o sandbox.Options) (jobSandbox, error) {
	sb, err := c.Client.Create(ctx, o)
	if err != nil {
		return nil, err // no typed nil in the interface
	}
	return sb, nil
}

// kernelNetworks is networks made of real namespaces, veths and rules.
type kernelNetworks struct{}

func (kernelNetworks) Setup(ctx context.Context, cfg netpolicy.Config) (jobNetwork, error) {
	nw, err := netpolicy.Setup(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return kernelNetwork{nw}, nil
}

type kernelNetwork struct{ *netpolicy.Network }

func (n kernelNetwork) Allowed() []netpolicy.Destination { return n.Destinations }
