package attribution

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// The helper process: waits for a line on stdin, then connects to the
// addresses named in its environment (UDP connect sends nothing; TCP goes
// to a listener on loopback) and exits.
func TestMain(m *testing.M) {
	if os.Getenv("CR_ATTR_HELPER") == "bench" {
		benchHelper()
	}
	if os.Getenv("CR_ATTR_HELPER") == "1" {
		in := bufio.NewReader(os.Stdin)
		in.ReadString('\n')
		if c, err := net.Dial("udp", os.Getenv("CR_ATTR_UDP")); err == nil {
			c.Close()
		}
		if c, err := net.Dial("tcp", os.Getenv("CR_ATTR_TCP")); err == nil {
			c.Close()
		}
		if os.Getenv("CR_ATTR_HOLD") == "1" {
			in.ReadString('\n') // stay alive until told
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// closingListener listens on loopback and closes every connection it
// accepts, until the test ends.
func closingListener(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln
}

// testCgroup makes a cgroup v2 of its own for a test's processes.
func testCgroup(t testing.TB) (dir string, fd int) {
	root, err := V2Root()
	if err != nil {
		testutil.Unavailable(t, err.Error())
	}
	dir = filepath.Join(root, fmt.Sprintf("cleanroom-attr-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		for i := 0; i < 50; i++ { // the helper's exit empties it
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	return dir, int(f.Fd())
}

type collected struct {
	mu  sync.Mutex
	evs []api.EgressEvent
}

func (c *collected) add(ev api.EgressEvent) { c.mu.Lock(); c.evs = append(c.evs, ev); c.mu.Unlock() }

func TestHooksNameTheProcessOfEachAttempt(t *testing.T) {
	testutil.RequiresRoot(t)
	tr, err := Load()
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	defer tr.Close()
	_, cgfd := testCgroup(t)

	ln := closingListener(t)
	const secret = "s3cr3t-value-in-argv"
	cmd := exec.Command("/proc/self/exe", "-test.run=NONE", "marker-arg", secret)
	cmd.Env = append(os.Environ(), "CR_ATTR_HELPER=1", "CR_ATTR_UDP=127.0.0.1:9", "CR_ATTR_TCP="+ln.Addr().String(),
		"npm_package_name=@cleanroom-demo/attr-test", "OTHER_SECRET=do-not-read")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var got collected
	w := tr.Watch(got.add, func(s string) string { return strings.ReplaceAll(s, secret, "[REDACTED]") })
	if err := w.AttachPID(uint32(cmd.Process.Pid)); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("attaching: %v", err)
	}
	fmt.Fprintln(stdin, "go")
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	now := time.Now()
	w.OnEvent(api.EgressEvent{Time: now, Proto: "udp", Dst: "127.0.0.1:9", Verdict: "deny"})
	w.OnEvent(api.EgressEvent{Time: now, Proto: "tcp", Dst: ln.Addr().String(), Verdict: "allow"})
	w.OnEvent(api.EgressEvent{Time: now, Proto: "tcp", Dst: "127.0.0.1:1", Verdict: "deny"}) // never attempted
	if err := w.Close(context.Background()); err != nil {
		t.Fatalf("closing: %v", err)
	}
	if len(got.evs) != 3 {
		t.Fatalf("delivered %d events, want 3", len(got.evs))
	}
	for _, ev := range got.evs[:2] {
		p := ev.Process
		if p == nil {
			t.Errorf("%s %s: no process", ev.Proto, ev.Dst)
			continue
		}
		// The helper has exited: only pid and comm from the record remain.
		if p.PID != cmd.Process.Pid || p.Comm == "" {
			t.Errorf("%s %s: process %+v, want pid %d with a comm", ev.Proto, ev.Dst, p, cmd.Process.Pid)
		}
	}
	if got.evs[2].Process != nil {
		t.Errorf("an attempt no process made was attributed: %+v", got.evs[2].Process)
	}
}

// While the process lives, /proc gives its executable, its redacted
// command line and its npm package.
func TestHooksReadProcWhileTheProcessLives(t *testing.T) {
	testutil.RequiresRoot(t)
	tr, err := Load()
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	defer tr.Close()
	_, cgfd := testCgroup(t)
	const secret = "s3cr3t-value-in-argv"
	cmd := exec.Command("/proc/self/exe", "-test.run=NONE", "marker-arg", secret)
	cmd.Env = append(os.Environ(), "CR_ATTR_HELPER=1", "CR_ATTR_HOLD=1", "CR_ATTR_UDP=127.0.0.1:9", "CR_ATTR_TCP=127.0.0.1:1",
		"npm_package_name=@cleanroom-demo/attr-test")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var got collected
	w := tr.Watch(got.add, func(s string) string { return strings.ReplaceAll(s, secret, "[REDACTED]") })
	defer w.Close(context.Background())
	if err := w.AttachPID(uint32(cmd.Process.Pid)); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("attaching: %v", err)
	}
	fmt.Fprintln(stdin, "go")
	defer func() {
		fmt.Fprintln(stdin, "exit")
		cmd.Wait()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r, _ := w.idx.match(api.EgressEvent{Time: time.Now(), Proto: "udp", Dst: "127.0.0.1:9"})
		if r != nil {
			p := r.process()
			if p.PID != cmd.Process.Pid || !strings.Contains(p.Cmdline, "marker-arg") || strings.Contains(p.Cmdline, secret) ||
				!strings.Contains(p.Cmdline, "[REDACTED]") || p.Package != "@cleanroom-demo/attr-test" || p.Exe == "" {
				t.Errorf("process %+v: want pid %d, an exe, cmdline with marker-arg and the secret redacted, package @cleanroom-demo/attr-test", p, cmd.Process.Pid)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("no record for the helper's UDP connect")
}
