// Command sidebyside measures cleanroom's sandbox lifecycle next to its
// baselines, interleaved in one run so machine noise hits both alike:
//
//	sandbox:  create → run `true` → destroy (no network)  vs  ctr run --rm IMAGE id true
//	full:     netpolicy setup (netns, veth, rules, DNS, audit) + sandbox in it
//	          → run `true` → destroy everything            vs  ctr run --rm + ip netns add/del
//
// each with and without a user namespace per sandbox (the remapped image
// snapshot of the slot is made once, before the timed runs, as an agent's
// first job on a slot does).
//
// The network half runs in a throwaway lab (internal/lab); nothing touches
// the root namespace. Root only; `make bench` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/lab"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

func main() {
	n := flag.Int("n", 20, "iterations of each measurement")
	addr := flag.String("containerd", os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"), "containerd socket")
	image := flag.String("image", "cleanroom.local/node:22", "image")
	flag.Parse()
	if err := run(*n, *addr, *image); err != nil {
		fmt.Fprintln(os.Stderr, "sidebyside:", err)
		os.Exit(1)
	}
}

func run(n int, addr, image string) error {
	ctx := context.Background()
	state, err := os.MkdirTemp("", "cr-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(state)
	plain, err := sandbox.New(ctx, sandbox.Config{Address: addr, Agent: "bench", StateDir: filepath.Join(state, "sb")})
	if err != nil {
		return err
	}
	defer plain.Close()
	// A range of its own, away from an agent's default one on this host.
	userns, err := sandbox.New(ctx, sandbox.Config{Address: addr, Agent: "bench", StateDir: filepath.Join(state, "sbu"),
		UserNS: &sandbox.UserNS{Base: 3 << 30, Slots: 1}})
	if err != nil {
		return err
	}
	defer userns.Close()
	l, err := lab.New(ctx, "bench")
	if err != nil {
		return fmt.Errorf("creating lab: %w", err)
	}
	defer l.Close()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = netpolicy.Settle(sctx) // addresses back in the pool before the lab goes
	}()
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/build"}
	fullOnce := func(c *sandbox.Client, id string) error { return fullLifecycle(ctx, c, l, state, image, env, id) }
	var ours, oursU, ctr, full, fullU, base []time.Duration

	sandboxOnce := func(c *sandbox.Client, id, netns string, mounts []sandbox.Mount) error {
		sb, err := c.Create(ctx, sandbox.Options{JobID: id, Image: image, Env: env, NetNS: netns, Mounts: mounts})
		if err != nil {
			return err
		}
		res, err := sb.Run(ctx, sandbox.Step{Args: []string{"true"}})
		if derr := sb.Destroy(ctx); derr != nil {
			return derr
		}
		if err != nil {
			return err
		}
		if res.Failed() {
			return fmt.Errorf("true failed: %s", res)
		}
		return nil
	}
	ctrOnce := func(i int) error {
		out, err := exec.Command("ctr", "--address", addr, "-n", sandbox.DefaultNamespace, "run", "--rm", image, fmt.Sprintf("bench-ctr-%d-%d", os.Getpid(), i), "true").CombinedOutput()
		if err != nil {
			return fmt.Errorf("ctr run: %v: %s", err, out)
		}
		return nil
	}
	if err := sandboxOnce(userns, "benchwarm", "", nil); err != nil { // the slot's remapped image
		return err
	}
	for i := 0; i < n; i++ {
		// sandbox alone, without and with a user namespace, vs ctr run --rm
		t := time.Now()
		if err := sandboxOnce(plain, fmt.Sprintf("bench-%d", i), "", nil); err != nil {
			return err
		}
		ours = append(ours, time.Since(t))
		t = time.Now()
		if err := sandboxOnce(userns, fmt.Sprintf("benchu-%d", i), "", nil); err != nil {
			return err
		}
		oursU = append(oursU, time.Since(t))
		t = time.Now()
		if err := ctrOnce(i); err != nil {
			return err
		}
		ctr = append(ctr, time.Since(t))

		for _, c := range []*sandbox.Client{plain, userns} {
			t = time.Now()
			if err := fullOnce(c, fmt.Sprintf("benchfull-%d", len(full)+len(fullU))); err != nil {
				return err
			}
			if c.UserNS() {
				fullU = append(fullU, time.Since(t))
			} else {
				full = append(full, time.Since(t))
			}
		}
		t = time.Now()
		nsName := fmt.Sprintf("crlab-benchns-%d", os.Getpid())
		if out, err := exec.Command("ip", "netns", "add", nsName).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns add: %v: %s", err, out)
		}
		if err := ctrOnce(n + i); err != nil {
			return err
		}
		if out, err := exec.Command("ip", "netns", "del", nsName).CombinedOutput(); err != nil {
			return fmt.Errorf("ip netns del: %v: %s", err, out)
		}
		base = append(base, time.Since(t))
	}
	mo, mu, mc, mf, mfu, mb := median(ours), median(oursU), median(ctr), median(full), median(fullU), median(base)
	fmt.Printf("iterations: %d   load average: %s", n, loadavg())
	fmt.Printf("sandbox create→true→destroy     median %7.1f ms\n", ms(mo))
	fmt.Printf("  with a user namespace          median %7.1f ms   ratio to without %.2f\n", ms(mu), ratio(mu, mo))
	fmt.Printf("ctr run --rm IMAGE id true       median %7.1f ms   ratio %.2f, with userns %.2f (target ≤ 1.05)\n", ms(mc), ratio(mo, mc), ratio(mu, mc))
	fmt.Printf("full: netpolicy + sandbox        median %7.1f ms\n", ms(mf))
	fmt.Printf("  with a user namespace          median %7.1f ms   ratio to without %.2f\n", ms(mfu), ratio(mfu, mf))
	fmt.Printf("ctr run --rm + ip netns add/del  median %7.1f ms   ratio %.2f, with userns %.2f (target ≤ 1.05)\n", ms(mb), ratio(mf, mb), ratio(mfu, mb))
	return nil
}

