package sandbox_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/cleanroom-ci/cleanroom/sandbox"
)

// stepPIDs starts a long step in sb and returns the host pids of its
// processes once there are want of them, read from the sandbox's cgroup
// (the pids controller on v1, the unified tree on v2). The step is killed
// at the end of the test.
func stepPIDs(t *testing.T, sb *sandbox.Sandbox, script string, want int) []int {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = sb.Run(context.Background(), sandbox.Step{Args: sh(script), Grace: 100 * time.Millisecond})
	}()
	t.Cleanup(func() {
		_ = sb.Kill(context.Background())
		<-done
	})
	job := strings.TrimPrefix(sb.ID(), "cr-")
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range sandbox.CgroupsOf(job) {
			b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				continue
			}
			var pids []int
			for _, f := range strings.Fields(string(b)) {
				if p, err := strconv.Atoi(f); err == nil {
					pids = append(pids, p)
				}
			}
			if len(pids) >= want {
				return pids
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the step of %s did not show %d processes in its cgroup", sb.ID(), want)
	return nil
}

// hostIDs returns the real, effective, saved and filesystem UIDs and GIDs
// of a host pid, from /proc/<pid>/status.
func hostIDs(t *testing.T, pid int) (uids, gids []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Uid:"); ok {
			uids = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(l, "Gid:"); ok {
			gids = strings.Fields(v)
		}
	}
	return uids, gids
}

func TestUserNSStepsRunOnTheSlotsUnprivilegedHostIDs(t *testing.T) {
	f := newFixture(t)
	sb := f.create(t, sandbox.Options{})
	uid, gid := sb.BuildUser()
	if uid < testUserNSBase+sandbox.BuildUID || uid >= testUserNSBase+8*sandbox.UserNSSize || (uid-testUserNSBase)%sandbox.UserNSSize != sandbox.BuildUID || gid != uid {
		t.Fatalf("build user on host %d:%d, want base+slot·65536+1000", uid, gid)
	}

	// Inside, the IDs are the usual ones, the image's files are root's
	// (shifted with the range, not nobody's) and the workspace is the build
	// user's.
	res, out := run(t, sb, sandbox.Step{Args: sh("id -u; id -g; stat -c %u:%g /usr/local/bin/node /workspace; cat /proc/self/uid_map; touch /workspace/x && echo writable")})
	want := []string{"1000", "1000", "0:0", "1000:1000", "0 " + strconv.Itoa(uid-sandbox.BuildUID) + " 65536", "writable"}
	if fields := strings.Split(strings.Join(strings.Fields(strings.ReplaceAll(out, "\n", "|")), " "), "|"); res.Failed() || len(fields) < len(want) {
		t.Fatalf("inside: %s %q", res, out)
	} else {
		for i, w := range want {
			if strings.TrimSpace(fields[i]) != w {
				t.Errorf("inside line %d = %q, want %q (all: %q)", i, fields[i], w, out)
			}
		}
	}
	// The build cannot make user namespaces of its own (seccomp refuses
	// unshare and clone with namespace flags without CAP_SYS_ADMIN).
	if _, out := run(t, sb, sandbox.Step{Args: sh("unshare -Ur id -u 2>&1; echo rc=$?")}); !strings.Contains(out, "rc=1") || !strings.Contains(strings.ToLower(out), "operation not permitted") {
		t.Errorf("unshare -Ur inside the sandbox: %q", out)
	}
	st, err := os.Stat(filepath.Join(sb.WorkspacePath(), "x"))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
		t.Fatalf("a file the build made is owned by %v on the host, want %d (%v)", st.Sys().(*syscall.Stat_t).Uid, uid, err)
	}

	// From the host, every process of the step runs on the slot's IDs.
	pids := stepPIDs(t, sb, "sleep 30 & sleep 30; wait", 2)
	for _, pid := range pids {
		uids, gids := hostIDs(t, pid)
		for _, u := range append(uids, gids...) {
			if u != strconv.Itoa(uid) {
				t.Errorf("pid %d: Uid %v Gid %v on the host, want %d everywhere", pid, uids, gids, uid)
				break
			}
		}
	}

	// A host user with uid 1000 (the build user's ID without user
	// namespaces) cannot read the job's environment.
	cmd := exec.Command("cat", "/proc/"+strconv.Itoa(pids[0])+"/environ")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	if b, err := cmd.CombinedOutput(); err == nil || strings.Contains(string(b), "CLEANROOM_TEST=given") {
		t.Errorf("host uid 1000 read the sandbox's environment: %q, %v", b, err)
	}
}

