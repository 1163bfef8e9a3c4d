// Package registry owns the internal npm registry used by integration tests
// and the demo: a Verdaccio installed with the host's npm, started with no
// uplinks (nothing is ever proxied from the public registry), htpasswd auth
// and throw-away storage, then seeded with exact package versions packed from
// the public registry once and cached, plus local tarballs such as the
// malicious example package. It also knows the example projects' package
// manifest (examples/registry-packages.txt).
//
// The registry listens on loopback, or on an address inside a network
// namespace the caller names (the lab's registry namespace); this package
// never creates namespaces or routes itself.
package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// PublisherUser is the account Start creates to publish seed packages; it
// is the only account allowed to publish.
const PublisherUser = "cleanroom-publisher"

// ReaderUser is the read-only account Start creates for builds that should
// authenticate; reading also works anonymously.
const ReaderUser = "cleanroom-reader"

// Options configures Start.
type Options struct {
	// Install is the Verdaccio to run; nil means Install(ctx, CacheDir()).
	Install *Installation
	// Listen is the host:port Verdaccio binds, for example
	// "10.231.254.2:4873" in the lab. Empty, or a port of 0, picks a free
	// port on 127.0.0.1 (only valid without NetNS).
	Listen string
	// NetNS, when set, is the name of a network namespace (as listed by
	// `ip netns`) Verdaccio runs in, via `ip netns exec`. The harness then
	// talks to it from inside that namespace too.
	NetNS string
	// ReadyTimeout bounds the wait for GET /-/ping; 0 means 30 s.
	ReadyTimeout time.Duration
	// Progress, when set, receives a line now and then while Seed packs
	// tarballs from the public registry or publishes many of them.
	Progress io.Writer
}

// Registry is a running Verdaccio. Stop it when done.
type Registry struct {
	// URL is the base URL with a trailing slash, e.g. "http://127.0.0.1:41234/".
	URL string
	// Addr is the host:port Verdaccio listens on.
	Addr string
	// PID is Verdaccio's process id, also its process group id.
	PID int
	// Dir is the temporary folder holding config, storage, htpasswd and log.
	Dir string
	// LogPath is Verdaccio's combined stdout/stderr.
	LogPath string
	// PublisherToken authenticates PublisherUser; seed publishing uses it.
	PublisherToken string
	// ReaderToken authenticates ReaderUser: it may read, not publish.
	ReaderToken string

	install  *Installation
	progress io.Writer
	netns    string
	client   *http.Client
	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error

	stopOnce sync.Once
	stopErr  error
}

// config is Verdaccio's configuration. Packages have no `proxy` key, which is
// how Verdaccio spells "no uplink": nothing is fetched from anywhere else.
// Anyone may read ($all); only the publisher user may publish, so every other
// user (ReaderUser, or one a build registers itself) is read-only.
// max_users lets the harness create users over the API. The web UI and the
// audit middleware (which forwards to the public registry) stay off. API
// tokens are JWTs (security.api.jwt), checked by their signature: Verdaccio's
// legacy tokens cost a bcrypt check of the htpasswd password on every
// request (~0.5 s on a busy 2-core machine), which made seeding the webapp
// example's 373 packages take minutes.
const config = `storage: %[1]s/storage
security:
  api:
    legacy: false
    jwt:
      sign:
        expiresIn: 7d
auth:
  htpasswd:
    file: %[1]s/htpasswd
    max_users: 1000
uplinks: {}
packages:
  '@*/*':
    access: $all
    publish: %[3]s
    unpublish: %[3]s
  '**':
    access: $all
    publish: %[3]s
    unpublish: %[3]s
web:
  enable: false
max_body_size: 200mb
server:
  keepAliveTimeout: 60
logs: { type: stdout, format: pretty, level: http }
listen: %[2]s
`