// fullLifecycle is netpolicy setup plus a sandbox of c in it, a `true` step
// and the teardown of both, as the agent does it: network and sandbox made
// concurrently, then the step, then the sandbox's processes ended before the
// network is closed while the rest of the sandbox is removed.
func fullLifecycle(ctx context.Context, c *sandbox.Client, l *lab.Lab, state, image string, env []string, id string) error {
	netState := filepath.Join(state, "net")
	var nw *netpolicy.Network
	netDone := make(chan error, 1)
	go func() {
		var err error
		nw, err = netpolicy.Setup(ctx, netpolicy.Config{
			ID: id, Runner: "bench", HostNS: l.HostNSPath(), Mode: netpolicy.ModeForward,
			Policy:   netpolicy.Policy{Registries: []string{"http://registry.cleanroom.test:4873/"}},
			Resolver: netpolicy.StaticResolver{Hosts: map[string][]net.IP{"registry.cleanroom.test": {lab.RegistryIP}}},
			StateDir: netState,
		})
		netDone <- err
	}()
	sb, err := c.Create(ctx, sandbox.Options{JobID: id, Image: image, Env: env, NetNS: netpolicy.NetNSPathFor(id), PathsLater: true,
		Mounts: []sandbox.Mount{{Source: netpolicy.ResolvConfPathFor(netState, id), Destination: "/etc/resolv.conf"}}})
	if nerr := <-netDone; nerr != nil {
		if err == nil {
			_ = sb.Destroy(ctx)
		}
		return fmt.Errorf("network setup: %w", nerr)
	}
	var cerr error
	if err == nil {
		var res sandbox.Result
		res, err = sb.Run(ctx, sandbox.Step{Args: []string{"true"}})
		if err == nil && res.Failed() {
			err = fmt.Errorf("true failed: %s", res)
		}
		// No process left: the network closes while the rest of the
		// sandbox is removed (buildexec's teardown).
		if serr := sb.StopAll(ctx); serr != nil && err == nil {
			err = serr
		}
		closed := make(chan struct{})
		go func() { defer close(closed); cerr = nw.Close(ctx) }()
		if derr := sb.Destroy(ctx); derr != nil && err == nil {
			err = derr
		}
		<-closed
	} else {
		cerr = nw.Close(ctx)
	}
	if err == nil {
		err = cerr
	}
	return err
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration{}, d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func ratio(a, b time.Duration) float64 { return float64(a) / float64(b) }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return string(b)
}