// Two sandboxes that both see a host directory (a test-only read-write
// bind mount; the escape-style case of a process handed a path to a host
// file): neither can write what the other, or root, owns there.
func TestUserNSSandboxesCannotWriteEachOthersFiles(t *testing.T) {
	f := newFixture(t)
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o777); err != nil { // everyone may create files
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shared, "root-file"), []byte("root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var a, b sandbox.Options
	sandbox.WithSharedDirForTest(&a, shared, "/shared")
	sandbox.WithSharedDirForTest(&b, shared, "/shared")
	sbA, sbB := f.create(t, a), f.create(t, b)
	uidA, _ := sbA.BuildUser()
	uidB, _ := sbB.BuildUser()
	if d := uidA - uidB; d > -sandbox.UserNSSize && d < sandbox.UserNSSize {
		t.Fatalf("two live sandboxes have overlapping ranges: build users %d and %d", uidA, uidB)
	}
	if res, out := run(t, sbA, sandbox.Step{Args: sh("echo a > /shared/a-file && echo made")}); res.Failed() || !strings.Contains(out, "made") {
		t.Fatalf("A writing its own file: %s %q", res, out)
	}
	if res, out := run(t, sbB, sandbox.Step{Args: sh("echo b > /shared/b-file && echo made")}); res.Failed() || !strings.Contains(out, "made") {
		t.Fatalf("B writing its own file: %s %q", res, out)
	}
	for _, c := range []struct {
		sb     *sandbox.Sandbox
		target string
	}{{sbB, "a-file"}, {sbA, "b-file"}, {sbA, "root-file"}, {sbB, "root-file"}} {
		// Both can see (read) the file; writing, chmod and chown fail.
		script := "cat /shared/" + c.target + " >/dev/null && echo readable; " +
			"echo x >> /shared/" + c.target + " && echo WROTE; chmod 666 /shared/" + c.target + " && echo CHMOD; " +
			"chown 1000 /shared/" + c.target + " && echo CHOWN; exit 0"
		_, out := run(t, c.sb, sandbox.Step{Args: sh(script + " 2>&1")})
		if !strings.Contains(out, "readable") || strings.Contains(out, "WROTE") || strings.Contains(out, "CHMOD") || strings.Contains(out, "CHOWN") {
			t.Errorf("%s on %s: %q", c.sb.ID(), c.target, out)
		}
	}
	for name, want := range map[string]int{"a-file": uidA, "b-file": uidB} {
		st, err := os.Stat(filepath.Join(shared, name))
		if err != nil || int(st.Sys().(*syscall.Stat_t).Uid) != want {
			t.Errorf("%s: owner on the host %v, want %d", name, st.Sys().(*syscall.Stat_t).Uid, want)
		}
	}
}

// A slot is taken from Create to Destroy: with one slot, a second sandbox
// waits (here: until its context ends), and gets the same range once the
// first is destroyed.
func TestUserNSSlotIsHeldUntilDestroy(t *testing.T) {
	f := newFixtureWith(t, &sandbox.UserNS{Base: testUserNSBase, Slots: 1})
	first, err := f.c.Create(context.Background(), sandbox.Options{JobID: f.jobID("slot"), Image: testutil.Image(), Env: testEnv})
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := first.BuildUser()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := f.c.Create(ctx, sandbox.Options{JobID: f.jobID("slot"), Image: testutil.Image(), Env: testEnv}); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "slot") {
		t.Fatalf("second sandbox with the one slot taken: %v", err)
	}
	if err := first.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := f.create(t, sandbox.Options{})
	if got, _ := second.BuildUser(); got != uid {
		t.Errorf("second sandbox's build user %d, want the freed slot's %d", got, uid)
	}
	if res, out := run(t, second, sandbox.Step{Args: []string{"true"}}); res.Failed() {
		t.Fatalf("sandbox on a reused slot: %s %q", res, out)
	}
}

// Two clients on a host never share IDs: a range overlapping a live
// client's is refused.
func TestUserNSRangeIsClaimedPerHost(t *testing.T) {
	f := newFixture(t)
	_ = f
	_, err := sandbox.New(context.Background(), sandbox.Config{Address: testutil.ContainerdAddress(t), StateDir: t.TempDir(),
		UserNS: &sandbox.UserNS{Base: testUserNSBase + 3*sandbox.UserNSSize, Slots: 2}})
	if !errors.Is(err, sandbox.ErrUserNS) || !strings.Contains(err.Error(), "in use by another cleanroom process") {
		t.Fatalf("overlapping range: %v", err)
	}
}

