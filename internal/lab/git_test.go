package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// The lab's git server serves a repository over HTTPS to the lab host,
// with a certificate only its own CA vouches for.
func TestGitServerServesOverHTTPS(t *testing.T) {
	testutil.RequiresRoot(t)
	ctx := context.Background()
	l, err := New(ctx, "git")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	g, err := l.ServeGit(l.RegistryNS, "10.231.254.2:8443", dir, GitName)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	commit, err := g.AddRepo(ctx, "hello", src)
	if err != nil || len(commit) != 40 {
		t.Fatalf("AddRepo = %q, %v", commit, err)
	}
	clone := func(ca string) (string, error) {
		dst := filepath.Join(t.TempDir(), "c")
		out, err := l.Exec(ctx, l.HostNS, "env", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_SSL_CAINFO="+ca,
			"git", "clone", "--quiet", "https://10.231.254.2:8443/hello.git", dst)
		if err != nil {
			return string(out), err
		}
		b, err := os.ReadFile(filepath.Join(dst, "hello.txt"))
		return string(b), err
	}
	if got, err := clone(g.CAFile); err != nil || got != "hello\n" {
		t.Fatalf("clone with the lab CA: %q, %v", got, err)
	}
	if out, err := clone("/dev/null"); err == nil || !strings.Contains(out, "certificate") {
		t.Fatalf("clone without the lab CA: %v: %s", err, out)
	}
	if g.Requests() == 0 {
		t.Error("the server counted no requests")
	}
}
