package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
)

func runServerCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"server"}, args...)...)
	cmd.Env = []string{"CLEANROOM_TEST_CLI=1", "HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// checkMigrateCLI runs --store-check, migrate --dry-run, migrate and
// migrate again on a new store: the checks show every migration pending
// and change nothing, the migrate applies them, the next finds none.
func checkMigrateCLI(t *testing.T, storeArgs ...string) {
	t.Helper()
	for _, args := range [][]string{{"--store-check"}, {"migrate", "--dry-run"}} {
		out, err := runServerCLI(t, append(args, storeArgs...)...)
		if err != nil || !regexp.MustCompile(`schema version: 0 \(this build: \d+\)\npending migrations:\n\s+1  `).MatchString(out) ||
			!strings.Contains(out, "dry run: nothing applied") {
			t.Fatalf("%v on a new store: %v\n%s", args, err, out)
		}
	}
	out, err := runServerCLI(t, append([]string{"migrate"}, storeArgs...)...)
	if err != nil || !regexp.MustCompile(`schema version: 0 .*\n(.*\n)*applied \d+ migration\(s\): now at version \d+`).MatchString(out) {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	out, err = runServerCLI(t, append([]string{"migrate"}, storeArgs...)...)
	if err != nil || !strings.Contains(out, "up to date: nothing to apply") {
		t.Fatalf("migrate again: %v\n%s", err, out)
	}
}

func TestServerMigrateSQLite(t *testing.T) {
	dir := t.TempDir()
	checkMigrateCLI(t, "--data-dir", dir)
	if _, err := os.Stat(filepath.Join(dir, "cleanroom.db")); err != nil {
		t.Fatal(err)
	}
	if out, err := runServerCLI(t, "migrate", "--store", "mysql://db"); err == nil || !strings.Contains(out, "want sqlite (the default) or a postgres:// URL") {
		t.Fatalf("an unknown store: %v\n%s", err, out)
	}
}

// With --store postgres://… the server migrates, serves from PostgreSQL
// (readyz checks it), keeps no blobs in its data directory, and its
// password appears in no output.
func TestServerWithPostgresStore(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	checkMigrateCLI(t, "--store", dsn)
	dir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(cfg, []byte("store: "+dsn+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServer(t, "--config", cfg, "--data-dir", dir, "--listen", "127.0.0.1:0")
	p.waitFor(t, "coordinator listening")
	m := regexp.MustCompile(`url=(http://\S+)`).FindStringSubmatch(p.stderr())
	if m == nil || !strings.Contains(p.stderr(), "store=\"postgres ") {
		t.Fatalf("stderr:\n%s", p.stderr())
	}
	resp, err := http.Get(m[1] + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz: %d %v", resp.StatusCode, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs")); !os.IsNotExist(err) {
		t.Errorf("a PostgreSQL server made a blob directory: %v", err)
	}
	if pw := passwordOf(dsn); pw != "" && strings.Contains(p.stderr(), pw) {
		t.Error("the DSN's password is in the server's log")
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	if err := p.exit(t); err != nil {
		t.Fatalf("server exit: %v\n%s", err, p.stderr())
	}
}

func passwordOf(dsn string) string {
	m := regexp.MustCompile(`://[^:/@]+:([^@]+)@`).FindStringSubmatch(dsn)
	if m == nil {
		return ""
	}
	return m[1]
}
