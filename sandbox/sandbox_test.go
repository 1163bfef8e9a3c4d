package sandbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// testEnv is the complete environment of test sandboxes.
var testEnv = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/build", "CLEANROOM_TEST=given"}

type fixture struct {
	c     *sandbox.Client
	agent string
	jobs  []string
	mu    sync.Mutex
}

// testUserNSBase is the first host ID of the tests' user-namespace slots
// (the agent's default is sandbox.DefaultUserNSBase); a fixed base lets the
// remapped image snapshots, a cache, serve every test and run.
const testUserNSBase = 1 << 30

// testUserNS is the user-namespace configuration of test clients: 8 slots
// from base.
func testUserNS(base uint32) *sandbox.UserNS {
	return &sandbox.UserNS{Base: base, Slots: 8}
}

// newFixture connects to the test containerd with a private state dir and a
// unique agent label, and checks at the end that nothing of ours remains.
// Its sandboxes run in user namespaces, as the agent's do by default.
func newFixture(t *testing.T) *fixture {
	return newFixtureWith(t, testUserNS(testUserNSBase))
}

// newFixtureWith is newFixture with a user-namespace configuration (nil:
// none).
func newFixtureWith(t *testing.T, userns *sandbox.UserNS) *fixture {
	t.Helper()
	testutil.RequiresRoot(t)
	agent := fmt.Sprintf("test-%d-%d", os.Getpid(), rand.Int63())
	state := t.TempDir()
	c, err := sandbox.New(context.Background(), sandbox.Config{Address: testutil.ContainerdAddress(t), Agent: agent, StateDir: state, UserNS: userns})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{c: c, agent: agent}
	t.Cleanup(func() {
		res, err := c.Residue(context.Background(), agent)
		if err != nil {
			t.Errorf("checking residue: %v", err)
		}
		if len(res) > 0 {
			t.Errorf("residue after test: %v", res)
			_, _ = c.GC(context.Background(), sandbox.GCOptions{Agent: agent, All: true})
		}
		for _, j := range f.jobs {
			if cg := sandbox.CgroupsOf(j); len(cg) > 0 {
				t.Errorf("cgroups left for job %s: %v", j, cg)
			}
		}
		c.Close()
	})
	return f
}

func (f *fixture) jobID(prefix string) string {
	id := fmt.Sprintf("%s-%d", prefix, rand.Int63()%1e9)
	f.mu.Lock()
	f.jobs = append(f.jobs, id)
	f.mu.Unlock()
	return id
}

func (f *fixture) create(t *testing.T, o sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	if o.JobID == "" {
		o.JobID = f.jobID("t")
	}
	if o.Image == "" {
		o.Image = testutil.Image()
	}
	if o.Env == nil {
		o.Env = testEnv
	}
	sb, err := f.c.Create(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Destroy(context.Background()); err != nil {
			t.Errorf("destroy: %v", err)
		}
	})
	return sb
}

