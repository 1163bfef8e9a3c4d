package buildexec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/netpolicy"
)

const (
	testGitURL    = "https://git.corp.example/team/app.git"
	testGitCommit = "0123456789abcdef0123456789abcdef01234567"
)

// The command line and environment of a git command in the cage: the
// namespaces, the user, the protocol and config restrictions, and nothing
// of the agent's own environment.
func TestGitCageCommand(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "/run/user/0/ssh-agent.sock")
	t.Setenv("GIT_SSH_COMMAND", "ssh -i /root/.ssh/id_ed25519")
	c := cage{netns: "/run/netns/cr-j-1-1-git", resolv: "/net/sandboxes/j-1-1-git/resolv.conf", ws: "/data/workspaces/j-1", caFile: "/etc/ca.pem", maxBytes: 1 << 20}
	cmd := c.command("clone", "--", testGitURL, ".")

	want := []string{"nsenter", "--net=/run/netns/cr-j-1-1-git", "--", "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "--", "/bin/sh", "-c", cageScript, "cleanroom-git-cage",
		"/data/workspaces/j-1", "/net/sandboxes/j-1-1-git/resolv.conf", "/etc/ca.pem", "65534", "1048576", "git"}
	if !slices.Equal(cmd.Args[:len(want)], want) {
		t.Fatalf("argv starts %q\nwant %q", cmd.Args[:len(want)], want)
	}
	gitArgs := strings.Join(cmd.Args[len(want):], " ")
	for _, w := range []string{"-c protocol.allow=never", "-c protocol.https.allow=always", "-c http.followRedirects=false",
		"-c credential.helper=", "-c core.hooksPath=/dev/null", "-c submodule.recurse=false", "-c transfer.fsckObjects=true"} {
		if !strings.Contains(gitArgs, w) {
			t.Errorf("git args %q lack %q", gitArgs, w)
		}
	}
	if !strings.HasSuffix(gitArgs, "clone -- "+testGitURL+" .") {
		t.Errorf("git args %q do not end with the command", gitArgs)
	}
	env := map[string]string{}
	for _, kv := range cmd.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	for k, v := range map[string]string{
		"HOME": "/tmp/home", "GIT_ALLOW_PROTOCOL": "https", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
		"GIT_TERMINAL_PROMPT": "0", "GIT_SSL_CAINFO": "/tmp/home/ca.pem",
	} {
		if env[k] != v {
			t.Errorf("env %s=%q, want %q", k, env[k], v)
		}
	}
	for _, k := range []string{"SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_SSH", "XDG_CONFIG_HOME"} {
		if _, ok := env[k]; ok {
			t.Errorf("env has %s: the agent's environment reached the cage", k)
		}
	}
	for _, w := range []string{"--reuid=\"$uid\"", "--no-new-privs", "--bounding-set=-all", "--clear-groups", "--fsize=", "mount --no-canonicalize --bind /proc/self/cwd /tmp/src",
		"mount --bind -o ro \"$resolv\" /etc/resolv.conf", "mount -t tmpfs"} {
		if !strings.Contains(cageScript, w) {
			t.Errorf("the cage script lacks %q", w)
		}
	}
	if _, ok := env["GIT_SSL_CAINFO"]; !ok {
		t.Error("no CA in the environment though one is configured")
	}
	if plain := (cage{}).command("x"); slices.ContainsFunc(plain.Env, func(kv string) bool { return strings.HasPrefix(kv, "GIT_SSL_CAINFO=") }) {
		t.Error("GIT_SSL_CAINFO set without a CA file")
	}
}

// fakeGit is a cageRunner that plays git: clone writes files (what write
// says), rev-parse prints head. Every command is recorded.
type fakeGit struct {
	mu     sync.Mutex
	cmds   []cageCmd
	ws     string
	head   string
	fail   error                                // clone fails with it
	stderr string                               // what the failing clone says (default: cannot connect)
	write  func(ctx context.Context, ws string) // what clone writes
	block  bool                                 // clone waits for its context
}

func (f *fakeGit) run(ctx context.Context, c cageCmd, stdout, stderr io.Writer) error {
	f.mu.Lock()
	f.cmds = append(f.cmds, c)
	f.mu.Unlock()
	sub := c.Args[slices.Index(c.Args, "init.defaultBranch=main")+1]
	switch sub {
	case "clone":
		if f.fail != nil {
			if f.stderr == "" {
				f.stderr = "fatal: unable to access '" + testGitURL + "/': Failed to connect\x1b[2K\n"
			}
			fmt.Fprint(stderr, f.stderr)
			return f.fail
		}
		if f.write != nil {
			f.write(ctx, f.ws)
		}
		if f.block {
			<-ctx.Done()
			return ctx.Err()
		}
	case "rev-parse":
		fmt.Fprintln(stdout, f.head)
	}
	return nil
}

func (f *fakeGit) subcommands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.cmds {
		out = append(out, c.Args[slices.Index(c.Args, "init.defaultBranch=main")+1])
	}
	return out
}

