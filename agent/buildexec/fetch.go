package buildexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// GitConfig is where git sources may come from and how big they may be.
// A git fetch runs in a cage: a throwaway network namespace made by
// netpolicy.Setup (the same rules, DNS responder and audit as a sandbox)
// whose only destinations are Hosts, a private mount namespace with a
// fresh /tmp (an empty HOME and the workspace) and the responder's
// resolv.conf, and git as an unprivileged user with a scrubbed environment.
type GitConfig struct {
	// Hosts are the host:port destinations git may reach. None: the
	// executor refuses git sources (fail closed).
	Hosts []string
	// CAFile, if set, is a PEM bundle git trusts instead of the system's.
	CAFile string
	// MaxBytes bounds the workspace while git runs (pack and checkout)
	// and every single file git writes (default DefaultGitMaxBytes).
	MaxBytes int64
	// MaxFiles bounds the entries of the workspace (default
	// DefaultGitMaxFiles).
	MaxFiles int

	// run runs one cage command (nil = runCage); unit tests fake it.
	run cageRunner
}

// Defaults of GitConfig.
const (
	DefaultGitMaxBytes = 1 << 30
	DefaultGitMaxFiles = 100000
	// GitUID is the user (and group) git runs as: nobody.
	GitUID = 65534
)

// Reasons a git fetch ends early (the watcher's cancel causes).
var (
	ErrGitDisabled   = errors.New("git sources are not enabled on this runner (no git hosts in its config: git.hosts)")
	errGitTooBig     = errors.New("git source too large")
	errGitTooMany    = errors.New("git source has too many files")
	errGitViolation  = errors.New("egress violation during the git fetch")
	gitWatchInterval = 100 * time.Millisecond
)