func run(t *testing.T, sb *sandbox.Sandbox, st sandbox.Step) (sandbox.Result, string) {
	t.Helper()
	var out bytes.Buffer
	st.Stdout = &out
	res, err := sb.Run(context.Background(), st)
	if err != nil {
		t.Fatalf("running %v: %v", st.Args, err)
	}
	return res, out.String()
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func TestNpmCiAndBuildOfExampleProject(t *testing.T) {
	f := newFixture(t)
	sb := f.create(t, sandbox.Options{Workspace: "testdata/fileproject", Limits: sandbox.Limits{MemoryBytes: 1 << 30, DiskBytes: 256 << 20}})
	res, out := run(t, sb, sandbox.Step{Args: []string{"npm", "ci", "--no-audit", "--offline"}, Timeout: 2 * time.Minute})
	if res.Failed() {
		t.Fatalf("npm ci: %s\n%s", res, out)
	}
	res, out = run(t, sb, sandbox.Step{Args: []string{"npm", "run", "build"}, Timeout: time.Minute})
	if res.Failed() || !strings.Contains(out, "built dist/out.txt") {
		t.Fatalf("npm run build: %s\n%s", res, out)
	}
	got, err := os.ReadFile(filepath.Join(sb.WorkspacePath(), "dist", "out.txt"))
	if err != nil || string(got) != "hello, cleanroom\n" {
		t.Fatalf("artifact = %q, %v", got, err)
	}
	if _, err := os.Stat("testdata/fileproject/node_modules"); err == nil {
		t.Error("the sandbox wrote into the caller's workspace")
	}
}

func TestSandboxIsLockedDown(t *testing.T) {
	f := newFixture(t)
	sb := f.create(t, sandbox.Options{})
	os.Setenv("CLEANROOM_HOST_SECRET", "must-not-leak")
	defer os.Unsetenv("CLEANROOM_HOST_SECRET")
	cases := []struct {
		name   string
		script string
		check  func(code int, out string) error
	}{
		{"runs as non-root", "id -u", func(code int, out string) error {
			if strings.TrimSpace(out) == "0" || code != 0 {
				return fmt.Errorf("id -u = %q", out)
			}
			return nil
		}},
		{"has no effective capabilities", "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status", func(code int, out string) error {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasSuffix(l, "0000000000000000") {
					return fmt.Errorf("capability line %q", l)
				}
			}
			return nil
		}},
		{"no_new_privs and seccomp are on", "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status", func(code int, out string) error {
			if !strings.Contains(out, "NoNewPrivs:\t1") || !strings.Contains(out, "Seccomp:\t2") {
				return fmt.Errorf("status: %q", out)
			}
			return nil
		}},
		{"cannot write to the root filesystem", "touch /usr/evil && echo wrote", func(code int, out string) error {
			if code == 0 || strings.Contains(out, "wrote") {
				return errors.New("wrote to /usr")
			}
			return nil
		}},
		{"cannot read kernel memory or firmware", "echo $(head -c 16 /proc/kcore 2>/dev/null | wc -c) $(ls -A /sys/firmware 2>/dev/null | wc -l)", func(code int, out string) error {
			if strings.TrimSpace(out) != "0 0" {
				return fmt.Errorf("read: %q", out)
			}
			return nil
		}},
		{"cannot write kernel tunables", "echo 1 > /proc/sys/kernel/panic && echo wrote", func(code int, out string) error {
			if strings.Contains(out, "wrote") {
				return errors.New("wrote /proc/sys")
			}
			return nil
		}},
		{"has no containerd socket", "ls /run/containerd /var/run/containerd 2>/dev/null; test -e /run/containerd/containerd.sock && echo present", func(code int, out string) error {
			if strings.Contains(out, "present") || strings.Contains(out, "containerd.sock") {
				return fmt.Errorf("found: %q", out)
			}
			return nil
		}},
		{"sees only the environment given", "env | sort", func(code int, out string) error {
			if strings.Contains(out, "must-not-leak") {
				return errors.New("host variable leaked")
			}
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				k, _, _ := strings.Cut(l, "=")
				switch k {
				case "PATH", "HOME", "CLEANROOM_TEST", "PWD", "SHLVL", "_":
				default:
					return fmt.Errorf("unexpected variable %q", l)
				}
			}
			if !strings.Contains(out, "CLEANROOM_TEST=given") {
				return errors.New("given variable missing")
			}
			return nil
		}},
		{"init's environment is the job's own", "tr '\\0' '\\n' < /proc/1/environ", func(code int, out string) error {
			if strings.Contains(out, "must-not-leak") || !strings.Contains(out, "CLEANROOM_TEST=given") {
				return fmt.Errorf("/proc/1/environ: %q", out)
			}
			return nil
		}},
		{"has only loopback networking", "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '", func(code int, out string) error {
			if strings.TrimSpace(out) != "lo" {
				return fmt.Errorf("interfaces: %q", out)
			}
			return nil
		}},
		{"has its own pid namespace", "echo $$; ls -d /proc/[0-9]* | wc -l", func(code int, out string) error {
			f := strings.Fields(out)
			// The step is PID 1 of a fresh pid namespace, alone but for
			// the ls it runs.
			if n, err := strconv.Atoi(f[len(f)-1]); len(f) != 2 || f[0] != "1" || err != nil || n > 3 {
				return fmt.Errorf("pid/process count %q, want the step as pid 1 with no one else", out)
			}
			return nil
		}},
		{"cannot open raw sockets (no NET_RAW)", "ping -c1 -W1 127.0.0.1 2>&1; echo rc=$?", func(code int, out string) error {
			// Without NET_RAW (and with ICMP sockets not enabled in this
			// empty netns) ping cannot open any socket at all.
			if !strings.Contains(out, "rc=2") || !strings.Contains(strings.ToLower(out), "operation not permitted") {
				return fmt.Errorf("ping: %q", out)
			}
			return nil
		}},
		{"cannot change links, routes or firewall rules (no NET_ADMIN)", "ip link set lo down; echo rc=$?; ip route add 10.0.0.0/8 dev lo; echo rc=$?; /usr/sbin/iptables -A OUTPUT -j ACCEPT; echo rc=$?", func(code int, out string) error {
			if strings.Count(out, "rc=0") > 0 || strings.Count(strings.ToLower(out), "not permitted")+strings.Count(strings.ToLower(out), "permission denied") < 3 {
				return fmt.Errorf("network changes: %q", out)
			}
			return nil
		}},
		{"hostname is per job", "hostname", func(code int, out string) error {
			if strings.TrimSpace(out) != sb.ID() {
				return fmt.Errorf("hostname %q, want %q", out, sb.ID())
			}
			return nil
		}},
		{"workspace and tmp are writable", "touch /workspace/a /tmp/b /home/build/c && echo ok", func(code int, out string) error {
			if !strings.Contains(out, "ok") {
				return fmt.Errorf("%q", out)
			}
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, out := run(t, sb, sandbox.Step{Args: sh(tc.script + " 2>&1")})
			if err := tc.check(res.ExitCode, out); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestLimitsEndStepsWithTheirReason(t *testing.T) {
	cases := []struct {
		name   string
		limits sandbox.Limits
		step   sandbox.Step
		cancel time.Duration
		want   sandbox.Reason
		within time.Duration
	}{
		{"out of memory", sandbox.Limits{MemoryBytes: 96 << 20},
			sandbox.Step{Args: []string{"node", "-e", "const a=[];for(;;)a.push(Buffer.alloc(1<<20,1))"}}, 0, sandbox.ReasonOOM, time.Minute},
		{"fork bomb hits the pids limit", sandbox.Limits{Pids: 64},
			sandbox.Step{Args: sh("f(){ f | f & }; f; sleep 60"), Grace: time.Second}, 0, sandbox.ReasonPidsLimit, 15 * time.Second},
		{"timeout", sandbox.Limits{},
			sandbox.Step{Args: []string{"sleep", "60"}, Timeout: time.Second, Grace: time.Second}, 0, sandbox.ReasonTimeout, 10 * time.Second},
		{"timeout of a process ignoring SIGTERM", sandbox.Limits{},
			sandbox.Step{Args: sh("trap '' TERM; sleep 60 & wait; sleep 60"), Timeout: time.Second, Grace: time.Second}, 0, sandbox.ReasonTimeout, 10 * time.Second},
		{"cancel mid-step", sandbox.Limits{},
			sandbox.Step{Args: []string{"sleep", "60"}, Grace: time.Second}, 500 * time.Millisecond, sandbox.ReasonCanceled, 10 * time.Second},
		{"disk limit", sandbox.Limits{DiskBytes: 32 << 20},
			sandbox.Step{Args: sh("dd if=/dev/zero of=/workspace/big bs=1M count=64")}, 0, sandbox.ReasonDiskLimit, time.Minute},
	}
	f := newFixture(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sb := f.create(t, sandbox.Options{Limits: tc.limits})
			ctx := context.Background()
			if tc.cancel > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				time.AfterFunc(tc.cancel, cancel)
			}
			var out bytes.Buffer
			tc.step.Stdout = &out
			start := time.Now()
			res, err := sb.Run(ctx, tc.step)
			if err != nil {
				t.Fatal(err)
			}
			if res.Reason != tc.want {
				t.Fatalf("reason = %q (exit %d), want %q\n%s", res.Reason, res.ExitCode, tc.want, tail(out.String()))
			}
			if took := time.Since(start); took > tc.within {
				t.Errorf("took %s, want within %s", took, tc.within)
			}
			if !res.Failed() {
				t.Error("a limited step reports success")
			}
		})
	}
}