func gitJob() *api.Job {
	return &api.Job{ID: "j-1", Attempts: 1, Spec: api.JobSpec{Build: api.Build{Script: "true"}},
		Source: api.Source{Kind: api.SourceGit, URL: testGitURL, Commit: testGitCommit}}
}

func fetchWith(t *testing.T, w *world, f *fakeGit, mutate func(*Config), job *api.Job) (string, error) {
	t.Helper()
	e := newFakeExecutor(t, w, func(c *Config) {
		c.Forward = true
		c.Git = GitConfig{Hosts: []string{"git.corp.example:443"}, MaxBytes: 1 << 20, MaxFiles: 50, run: f.run}
		if mutate != nil {
			mutate(c)
		}
	})
	ws := t.TempDir()
	f.ws = ws
	var out bytes.Buffer
	err := e.FetchGit(context.Background(), job, ws, &out, &events{})
	return out.String(), err
}

// A fetch builds the cage's network from the git hosts alone, runs clone,
// checkout and rev-parse in it, hands the checkout back to root, and tears
// the network down.
func TestFetchGitRunsInTheCage(t *testing.T) {
	testutil.RequiresRoot(t) // the workspace is handed to the git user and back
	w := &world{}
	f := &fakeGit{head: testGitCommit, write: func(_ context.Context, ws string) {
		os.WriteFile(filepath.Join(ws, "package.json"), []byte("{}"), 0o644)
	}}
	out, err := fetchWith(t, w, f, nil, gitJob())
	if err != nil {
		t.Fatalf("FetchGit: %v\n%s", err, out)
	}
	if got := w.log(); !slices.Equal(got, []string{"network setup", "network close"}) {
		t.Errorf("network calls %v", got)
	}
	cfg := w.netCfg
	if cfg.ID != "j-1-1-git" || cfg.Job != "j-1" || cfg.Mode != netpolicy.ModeForward ||
		len(cfg.Policy.Registries) != 0 || !slices.Equal(cfg.Policy.Extra, []string{"git.corp.example:443"}) {
		t.Errorf("the cage's network is %+v; want only the git hosts, forward mode, under the job", cfg)
	}
	if got := f.subcommands(); !slices.Equal(got, []string{"clone", "checkout", "rev-parse"}) {
		t.Errorf("git commands %v", got)
	}
	for _, c := range f.cmds {
		if c.Args[1] != "--net="+netpolicy.NetNSPathFor("j-1-1-git") {
			t.Errorf("git ran outside the fetch's namespace: %q", c.Args)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(f.ws, "package.json"), &st); err != nil || st.Uid != 0 {
		t.Errorf("checkout not handed back to root: uid %d, %v", st.Uid, err)
	}
	if !strings.Contains(out, "egress only to") || !strings.Contains(out, "checked out at "+testGitCommit) {
		t.Errorf("log:\n%s", out)
	}
	// The fetch's egress events are the job's.
	rep := &events{}
	e := newFakeExecutor(t, w, func(c *Config) { c.Forward = true; c.Git = GitConfig{Hosts: []string{"h:443"}, run: f.run} })
	f.ws = t.TempDir()
	_ = e.FetchGit(context.Background(), gitJob(), f.ws, io.Discard, rep)
	w.netCfg.OnEvent(netpolicy.Event{Proto: "tcp", Dst: "10.0.0.9:443", Verdict: "deny"})
	if len(rep.evs) != 1 || rep.evs[0].Dst != "10.0.0.9:443" {
		t.Errorf("events reported %+v", rep.evs)
	}
}

// What ends a fetch early, and the reason it gives.
func TestFetchGitRefusals(t *testing.T) {
	testutil.RequiresRoot(t)
	big := func(_ context.Context, ws string) {
		os.WriteFile(filepath.Join(ws, "pack"), bytes.Repeat([]byte("x"), 2<<20), 0o644)
	}
	many := func(_ context.Context, ws string) {
		for i := range 60 {
			os.WriteFile(filepath.Join(ws, fmt.Sprint(i)), nil, 0o644)
		}
	}
	sparse := func(_ context.Context, ws string) {
		f, _ := os.Create(filepath.Join(ws, "sparse"))
		f.Truncate(64 << 30)
		f.Close()
	}
	tests := []struct {
		name    string
		f       *fakeGit
		mutate  func(*Config)
		job     func(*api.Job)
		want    string
		network bool // a network was set up (and must be closed)
	}{
		{"no git hosts", &fakeGit{}, func(c *Config) { c.Git.Hosts = nil }, nil, "git.hosts", false},
		{"direct mode", &fakeGit{}, func(c *Config) { c.Forward = false }, nil, "forward", false},
		{"local path", &fakeGit{}, nil, func(j *api.Job) { j.Source.URL = "/srv/git/app.git" }, "local paths", false},
		{"credentials", &fakeGit{}, nil, func(j *api.Job) { j.Source.URL = "https://u:tok@git.corp.example/x" }, "credentials", false},
		{"host not allowed", &fakeGit{fail: errors.New("exit status 128")}, nil,
			func(j *api.Job) { j.Source.URL = "https://10.231.253.2/x.git" }, "git host 10.231.253.2:443 is not among this runner's git hosts", true},
		{"clone fails", &fakeGit{fail: errors.New("exit status 128")}, nil, nil, "cloning: exit status 128: fatal: unable to access", true},
		{"file size limit", &fakeGit{fail: errors.New("exit status 128"), stderr: "fatal: write error: File too large\n"}, nil, nil, "limit of 1MiB (git.max_bytes)", true},
		{"too big while cloning", &fakeGit{write: big, block: true}, nil, nil, "limit of 1MiB (git.max_bytes)", true},
		{"too big at the end", &fakeGit{write: big, head: testGitCommit}, nil, nil, "limit of 1MiB (git.max_bytes)", true},
		{"sparse file", &fakeGit{write: sparse, head: testGitCommit}, nil, nil, "git.max_bytes", true},
		{"too many files", &fakeGit{write: many, block: true}, nil, nil, "more than 50 files (git.max_files)", true},
		{"wrong HEAD", &fakeGit{head: strings.Repeat("f", 40)}, nil, nil, "HEAD is", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &world{}
			job := gitJob()
			if tc.job != nil {
				tc.job(job)
			}
			start := time.Now()
			_, err := fetchWith(t, w, tc.f, tc.mutate, job)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FetchGit = %v, want an error saying %q", err, tc.want)
			}
			if strings.ContainsAny(err.Error(), "\x1b\n") {
				t.Errorf("the reason carries control characters: %q", err)
			}
			if strings.Contains(err.Error(), "tok@") {
				t.Errorf("the reason repeats credentials: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %s to end", d)
			}
			want := []string(nil)
			if tc.network {
				want = []string{"network setup", "network close"}
			}
			if got := w.log(); !slices.Equal(got, want) {
				t.Errorf("network calls %v, want %v", got, want)
			}
		})
	}
}