// FetchGit implements agent.SourceFetcher: it checks out job.Source at its
// exact commit into ws, from inside the cage (see GitConfig). The fetch's
// egress attempts are reported to rep and written to the agent's audit
// file under the job, like a build's. Whatever the outcome, the cage's
// network is torn down before FetchGit returns.
func (e *Executor) FetchGit(ctx context.Context, job *api.Job, ws string, out io.Writer, rep agent.Reporter) (retErr error) {
	red := e.matcher.NewRedactor(out)
	defer red.Flush()
	log := jobLog{red}
	g := e.cfg.Git
	if len(g.Hosts) == 0 {
		return ErrGitDisabled
	}
	if !e.cfg.Forward {
		return errors.New("git sources need network.mode forward on this runner (the git hosts are elsewhere)")
	}
	// The coordinator validates the URL at submit; check again here, so an
	// older coordinator cannot hand this agent a local path or an ssh URL.
	if err := job.Source.Validate(); err != nil {
		return fmt.Errorf("refusing the git source: %w", err)
	}
	target, err := gitTarget(job.Source.URL)
	if err != nil {
		return err
	}
	if err := prepareWorkspace(ws); err != nil {
		return err
	}
	defer func() {
		if err := reclaimWorkspace(ws); err != nil {
			retErr = errors.Join(retErr, err)
		}
	}()

	id := fmt.Sprintf("%s-%d-git", job.ID, max(job.Attempts, 1))
	v, _ := api.ParseOnViolation(string(job.Spec.Network.OnViolation))
	kill := e.cfg.OnViolation.Kill() || v.Kill()
	nw, err := e.networks.Setup(ctx, netpolicy.Config{
		ID: id, Job: job.ID, Runner: e.cfg.RunnerID, HostNS: e.cfg.HostNS,
		Mode: netpolicy.ModeForward, Masquerade: e.cfg.Masquerade,
		Policy:   netpolicy.Policy{Extra: g.Hosts, Kill: kill},
		Resolver: e.gitResolver(),
		StateDir: e.cfg.NetStateDir,
		Owner:    sandbox.ProcessOwner(),
		AuditLog: filepath.Join(e.cfg.DataDir, "egress.jsonl"),
		OnEvent:  func(ev netpolicy.Event) { rep.Event(api.EgressEvent(ev)) },
		Redact:   e.matcher.RedactDomain,
		Logger:   e.cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("fetching the git source: network policy could not be enforced: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := nw.Close(cctx); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("tearing down the git fetch's network: %w", err))
		}
	}()
	var dsts []string
	for _, d := range nw.Allowed() {
		for _, ip := range d.IPs {
			dsts = append(dsts, net.JoinHostPort(ip.String(), strconv.Itoa(d.Port))+" ("+d.Host+")")
		}
	}
	log.say("fetching %s at %s as uid %d in a network namespace of its own: egress only to %s; every attempt is audited",
		job.Source.URL, job.Source.Commit, GitUID, strings.Join(dsts, ", "))

	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var violations <-chan netpolicy.Event
	if kill {
		violations = nw.Violations()
	}
	auditFailed := nw.AuditFailed()
	go func() { // as for a sandbox: nothing runs unaudited, in any mode
		select {
		case err := <-auditFailed:
			cancel(fmt.Errorf("%w: %v", errAuditStopped, err))
		case ev := <-violations:
			if ev.Rule == netpolicy.RuleAuditFailure {
				cancel(fmt.Errorf("%w: %s: %s", errAuditStopped, ev.Domain, ev.Answer))
				return
			}
			cancel(errGitViolation)
		case <-fctx.Done():
		}
	}()
	c := cage{
		netns: netpolicy.NetNSPathFor(id), resolv: netpolicy.ResolvConfPathFor(e.cfg.NetStateDir, id),
		ws: ws, caFile: g.CAFile, maxBytes: g.maxBytes(),
	}
	if err := e.checkout(fctx, c, job.Source.URL, job.Source.Commit); err != nil {
		switch cause := context.Cause(fctx); {
		case errors.Is(err, errGitTooBig):
			return fmt.Errorf("git source refused: it grew past this runner's limit of %s (git.max_bytes)", api.ByteSize(g.maxBytes()))
		case errors.Is(err, errGitTooMany):
			return fmt.Errorf("git source refused: more than %d files (git.max_files)", g.maxFiles())
		case errors.Is(cause, errGitViolation):
			return fmt.Errorf("git fetch ended: %w (on_violation: kill)", errGitViolation)
		case errors.Is(cause, errAuditStopped):
			return fmt.Errorf("git fetch ended: %w", cause)
		case ctx.Err() != nil:
			return fmt.Errorf("git fetch ended: %w", context.Cause(ctx))
		}
		if !slices.Contains(g.normalHosts(), target) {
			return fmt.Errorf("git host %s is not among this runner's git hosts (%s): the attempt was refused and audited", target, strings.Join(g.Hosts, ", "))
		}
		return err
	}
	log.say("git source checked out at %s", job.Source.Commit)
	return nil
}

// checkout runs clone, checkout and rev-parse in the cage, each under the
// watcher that ends the fetch when the workspace outgrows the limits.
func (e *Executor) checkout(ctx context.Context, c cage, rawURL, commit string) error {
	g := e.cfg.Git
	steps := []struct {
		what string
		args []string
	}{
		{"cloning", []string{"clone", "--quiet", "--no-checkout", "--no-recurse-submodules", "--template=", "--", rawURL, "."}},
		{"checking out " + commit, []string{"checkout", "--quiet", "--no-recurse-submodules", "--detach", commit}},
		{"reading HEAD", []string{"rev-parse", "--verify", "HEAD"}},
	}
	var head bytes.Buffer
	for i, st := range steps {
		var stdout io.Writer = io.Discard
		if i == len(steps)-1 {
			stdout = &head
		}
		msg := &tailBuffer{max: 2048}
		err := g.watch(ctx, c.ws, func(ctx context.Context) error {
			return g.runner()(ctx, c.command(st.args...), stdout, msg)
		})
		if err != nil {
			if strings.Contains(msg.String(), "File too large") {
				// git hit the cage's file-size limit (RLIMIT_FSIZE).
				err = fmt.Errorf("%w: %w", errGitTooBig, err)
			}
			if s := printable(msg.String()); s != "" {
				return fmt.Errorf("fetching the git source: %s: %w: %s", st.what, err, s)
			}
			return fmt.Errorf("fetching the git source: %s: %w", st.what, err)
		}
	}
	if got := strings.TrimSpace(head.String()); got != commit {
		return fmt.Errorf("fetching the git source: HEAD is %q after checking out %s", printable(got), commit)
	}
	// The last word on the limits, after git has finished writing.
	return g.check(c.ws)
}

// watch runs fn and ends it (through its context) as soon as dir has more
// bytes or entries than g allows.
func (g GitConfig) watch(ctx context.Context, dir string, fn func(context.Context) error) error {
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// The pause after a walk is at least four times the walk, so a
		// checkout of many files costs the host at most a fifth of a core.
		t := time.NewTimer(gitWatchInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				start := time.Now()
				if err := g.check(dir); err != nil {
					cancel(err)
					return
				}
				t.Reset(max(gitWatchInterval, 4*time.Since(start)))
			}
		}
	})
	err := fn(wctx)
	close(done)
	wg.Wait()
	if cause := context.Cause(wctx); ctx.Err() == nil && (errors.Is(cause, errGitTooBig) || errors.Is(cause, errGitTooMany)) {
		return cause // the watcher ended it
	}
	return err
}

