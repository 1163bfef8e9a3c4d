package agent_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cleanroom-ci/cleanroom/agent"
)

type entry struct {
	name, link string
	typ        byte
	body       string
}

func tarGz(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func TestExtractRejectsEveryKindOfEscape(t *testing.T) {
	tests := []struct {
		name    string
		entries []entry
		lim     agent.ExtractLimits
	}{
		{"absolute path", []entry{{name: "/etc/evil", typ: tar.TypeReg, body: "x"}}, agent.ExtractLimits{}},
		{"dot-dot path", []entry{{name: "a/../../evil", typ: tar.TypeReg, body: "x"}}, agent.ExtractLimits{}},
		{"character device", []entry{{name: "null", typ: tar.TypeChar}}, agent.ExtractLimits{}},
		{"block device", []entry{{name: "sda", typ: tar.TypeBlock}}, agent.ExtractLimits{}},
		{"fifo", []entry{{name: "pipe", typ: tar.TypeFifo}}, agent.ExtractLimits{}},
		{"absolute symlink", []entry{{name: "passwd", typ: tar.TypeSymlink, link: "/etc/passwd"}}, agent.ExtractLimits{}},
		{"relative symlink out", []entry{{name: "a/up", typ: tar.TypeSymlink, link: "../../.."}}, agent.ExtractLimits{}},
		{"symlink chain out", []entry{
			{name: "deep/", typ: tar.TypeDir},
			{name: "deep/x", typ: tar.TypeSymlink, link: ".."},
			{name: "deep/y", typ: tar.TypeSymlink, link: "x/../.."},
		}, agent.ExtractLimits{}},
		{"write through escaping symlink chain", []entry{
			{name: "deep/", typ: tar.TypeDir},
			{name: "deep/x", typ: tar.TypeSymlink, link: ".."},
			{name: "deep/y", typ: tar.TypeSymlink, link: "x/../.."},
			{name: "deep/y/pwned", typ: tar.TypeReg, body: "x"},
		}, agent.ExtractLimits{}},
		{"file replacing a symlink", []entry{
			{name: "l", typ: tar.TypeSymlink, link: "target"},
			{name: "l", typ: tar.TypeReg, body: "x"},
		}, agent.ExtractLimits{}},
		{"hard link out", []entry{{name: "h", typ: tar.TypeLink, link: "../outside"}}, agent.ExtractLimits{}},
		{"hard link absolute", []entry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}, agent.ExtractLimits{}},
		{"oversized total", []entry{
			{name: "a", typ: tar.TypeReg, body: "0123456789"},
			{name: "b", typ: tar.TypeReg, body: "0123456789"},
		}, agent.ExtractLimits{MaxBytes: 15}},
		{"too many entries", []entry{
			{name: "a", typ: tar.TypeReg}, {name: "b", typ: tar.TypeReg}, {name: "c", typ: tar.TypeReg},
		}, agent.ExtractLimits{MaxEntries: 2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dest := filepath.Join(parent, "ws")
			os.Mkdir(dest, 0o700)
			err := agent.ExtractTarGz(bytes.NewReader(tarGz(t, tc.entries)), dest, tc.lim)
			if err == nil {
				t.Fatal("archive accepted")
			}
			if !errors.Is(err, agent.ErrUnsafeArchive) && !errors.Is(err, os.ErrExist) {
				// os.Root refusals (path escapes) are errors too; they must
				// still have stopped the extraction.
				t.Logf("refused with: %v", err)
			}
			if _, err := os.Stat(filepath.Join(parent, "pwned")); err == nil {
				t.Fatal("a file was written outside the workspace")
			}
			if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
				t.Fatal("a file was written outside the workspace")
			}
		})
	}
}

func TestExtractKeepsAnOrdinaryProject(t *testing.T) {
	dest := t.TempDir()
	data := tarGz(t, []entry{
		{name: "./", typ: tar.TypeDir},
		{name: "package.json", typ: tar.TypeReg, body: `{"name":"app"}`},
		{name: "src/index.js", typ: tar.TypeReg, body: "console.log(1)"},
		{name: "tools/cli.js", typ: tar.TypeReg, body: "#!/usr/bin/env node"},
		{name: "bin/cli", typ: tar.TypeSymlink, link: "../tools/cli.js"},
		{name: "dangling", typ: tar.TypeSymlink, link: "build/out.js"},
		{name: "copy.js", typ: tar.TypeLink, link: "src/index.js"},
	})
	if err := agent.ExtractTarGz(bytes.NewReader(data), dest, agent.ExtractLimits{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"package.json": `{"name":"app"}`, "bin/cli": "#!/usr/bin/env node", "copy.js": "console.log(1)"} {
		b, err := os.ReadFile(filepath.Join(dest, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v", name, b, err)
		}
	}
}

func TestCheckLinksRefusesLinksLeavingACheckout(t *testing.T) {
	dir := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(dir, "passwd"))
	if err := agent.CheckLinks(dir); !errors.Is(err, agent.ErrUnsafeArchive) {
		t.Fatalf("CheckLinks = %v", err)
	}
}