// Start writes a fresh configuration and storage folder, starts Verdaccio in
// its own process group, waits until it answers GET /-/ping and creates the
// publisher user. On error nothing is left running.
func Start(ctx context.Context, opts Options) (_ *Registry, retErr error) {
	in := opts.Install
	if in == nil {
		var err error
		if in, err = Install(ctx, ""); err != nil {
			return nil, err
		}
	}
	addr, err := listenAddr(opts.Listen, opts.NetNS)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cleanroom-registry-")
	if err != nil {
		return nil, fmt.Errorf("creating registry folder: %w", err)
	}
	r := &Registry{
		URL:      "http://" + addr + "/",
		Addr:     addr,
		Dir:      dir,
		LogPath:  filepath.Join(dir, "verdaccio.log"),
		install:  in,
		progress: opts.Progress,
		netns:    opts.NetNS,
		done:     make(chan struct{}),
	}
	defer func() {
		if retErr != nil {
			_ = r.Stop()
		}
	}()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, config, dir, addr, PublisherUser), 0o600); err != nil {
		return nil, fmt.Errorf("writing verdaccio config: %w", err)
	}
	transport := &http.Transport{MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
	if opts.NetNS != "" {
		transport.DialContext = netnsDialer(opts.NetNS)
	}
	r.client = &http.Client{Transport: transport}

	logf, err := os.Create(r.LogPath)
	if err != nil {
		return nil, fmt.Errorf("creating verdaccio log: %w", err)
	}
	defer logf.Close()
	args := []string{in.Node, in.Bin, "--config", cfg, "--listen", addr}
	if opts.NetNS != "" {
		args = append([]string{"ip", "netns", "exec", opts.NetNS}, args...)
	}
	// Not CommandContext: the registry outlives the start-up context and is
	// ended by Stop only.
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(npmEnv(), "NODE_ENV=production")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting verdaccio: %w", err)
	}
	r.cmd, r.PID = cmd, cmd.Process.Pid
	go func() {
		r.waitErr = cmd.Wait()
		close(r.done)
	}()

	timeout := opts.ReadyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if err := r.waitReady(ctx, timeout); err != nil {
		return nil, err
	}
	if r.PublisherToken, err = r.AddUser(ctx, PublisherUser, randomPassword()); err != nil {
		return nil, err
	}
	if r.ReaderToken, err = r.AddUser(ctx, ReaderUser, randomPassword()); err != nil {
		return nil, err
	}
	return r, nil
}

// listenAddr resolves Options.Listen: a free loopback port when empty or
// when its port is 0.
func listenAddr(listen, netns string) (string, error) {
	host, port := "127.0.0.1", "0"
	if listen != "" {
		var err error
		if host, port, err = net.SplitHostPort(listen); err != nil {
			return "", fmt.Errorf("parsing listen address %q: %w", listen, err)
		}
	}
	if port != "0" {
		return net.JoinHostPort(host, port), nil
	}
	if netns != "" {
		return "", fmt.Errorf("choosing a port inside netns %s: give Options.Listen an explicit port", netns)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("finding a free port on %s: %w", host, err)
	}
	defer l.Close()
	return net.JoinHostPort(host, strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}

// waitReady polls GET /-/ping until it answers 200, Verdaccio exits, or
// the timeout passes; the error carries the log tail.
func (r *Registry) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.URL+"-/ping", nil)
		if resp, err := r.client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-r.done:
			return fmt.Errorf("waiting for verdaccio on %s: exited (%v); log tail:\n%s", r.Addr, r.waitErr, r.LogTail(2000))
		case <-ctx.Done():
			return fmt.Errorf("waiting for verdaccio on %s: %w; log tail:\n%s", r.Addr, ctx.Err(), r.LogTail(2000))
		case <-tick.C:
		}
	}
}

// LogTail returns at most the last n bytes of Verdaccio's log.
func (r *Registry) LogTail(n int) string {
	b, err := os.ReadFile(r.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading log: %v)", err)
	}
	return tail(b, n)
}

// Client is an HTTP client that reaches the registry, from inside its
// network namespace when it runs in one.
func (r *Registry) Client() *http.Client { return r.client }

// Stop kills Verdaccio's process group (SIGTERM, then SIGKILL after 5 s),
// waits for it, and removes the temporary storage. It is safe to call twice.
func (r *Registry) Stop() error {
	r.stopOnce.Do(func() {
		if r.cmd != nil {
			// The group id is the PID recorded at start: only that group.
			_ = syscall.Kill(-r.PID, syscall.SIGTERM)
			select {
			case <-r.done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-r.PID, syscall.SIGKILL)
				<-r.done
			}
			// Children that outlived the leader still carry the group id.
			if err := syscall.Kill(-r.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				r.stopErr = fmt.Errorf("killing verdaccio group %d: %w", r.PID, err)
			}
		}
		if r.client != nil {
			r.client.CloseIdleConnections()
		}
		if err := os.RemoveAll(r.Dir); err != nil && r.stopErr == nil {
			r.stopErr = fmt.Errorf("removing registry folder: %w", err)
		}
	})
	return r.stopErr
}

// trimJSONError shortens a response body for an error message.
func trimJSONError(b []byte) string {
	b = bytes.TrimSpace(b)
	return tail(b, 500)
}
