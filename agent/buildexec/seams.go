package buildexec

import (
	"context"
	"net"

	"github.com/cleanroom-ci/cleanroom/gateway"
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
	// ListenHostEnd listens on the host end of the job's veth, where the
	// job's registry gateway serves it.
	ListenHostEnd(port int) (net.Listener, error)
	Close(ctx context.Context) error
}

// registryGateway is the part of *gateway.Gateway a job run uses.
type registryGateway interface {
	Check(ctx context.Context, j gateway.Job) error
	Prefetch(ctx context.Context, j gateway.Job, progress func(done, total int)) error
	Serve(ln net.Listener, j gateway.Job) (jobGateway, error)
}

// jobGateway is the part of *gateway.JobServer a job run uses.
type jobGateway interface {
	URL() string
	Failure() error
	Close() error
}

// agentGateway is registryGateway on the real gateway.
type agentGateway struct{ *gateway.Gateway }

func (g agentGateway) Serve(ln net.Listener, j gateway.Job) (jobGateway, error) {
	s, err := g.Gateway.Serve(ln, j)
	if err != nil {
		return nil, err // no typed nil in the interface
	}
	return s, nil
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
