package buildexec

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// dirBytes is the space the files under dir really take (blocks, not
// apparent sizes).
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return n
}

func TestArtifactBudgetCountsSparseFilesWholeAndCopiesNothing(t *testing.T) {
	ws := t.TempDir()
	if err := os.MkdirAll(filepath.Join(ws, "dist"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "dist", "a.js"), []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	// 64 GiB that take no space in the workspace: the copy would be dense.
	f, err := os.Create(filepath.Join(ws, "dist", "x"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := filepath.Join(t.TempDir(), "out")
	_, err = collectArtifacts(context.Background(), ws, []string{"dist/"}, out, ArtifactLimits{MaxBytes: 4 << 30})
	if err == nil || !strings.Contains(err.Error(), "artifacts.max_bytes") || !strings.Contains(err.Error(), "dist/x") {
		t.Fatalf("err = %v, want the budget to refuse dist/x", err)
	}
	if n := dirBytes(t, out); n != 0 {
		t.Errorf("%d bytes written to the host before the refusal", n)
	}
}

func TestArtifactBudgetLimitsTheFileCount(t *testing.T) {
	ws := t.TempDir()
	dist := filepath.Join(ws, "dist")
	if err := os.MkdirAll(dist, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 101 {
		if err := os.WriteFile(filepath.Join(dist, fmt.Sprintf("f%03d", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	_, err := collectArtifacts(context.Background(), ws, []string{"dist"}, out, ArtifactLimits{MaxBytes: 1 << 20, MaxFiles: 100})
	if err == nil || !strings.Contains(err.Error(), "more than 100 artifact files (artifacts.max_files)") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the output dir was made before the refusal: %v", err)
	}
	arts, err := collectArtifacts(context.Background(), ws, []string{"dist"}, filepath.Join(t.TempDir(), "ok"), ArtifactLimits{MaxBytes: 1 << 20, MaxFiles: 101})
	if err != nil || len(arts) != 101 {
		t.Fatalf("at the limit: %d artifacts, %v", len(arts), err)
	}
}

func TestArtifactsAreHashedAsTheyAreCopied(t *testing.T) {
	ws := t.TempDir()
	data := []byte(strings.Repeat("artifact bytes ", 10000))
	if err := os.WriteFile(filepath.Join(ws, "out.js"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	arts, err := collectArtifacts(context.Background(), ws, []string{"out.js"}, t.TempDir(), ArtifactLimits{MaxBytes: 1 << 20})
	if err != nil || len(arts) != 1 {
		t.Fatal(arts, err)
	}
	sum := sha256.Sum256(data)
	if arts[0].SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("sha256 = %s", arts[0].SHA256)
	}
	if got, _ := os.ReadFile(arts[0].Path); string(got) != string(data) {
		t.Error("copy differs")
	}
}

func TestArtifactNamesWithControlCharactersAreRefused(t *testing.T) {
	for _, name := range []string{"a\x1b[2Kb.js", "tab\tname", "bell\a", "rtl\u202egnp.exe", "c1\u009b.js"} {
		ws := t.TempDir()
		if err := os.WriteFile(filepath.Join(ws, name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := collectArtifacts(context.Background(), ws, []string{"*"}, t.TempDir(), ArtifactLimits{MaxBytes: 1 << 20})
		if err == nil || !strings.Contains(err.Error(), "control or format character") {
			t.Errorf("%q: err = %v", name, err)
		}
	}
}

func TestCancelEndsALargeArtifactCopy(t *testing.T) {
	ws := t.TempDir()
	f, err := os.Create(filepath.Join(ws, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil { // sparse: reading it is fast, the copy is dense
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	t0 := time.Now()
	_, err = collectArtifacts(ctx, ws, []string{"big"}, t.TempDir(), ArtifactLimits{MaxBytes: 16 << 30})
	took := time.Since(t0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", err)
	}
	if took > 1200*time.Millisecond {
		t.Errorf("the copy went on for %s after a cancel at 200ms", took)
	}
}

// With user namespaces the build's files are owned by the slot's host IDs;
// the copies the agent keeps and uploads are the agent's (root's), with no
// set-id bits, whoever owned the original.
func TestArtifactCopiesAreOwnedByTheAgent(t *testing.T) {
	testutil.RequiresRoot(t)
	ws := t.TempDir()
	const slotBuildUID = 100_001_000 // sandbox.DefaultUserNSBase + BuildUID
	p := filepath.Join(ws, "out.js")
	if err := os.WriteFile(p, []byte("built\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, slotBuildUID, slotBuildUID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o6755); err != nil {
		t.Fatal(err)
	}
	arts, err := collectArtifacts(context.Background(), ws, []string{"out.js"}, t.TempDir(), ArtifactLimits{MaxBytes: 1 << 20})
	if err != nil || len(arts) != 1 {
		t.Fatal(arts, err)
	}
	st, err := os.Stat(arts[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || sys.Gid != 0 || st.Mode()&(os.ModeSetuid|os.ModeSetgid) != 0 {
		t.Errorf("artifact copy: owner %d:%d, mode %s; want root's, no set-id bits", sys.Uid, sys.Gid, st.Mode())
	}
}