// check walks dir (without following links) and returns errGitTooBig or
// errGitTooMany when it exceeds the limits.
func (g GitConfig) check(dir string) error {
	var bytes int64
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // git renames temporary files as it goes
			}
			return err
		}
		if p == dir {
			return nil
		}
		if n++; n > g.maxFiles() {
			return errGitTooMany
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			// The larger of the apparent and the allocated size: a sparse
			// file counts with its full length.
			bytes += max(info.Size(), allocated(info))
			if bytes > g.maxBytes() {
				return errGitTooBig
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errGitTooBig) && !errors.Is(err, errGitTooMany) {
		return fmt.Errorf("measuring the git checkout: %w", err)
	}
	return err
}

func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return 0
}

func (g GitConfig) maxBytes() int64 {
	if g.MaxBytes > 0 {
		return g.MaxBytes
	}
	return DefaultGitMaxBytes
}

func (g GitConfig) maxFiles() int {
	if g.MaxFiles > 0 {
		return g.MaxFiles
	}
	return DefaultGitMaxFiles
}

func (g GitConfig) runner() cageRunner {
	if g.run != nil {
		return g.run
	}
	return runCage
}

// normalHosts are Hosts in the form gitTarget returns.
func (g GitConfig) normalHosts() []string {
	out := make([]string, 0, len(g.Hosts))
	for _, h := range g.Hosts {
		if host, port, err := net.SplitHostPort(h); err == nil {
			out = append(out, net.JoinHostPort(strings.ToLower(host), port))
		}
	}
	return out
}

// gitTarget is the host:port an https git URL connects to.
func gitTarget(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("refusing the git source: not an https URL")
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port), nil
}

// gitResolver resolves git host names on the host side at setup, from the
// agent's static names first (as the build's network does).
func (e *Executor) gitResolver() netpolicy.Resolver {
	if len(e.cfg.Hosts) > 0 {
		return netpolicy.StaticResolver{Hosts: e.cfg.Hosts, Fallback: netpolicy.SystemResolver{}}
	}
	return netpolicy.SystemResolver{}
}