// The remapped image snapshot outlives its sandboxes (a cache: the next
// sandbox of the slot is a cheap child of it), is not residue, and GC with
// UserNSCache removes it.
func TestUserNSCacheIsKeptUntilGC(t *testing.T) {
	base := uint32(testUserNSBase + 64*sandbox.UserNSSize) // a range of its own, so the shared cache stays
	f := newFixtureWith(t, &sandbox.UserNS{Base: base, Slots: 1})
	sb := f.create(t, sandbox.Options{})
	if res, _ := run(t, sb, sandbox.Step{Args: []string{"true"}}); res.Failed() {
		t.Fatal(res)
	}
	if err := sb.Destroy(context.Background()); err != nil {
		t.Fatal(err)
	}
	ours := func() []string {
		all, err := f.c.UserNSCache(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range all {
			if strings.Contains(n, "/"+strconv.FormatUint(uint64(base), 10)+"/") {
				out = append(out, n)
			}
		}
		return out
	}
	if got := ours(); len(got) != 1 {
		t.Fatalf("remapped snapshots of the range after destroy: %v, want one", got)
	}
	rep, err := f.c.GC(context.Background(), sandbox.GCOptions{Agent: f.agent, UserNSCache: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.UserNSCache) != 1 {
		t.Errorf("gc removed %v, want the range's remapped snapshot", rep.UserNSCache)
	}
	if got := ours(); len(got) != 0 {
		t.Errorf("remapped snapshots left after gc: %v", got)
	}
}

func TestCheckUserNSRefusesRangesOfRealUsers(t *testing.T) {
	if err := sandbox.UserNSSupported(); err != nil {
		testutil.Unavailable(t, "no user namespaces on this kernel: "+err.Error())
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	passwd := write("passwd", "root:x:0:0::/root:/bin/sh\nbig:x:100070000:100:::/bin/sh\n")
	group := write("group", "root:x:0:\n")
	subuid := write("subuid", "alice:100000:65536\nbob:200000000:65536\n")
	files := []string{passwd, group, subuid}
	cases := []struct {
		name string
		u    sandbox.UserNS
		want string // "" = accepted
	}{
		{"free range", sandbox.UserNS{Base: sandbox.DefaultUserNSBase, Slots: 1}, ""},
		{"overlaps a passwd uid", sandbox.UserNS{Base: sandbox.DefaultUserNSBase, Slots: 2}, "passwd line 2"},
		{"overlaps a subuid range", sandbox.UserNS{Base: 200000000 - 65536, Slots: 2}, "subuid line 2"},
		{"ends where a subuid range starts", sandbox.UserNS{Base: 200000000 - 65536, Slots: 1}, ""},
		{"below 65536", sandbox.UserNS{Base: 1000, Slots: 1}, "below 65536"},
		{"past 32 bits", sandbox.UserNS{Base: 1<<32 - 65536, Slots: 1}, "passes the last host ID"},
		{"no slots", sandbox.UserNS{Base: sandbox.DefaultUserNSBase}, "slots"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.u.IDFiles = files
			err := sandbox.CheckUserNS(tc.u)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.Is(err, sandbox.ErrUserNS) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want ErrUserNS mentioning %q", err, tc.want)
			}
		})
	}
}

// The agent's sandboxes join a network namespace made outside them, which
// their user namespace does not own: the kernel refuses them a sysfs mount,
// so the host mounts the namespace's sysfs for them (read-only, not
// recursive). The sandbox sees its own network devices there, as it would
// with a sysfs of its own, and none of the host's.
func TestUserNSSandboxJoinsANetworkNamespaceMadeOutside(t *testing.T) {
	testutil.RequiresCommands(t, "ip")
	f := newFixture(t)
	name := "crut-" + strconv.Itoa(os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	sb := f.create(t, sandbox.Options{NetNS: "/run/netns/" + name})
	res, out := run(t, sb, sandbox.Step{Args: sh("ls /sys/class/net; grep -c . /proc/self/uid_map; touch /sys/x 2>/dev/null || echo read-only")})
	if res.Failed() || strings.Fields(out)[0] != "lo" || !strings.Contains(out, "read-only") || len(strings.Fields(out)) != 3 {
		t.Fatalf("in a joined network namespace: %s %q, want only lo in /sys/class/net, a uid map and a read-only /sys", res, out)
	}
	if uid, _ := sb.BuildUser(); uid < testUserNSBase {
		t.Fatalf("build user %d: not in a user namespace", uid)
	}
	// A second step finds the same mount.
	if res, out := run(t, sb, sandbox.Step{Args: sh("ls /sys/class/net")}); res.Failed() || strings.TrimSpace(out) != "lo" {
		t.Fatalf("second step: %s %q", res, out)
	}
}