func TestDiskLimitLeavesHostDiskAlone(t *testing.T) {
	f := newFixture(t)
	sb := f.create(t, sandbox.Options{Limits: sandbox.Limits{DiskBytes: 32 << 20}})
	res, _ := run(t, sb, sandbox.Step{Args: sh("dd if=/dev/zero of=/workspace/big bs=1M count=100 2>/dev/null")})
	if res.Reason != sandbox.ReasonDiskLimit {
		t.Fatalf("reason %q", res.Reason)
	}
	// What the sandbox wrote is bounded by the limit, wherever it lands.
	var st syscall.Statfs_t
	if err := syscall.Statfs(sb.WorkspacePath(), &st); err != nil {
		t.Fatal(err)
	}
	if total := int64(st.Blocks) * st.Bsize; total > 33<<20 {
		t.Errorf("workspace filesystem is %d bytes, want at most the 32 MiB limit", total)
	}
}

func TestBadInputGivesClearErrorsAndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cases := []struct {
		name string
		o    sandbox.Options
		want error
		text string
	}{
		{"unknown image", sandbox.Options{Image: "cleanroom.local/no-such-image:1"}, sandbox.ErrImageNotFound, "cleanroom image build"},
		{"missing workspace", sandbox.Options{Workspace: "/nonexistent/ws"}, sandbox.ErrInvalidOptions, "/nonexistent/ws"},
		{"negative limit", sandbox.Options{Limits: sandbox.Limits{MemoryBytes: -5}}, sandbox.ErrInvalidOptions, "negative"},
		{"absurdly small memory", sandbox.Options{Limits: sandbox.Limits{MemoryBytes: 1000}}, sandbox.ErrInvalidOptions, "memory"},
		{"missing netns", sandbox.Options{NetNS: "/run/netns/does-not-exist"}, sandbox.ErrInvalidOptions, "network namespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.JobID = f.jobID("bad")
			if o.Image == "" {
				o.Image = testutil.Image()
			}
			_, err := f.c.Create(ctx, o)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.want, tc.text)
			}
		})
	}
	t.Run("step that does not exist", func(t *testing.T) {
		sb := f.create(t, sandbox.Options{})
		_, err := sb.Run(ctx, sandbox.Step{Args: []string{"no-such-command"}})
		if !errors.Is(err, sandbox.ErrStepNotFound) || !strings.Contains(err.Error(), "no-such-command") {
			t.Fatalf("err = %v", err)
		}
		// The sandbox is still usable after a bad step.
		if res, _ := run(t, sb, sandbox.Step{Args: []string{"true"}}); res.Failed() {
			t.Fatalf("next step: %s", res)
		}
	})
}