// prepareWorkspace hands the empty workspace to the git user. Its parent
// (the agent's workspaces directory) stays root's and closed: git reaches
// the workspace only through the cage's bind mount.
func prepareWorkspace(ws string) error {
	ents, err := os.ReadDir(ws)
	if err != nil {
		return fmt.Errorf("preparing the workspace for git: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("preparing the workspace for git: %s is not empty", ws)
	}
	if err := os.Chown(ws, GitUID, GitUID); err != nil {
		return fmt.Errorf("preparing the workspace for git: %w", err)
	}
	return nil
}

// reclaimWorkspace gives the workspace and everything git wrote back to
// root (links themselves, never their targets).
func reclaimWorkspace(ws string) error {
	// Through os.Root: a directory the git user swapped for a symlink while
	// this walks cannot make root change anything outside the workspace.
	root, err := os.OpenRoot(ws)
	if err != nil {
		return fmt.Errorf("taking the git checkout back from uid %d: %w", GitUID, err)
	}
	defer root.Close()
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := root.Lchown(p, 0, 0); err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		// No group/other write, no setuid, setgid or sticky bits survive.
		if mode := info.Mode(); mode&(0o022|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			return root.Chmod(p, mode.Perm()&^0o022)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("taking the git checkout back from uid %d: %w", GitUID, err)
	}
	return nil
}

// cage is one git command's confinement.
type cage struct {
	netns    string // the fetch network's namespace (netpolicy)
	resolv   string // the responder's resolv.conf for it
	ws       string // the workspace, bind-mounted at /tmp/src
	caFile   string // copied to /tmp/home/ca.pem when set
	maxBytes int64  // RLIMIT_FSIZE: no single file larger
}

// cageCmd is a command line and its whole environment.
type cageCmd struct {
	Args []string
	Env  []string
}

// cageScript runs as root inside the fresh mount namespace (already in the
// fetch's network namespace): the responder's resolv.conf is bound over
// /etc/resolv.conf; a private tmpfs on /tmp then holds an empty HOME (with
// the CA, if any, readable by the git user) and the workspace, bound at
// /tmp/src through the script's working directory (so a workspace or CA
// under the host's /tmp is read before the tmpfs hides it; the
// workspace's real parent stays closed to the git user). Then git runs in
// /tmp/src as the git user with no capabilities, no new privileges and a
// file-size limit (SIGXFSZ ignored, so a write past it fails with EFBIG,
// "File too large", which git reports and FetchGit recognises). Arguments: workspace, resolv.conf, CA file or "", uid,
// file-size limit, then the git command line.
const cageScript = `set -eu
ws=$1 resolv=$2 ca=$3 uid=$4 fsize=$5
shift 5
mount --bind -o ro "$resolv" /etc/resolv.conf
cert=
if [ -n "$ca" ]; then cert=$(cat "$ca"); fi
cd "$ws"
for d in /run /dev/shm /var/tmp; do
	if [ -d "$d" ]; then mount -t tmpfs -o mode=0755,size=1m,nosuid,nodev,noexec tmpfs "$d"; fi
done
mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev tmpfs /tmp
printf 'hosts: files dns\n' >/tmp/.nsswitch.conf
printf '127.0.0.1 localhost\n::1 localhost\n' >/tmp/.hosts
chmod 0444 /tmp/.nsswitch.conf /tmp/.hosts
mount --bind -o ro /tmp/.nsswitch.conf /etc/nsswitch.conf
mount --bind -o ro /tmp/.hosts /etc/hosts
mkdir -m 0700 /tmp/home /tmp/src
mount --no-canonicalize --bind /proc/self/cwd /tmp/src
if [ -n "$cert" ]; then printf '%s\n' "$cert" >/tmp/home/ca.pem; chmod 0444 /tmp/home/ca.pem; fi
chown "$uid:$uid" /tmp/home
cd /tmp/src
trap '' XFSZ
exec prlimit --fsize="$fsize" -- setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"
`

// gitConfigArgs are the -c options of every git command in the cage:
// https only, no redirects to other hosts, objects checked, no hooks,
// submodules, credential helpers, fsmonitor or background maintenance.
var gitConfigArgs = []string{
	"-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
	"-c", "http.followRedirects=false", "-c", "http.sslVerify=true",
	"-c", "transfer.fsckObjects=true",
	"-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.symlinks=true",
	"-c", "credential.helper=", "-c", "submodule.recurse=false", "-c", "fetch.recurseSubmodules=false",
	"-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "advice.detachedHead=false",
	"-c", "init.defaultBranch=main",
}

// command is git args run in the cage.
func (c cage) command(args ...string) cageCmd {
	argv := []string{"nsenter", "--net=" + c.netns, "--",
		"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
		"/bin/sh", "-c", cageScript, "cleanroom-git-cage",
		c.ws, c.resolv, c.caFile, strconv.Itoa(GitUID), strconv.FormatInt(c.maxBytes, 10),
		"git"}
	argv = append(append(argv, gitConfigArgs...), args...)
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/tmp/home", "LANG=C", "LC_ALL=C",
		"GIT_ALLOW_PROTOCOL=https", "GIT_PROTOCOL_FROM_USER=0",
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false",
		"GIT_CEILING_DIRECTORIES=/tmp", "GIT_LFS_SKIP_SMUDGE=1",
	}
	if c.caFile != "" {
		env = append(env, "GIT_SSL_CAINFO=/tmp/home/ca.pem")
	}
	return cageCmd{Args: argv, Env: env}
}

// cageRunner runs one cage command to completion or until ctx ends.
type cageRunner func(ctx context.Context, c cageCmd, stdout, stderr io.Writer) error

// runCage is the real cageRunner: the command gets a process group of its
// own, which is killed as a whole when ctx ends and again after it exits
// (git's helpers must not outlive it).
func runCage(ctx context.Context, c cageCmd, stdout, stderr io.Writer) error {
	cmd := exec.CommandContext(ctx, c.Args[0], c.Args[1:]...)
	cmd.Env = c.Env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the git cage: %w", err)
	}
	err := cmd.Wait()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// printable makes git's (or a hostile server's) words safe for one line of
// a job reason: white space is folded into single spaces, and every other
// rune that could steer a terminal (api.Printable's rule: controls, bidi
// and other format characters) is shown in its visible form.
func printable(s string) string {
	return api.Printable(strings.Join(strings.Fields(s), " "))
}
