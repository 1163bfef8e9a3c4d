package main

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serverProc is `cleanroom server` run as a user would, its stderr
// collected line by line.
type serverProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan error
}

func startServer(t *testing.T, args ...string) *serverProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"server"}, args...)...)
	cmd.Env = []string{"CLEANROOM_TEST_CLI=1", "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &serverProc{cmd: cmd, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *serverProc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// waitFor waits until stderr contains want.
func (p *serverProc) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.stderr(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("server did not print %q; stderr:\n%s", want, p.stderr())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exit waits for the process to end and returns its error.
func (p *serverProc) exit(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("server still running; stderr:\n%s", p.stderr())
		return nil
	}
}

// Two servers cannot share a data directory: the second fails at once,
// naming it. The admin token is printed after the listener is up, and the
// server logs its shutdown on SIGTERM.
func TestServerLocksItsDataDirPrintsTheTokenOnceListeningAndLogsShutdown(t *testing.T) {
	dir := t.TempDir()
	a := startServer(t, "--data-dir", dir, "--listen", "127.0.0.1:0")
	a.waitFor(t, "Admin token")
	out := a.stderr()
	if l, tok := strings.Index(out, "coordinator listening"), strings.Index(out, "Admin token"); l < 0 || tok < l {
		t.Fatalf("admin token printed before the listener was up:\n%s", out)
	}

	b := startServer(t, "--data-dir", dir, "--listen", "127.0.0.1:0")
	if err := b.exit(t); err == nil {
		t.Fatalf("a second server on the same data dir started; stderr:\n%s", b.stderr())
	}
	if want := "data directory " + dir + " is in use by another cleanroom server (pid " + strconv.Itoa(a.cmd.Process.Pid); !strings.Contains(b.stderr(), want) {
		t.Fatalf("second server's stderr lacks %q:\n%s", want, b.stderr())
	}

	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.exit(t); err != nil {
		t.Fatalf("server exit after SIGTERM: %v\n%s", err, a.stderr())
	}
	for _, want := range []string{"coordinator shutting down: signal=terminated", "coordinator stopped"} {
		if !strings.Contains(a.stderr(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, a.stderr())
		}
	}
	// The lock went with the process: the directory serves again.
	c := startServer(t, "--data-dir", dir, "--listen", "127.0.0.1:0")
	c.waitFor(t, "coordinator listening")
	if strings.Contains(c.stderr(), "Admin token") {
		t.Errorf("the existing admin token was printed again")
	}
}

// A server that cannot listen prints no admin token and leaves none behind,
// so the next start prints the one it creates.
func TestServerThatCannotListenPrintsNoAdminToken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	p := startServer(t, "--data-dir", dir, "--listen", ln.Addr().String())
	if err := p.exit(t); err == nil {
		t.Fatal("server started on a busy port")
	}
	if out := p.stderr(); strings.Contains(out, "Admin token") || !regexp.MustCompile(`listening on .*address already in use`).MatchString(out) {
		t.Fatalf("stderr:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.token")); !os.IsNotExist(err) {
		t.Fatalf("admin token file left behind: %v", err)
	}
}