// With PathsLater, Create accepts a mount source that does not exist yet (the
// agent makes the job's resolv.conf while the sandbox is created); a step
// refuses to start until it exists, and then sees it.
func TestPathsLaterAreCheckedWhenAStepStarts(t *testing.T) {
	f := newFixture(t)
	src := filepath.Join(t.TempDir(), "later", "resolv.conf")
	sb := f.create(t, sandbox.Options{PathsLater: true, Mounts: []sandbox.Mount{{Source: src, Destination: "/etc/resolv.conf"}}})
	_, err := sb.Run(context.Background(), sandbox.Step{Args: []string{"true"}})
	if !errors.Is(err, sandbox.ErrInvalidOptions) || !strings.Contains(err.Error(), src) {
		t.Fatalf("step before the path exists: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src, []byte("nameserver 10.231.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if res, out := run(t, sb, sandbox.Step{Args: []string{"cat", "/etc/resolv.conf"}}); res.Failed() || out != "nameserver 10.231.0.1\n" {
		t.Fatalf("step after: %v %q", res, out)
	}
	// Without PathsLater, Create still refuses it at once.
	_, err = f.c.Create(context.Background(), sandbox.Options{JobID: f.jobID("pl"), Image: testutil.Image(), Env: testEnv,
		Mounts: []sandbox.Mount{{Source: src + ".missing", Destination: "/etc/x"}}})
	if !errors.Is(err, sandbox.ErrInvalidOptions) {
		t.Fatalf("missing mount source without PathsLater: %v", err)
	}
}

func TestDestroyWorksWithCancelledContext(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	sb, err := f.c.Create(ctx, sandbox.Options{JobID: f.jobID("cc"), Image: testutil.Image(), Env: testEnv, Limits: sandbox.Limits{DiskBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	res, err := sb.Run(ctx, sandbox.Step{Args: []string{"sleep", "30"}, Grace: 500 * time.Millisecond})
	if err != nil || res.Reason != sandbox.ReasonCanceled {
		t.Fatalf("run on cancelled ctx: %v %v", res, err)
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatalf("destroy with cancelled ctx: %v", err)
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
}

func TestNoResidueAfterFiftyMixedRuns(t *testing.T) {
	f := newFixture(t)
	steps := []sandbox.Step{
		{Args: []string{"true"}},
		{Args: []string{"false"}},
		{Args: []string{"sleep", "30"}, Timeout: 300 * time.Millisecond, Grace: 200 * time.Millisecond},
		{Args: sh("sleep 30 & sleep 30 & wait"), Timeout: 300 * time.Millisecond, Grace: 200 * time.Millisecond},
		{Args: sh("echo out; echo err >&2; exit 3")},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	sem := make(chan struct{}, 4)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			o := sandbox.Options{JobID: f.jobID("mix"), Image: testutil.Image(), Env: testEnv}
			if i%5 == 0 {
				o.Limits.DiskBytes = 32 << 20
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			sb, err := f.c.Create(ctx, o)
			if err != nil {
				errs <- err
				return
			}
			if i%7 == 3 {
				time.AfterFunc(200*time.Millisecond, cancel) // killed mid-step
			}
			if _, err := sb.Run(ctx, steps[i%len(steps)]); err != nil && !errors.Is(err, sandbox.ErrStopped) {
				errs <- err
			}
			if err := sb.Destroy(ctx); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// newFixture's cleanup asserts that no container, snapshot, mount, state
	// dir or cgroup of any of these 50 jobs remains.
}

// TestGCCleansUpAfterKilledProcess runs a helper process that creates a
// sandbox and starts a long step, kills it with SIGKILL, and checks that GC
// (without --all: only dead owners) removes everything it left.
func TestGCCleansUpAfterKilledProcess(t *testing.T) {
	if os.Getenv("CLEANROOM_GC_HELPER") != "" {
		gcHelper()
		return
	}
	f := newFixture(t)
	state := t.TempDir()
	job := f.jobID("killed")
	cmd := exec.Command(os.Args[0], "-test.run=^TestGCCleansUpAfterKilledProcess$")
	cmd.Env = append(os.Environ(), "CLEANROOM_GC_HELPER=1", "CLEANROOM_GC_STATE="+state, "CLEANROOM_GC_AGENT="+f.agent, "CLEANROOM_GC_JOB="+job)
	var out testutil.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "step running") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("helper did not start its step: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	c, err := sandbox.New(context.Background(), sandbox.Config{Address: testutil.ContainerdAddress(t), Agent: f.agent, StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before, _ := c.Residue(context.Background(), f.agent)
	if len(before) == 0 {
		t.Fatal("the killed process left nothing behind: the test did not test GC")
	}
	// Until GC removes it, the leftover container keeps its user-namespace
	// slot: its processes still run on the slot's IDs.
	one, err := sandbox.New(context.Background(), sandbox.Config{Address: testutil.ContainerdAddress(t), Agent: f.agent, StateDir: t.TempDir(),
		UserNS: &sandbox.UserNS{Base: testUserNSBase + 16*sandbox.UserNSSize, Slots: 1}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = one.Create(context.Background(), sandbox.Options{JobID: f.jobID("taken"), Image: testutil.Image(), Env: testEnv})
	one.Close()
	if !errors.Is(err, sandbox.ErrUserNS) || !strings.Contains(err.Error(), "leftover") {
		t.Errorf("a sandbox on the killed process's slot: %v, want ErrUserNS naming the leftover", err)
	}
	rep, err := c.GC(context.Background(), sandbox.GCOptions{Agent: f.agent})
	if err != nil {
		t.Fatalf("gc: %v", err)
	}
	if len(rep.Containers) != 1 {
		t.Errorf("gc removed containers %v, want the killed job's", rep.Containers)
	}
	after, _ := c.Residue(context.Background(), f.agent)
	if len(after) > 0 {
		t.Errorf("residue after gc: %v", after)
	}
}

func gcHelper() {
	ctx := context.Background()
	// A range of its own: the test's client holds the fixture's.
	c, err := sandbox.New(ctx, sandbox.Config{Address: os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"), Agent: os.Getenv("CLEANROOM_GC_AGENT"), StateDir: os.Getenv("CLEANROOM_GC_STATE"),
		UserNS: &sandbox.UserNS{Base: testUserNSBase + 16*sandbox.UserNSSize, Slots: 1}})
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(1)
	}
	sb, err := c.Create(ctx, sandbox.Options{JobID: os.Getenv("CLEANROOM_GC_JOB"), Image: testutil.Image(), Env: testEnv, Limits: sandbox.Limits{DiskBytes: 32 << 20}})
	if err != nil {
		fmt.Println("helper:", err)
		os.Exit(1)
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		fmt.Println("step running")
	}()
	_, _ = sb.Run(ctx, sandbox.Step{Args: []string{"sleep", "300"}})
	os.Exit(1)
}

func TestGCLeavesLiveSandboxesAlone(t *testing.T) {
	f := newFixture(t)
	sb := f.create(t, sandbox.Options{})
	rep, err := f.c.GC(context.Background(), sandbox.GCOptions{Agent: f.agent})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Empty() {
		t.Fatalf("gc removed a live sandbox: %+v", rep)
	}
	if res, _ := run(t, sb, sandbox.Step{Args: []string{"true"}}); res.Failed() {
		t.Fatalf("sandbox broken after gc: %s", res)
	}
}

func tail(s string) string {
	if len(s) > 2000 {
		return s[len(s)-2000:]
	}
	return s
}

// buildProbe builds testdata/seccompprobe for goarch as a static binary into
// dir, as an attacker would bring it into a job.
func buildProbe(t *testing.T, dir, name, goarch string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./testdata/seccompprobe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe for %s: %v\n%s", goarch, err, out)
	}
}

// probeResults parses "<probe> <result>" lines.
func probeResults(out string) map[string]string {
	res := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if name, r, ok := strings.Cut(strings.TrimSpace(l), " "); ok {
			res[name] = r
		}
	}
	return res
}

// deniedProbes are the probes of testdata/seccompprobe that must get EPERM.
var deniedProbes = []string{
	"io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
	"keyctl", "add_key", "request_key", "kexec_load", "kexec_file_load", "open_by_handle_at",
	"name_to_handle_at", "ptrace", "process_vm_readv", "process_vm_writev",
	"socket/AF_PACKET", "socket/AF_BLUETOOTH", "socket/AF_ALG", "socket/AF_KEY", "socket/AF_VSOCK",
	"socket/AF_XDP", "socket/AF_TIPC", "socket/AF_RDS", "socket/AF_CAN", "socket/AF_APPLETALK",
	"socket/AF_X25", "socket/AF_LLC", "socket/AF_SMC", "socket/AF_KCM", "socket/AF_QIPCRTR", "socket/AF_MCTP",
	"socketpair/AF_PACKET", "socketpair/AF_TIPC", "socketpair/AF_VSOCK",
}

func TestSeccompRefusesWhatABuildNeverNeeds(t *testing.T) {
	testutil.RequiresCommands(t, "go")
	f := newFixture(t)
	ws := t.TempDir()
	buildProbe(t, ws, "probe", runtime.GOARCH)
	if runtime.GOARCH == "amd64" {
		buildProbe(t, ws, "probe386", "386")
	}
	sb := f.create(t, sandbox.Options{Workspace: ws})

	res, out := run(t, sb, sandbox.Step{Args: []string{"/workspace/probe"}, Timeout: time.Minute})
	if res.Failed() {
		t.Fatalf("probe: %s\n%s", res, out)
	}
	got := probeResults(out)
	for _, p := range deniedProbes {
		if got[p] != "EPERM" {
			t.Errorf("%s: %q, want EPERM", p, got[p])
		}
	}
	for _, p := range []string{"socket/AF_UNIX", "socket/AF_INET", "socket/AF_INET6", "socket/AF_NETLINK", "socketpair/AF_UNIX"} {
		if got[p] != "ok" {
			t.Errorf("%s: %q, want ok", p, got[p])
		}
	}

	if runtime.GOARCH != "amd64" {
		return
	}
	// A 32-bit x86 binary reaches socket() through socketcall(2), where
	// libseccomp cannot check the family. The 32-bit ABI is not in the
	// filter, so the probe must die at its first syscall; if it runs at
	// all, every refusal must hold for it too.
	res, out = run(t, sb, sandbox.Step{Args: []string{"/workspace/probe386"}, Timeout: time.Minute})
	t.Logf("32-bit probe: %s, %d bytes of output", res, len(out))
	got = probeResults(out)
	for _, p := range deniedProbes {
		if r, ok := got[p]; ok && r != "EPERM" && (p != "kexec_file_load" || r != "ENOSYS") {
			t.Errorf("32-bit %s: %q, want EPERM", p, r)
		}
	}
	if !res.Failed() && len(got) < len(deniedProbes) {
		t.Errorf("32-bit probe exited 0 with partial output:\n%s", out)
	}
}