// In kill mode the first denied attempt ends the fetch at once.
func TestFetchGitViolationKills(t *testing.T) {
	testutil.RequiresRoot(t)
	w := &world{}
	f := &fakeGit{block: true, write: func(context.Context, string) { w.violations <- netpolicy.Event{Verdict: "deny"} }}
	_, err := fetchWith(t, w, f, func(c *Config) { c.OnViolation = api.OnViolationKill }, gitJob())
	if err == nil || !strings.Contains(err.Error(), "egress violation") {
		t.Fatalf("FetchGit = %v, want an egress violation", err)
	}
	if !w.netCfg.Policy.Kill {
		t.Error("the cage's policy is not kill")
	}
}

// Taking the checkout back chowns only what is inside the workspace (a
// symlink is chowned itself, never its target) and strips group/other
// write and the setuid, setgid and sticky bits.
func TestReclaimWorkspaceStaysInsideAndStripsModes(t *testing.T) {
	testutil.RequiresRoot(t)
	ws, outside := t.TempDir(), t.TempDir()
	target := filepath.Join(outside, "host-file")
	if err := os.WriteFile(target, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(target, GitUID, GitUID); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(ws, "open"), 0o777))
	must(os.Chmod(filepath.Join(ws, "open"), 0o777|os.ModeSticky))
	must(os.WriteFile(filepath.Join(ws, "open", "suid"), []byte("x"), 0o755))
	must(os.Chmod(filepath.Join(ws, "open", "suid"), 0o4777))
	must(os.Symlink(target, filepath.Join(ws, "link")))
	for _, p := range []string{"open", "open/suid", "link"} {
		must(os.Lchown(filepath.Join(ws, p), GitUID, GitUID))
	}
	must(reclaimWorkspace(ws))
	for p, want := range map[string]os.FileMode{"open": os.ModeDir | 0o755, "open/suid": 0o755} {
		info, err := os.Stat(filepath.Join(ws, p))
		must(err)
		if info.Mode() != want || info.Sys().(*syscall.Stat_t).Uid != 0 {
			t.Errorf("%s: mode %v uid %d, want %v uid 0", p, info.Mode(), info.Sys().(*syscall.Stat_t).Uid, want)
		}
	}
	info, err := os.Stat(target)
	must(err)
	if uid := info.Sys().(*syscall.Stat_t).Uid; uid != GitUID {
		t.Errorf("the symlink's target outside the workspace was chowned to %d", uid)
	}
}

func TestPrintableFoldsSpaceAndShowsControls(t *testing.T) {
	got := printable("remote: fatal\n\terror \x1b[2J\u202egnp.exe \u009b")
	if strings.ContainsAny(got, "\n\t\x1b\u202e\u009b") || !strings.HasPrefix(got, "remote: fatal error ") {
		t.Errorf("printable = %q", got)
	}
}
