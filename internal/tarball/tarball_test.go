package tarball

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// entry is what a test checks of one archive member.
type entry struct {
	typ     byte
	mode    int64
	content string
	link    string
	mtime   time.Time
	uid     int
	uname   string
}

func readArchive(t *testing.T, r io.Reader) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = entry{typ: h.Typeflag, mode: h.Mode, content: string(b), link: h.Linkname, mtime: h.ModTime, uid: h.Uid + h.Gid, uname: h.Uname + h.Gname}
	}
}

// tree writes an image-layout-like tree with a symlink and a fifo and
// returns its directory.
func tree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, mode := range map[string]os.FileMode{"oci-layout": 0o644, "blobs/sha256/ab": 0o600, "run.sh": 0o755, "node_modules/x/i.js": 0o644, "sub/.git/HEAD": 0o644} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // past the umask
	}
	if err := os.Symlink("blobs/sha256/ab", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "oci-layout"), old, old); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		os.Lchown(filepath.Join(dir, "run.sh"), 1234, 1234)
	}
	return dir
}

func TestWriteDirKeepsModesMtimesAndLinksButNotOwners(t *testing.T) {
	dir := tree(t)
	var buf bytes.Buffer
	if err := WriteDir(&buf, dir, Options{}); err != nil {
		t.Fatal(err)
	}
	got := readArchive(t, &buf)
	want := "blobs/ blobs/sha256/ blobs/sha256/ab link node_modules/ node_modules/x/ node_modules/x/i.js oci-layout run.sh sub/ sub/.git/ sub/.git/HEAD"
	if s := strings.Join(slices.Sorted(maps.Keys(got)), " "); s != want {
		t.Fatalf("archive has %s, want %s (no fifo)", s, want)
	}
	if e := got["blobs/sha256/ab"]; e.typ != tar.TypeReg || e.mode != 0o600 || e.content != "blobs/sha256/ab" {
		t.Errorf("blobs/sha256/ab = %+v, want a 0600 file with its content", e)
	}
	if e := got["run.sh"]; e.mode != 0o755 || e.uid != 0 || e.uname != "" {
		t.Errorf("run.sh = %+v, want mode 0755 owned by uid/gid 0 without names", e)
	}
	if e := got["oci-layout"]; !e.mtime.Equal(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("oci-layout mtime = %v, want the file's", e.mtime)
	}
	if e := got["link"]; e.typ != tar.TypeSymlink || e.link != "blobs/sha256/ab" {
		t.Errorf("link = %+v, want a symlink to blobs/sha256/ab", e)
	}
	if e := got["blobs/"]; e.typ != tar.TypeDir {
		t.Errorf("blobs/ = %+v, want a directory", e)
	}
}

func TestWriteDirGzipsAndSkipsDirectoriesAtAnyDepth(t *testing.T) {
	dir := tree(t)
	var buf bytes.Buffer
	if err := WriteDir(&buf, dir, Options{Gzip: true, SkipDirs: []string{"node_modules", ".git"}}); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	got := readArchive(t, zr)
	want := "blobs/ blobs/sha256/ blobs/sha256/ab link oci-layout run.sh sub/"
	if s := strings.Join(slices.Sorted(maps.Keys(got)), " "); s != want {
		t.Fatalf("archive has %s, want %s", s, want)
	}
}

func TestWriteDirNamesTheDirectoryInItsError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "gone")
	err := WriteDir(io.Discard, missing, Options{})
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Fatalf("WriteDir(missing) = %v, want ErrNotExist naming %s", err, missing)
	}
}

func TestWriteDirAsksIncludeForEveryEntry(t *testing.T) {
	dir := tree(t)
	var buf bytes.Buffer
	keep := map[string]bool{"blobs": true, "blobs/sha256": true, "run.sh": true, "sub": false}
	if err := WriteDir(&buf, dir, Options{Include: func(rel string) bool { return keep[rel] }}); err != nil {
		t.Fatal(err)
	}
	got := readArchive(t, &buf)
	if s := strings.Join(slices.Sorted(maps.Keys(got)), " "); s != "blobs/ blobs/sha256/ run.sh" {
		t.Fatalf("archive has %s, want only the included entries", s)
	}
}
