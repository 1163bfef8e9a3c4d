package attribution

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cleanroom-ci/cleanroom/api"
)

// MaxCmdline is the most of a command line an event carries, in bytes
// (after redaction).
const MaxCmdline = 256

// procReader looks processes up in /proc (root, a directory in tests).
type procReader struct {
	root   string
	redact func(string) string
}

// read returns what /proc says about pid right now: comm of the process
// (its thread group leader, where the record has the calling thread's),
// executable, command line (redacted, truncated) and npm_package_name of
// its environment. cgroup is the v2 cgroup the record came from: a pid that
// is no longer in it was reused by another process, and only pid and comm
// (from the record) are kept, as for a process that is gone.
func (pr procReader) read(pid uint32, comm, cgroup string) *api.EgressProcess {
	p := &api.EgressProcess{PID: int(pid), Comm: comm}
	dir := filepath.Join(pr.root, strconv.FormatUint(uint64(pid), 10))
	if cgroup != "" {
		got, err := v2CgroupOf(filepath.Join(dir, "cgroup"))
		if err != nil || got != cgroup {
			return p
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
		if c := strings.TrimRight(string(b), "\n"); c != "" {
			p.Comm = c
		}
	}
	if exe, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
		p.Exe = exe
	}
	if b, err := readAtMost(filepath.Join(dir, "cmdline"), 64<<10); err == nil {
		cmd := strings.TrimSpace(strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
		if pr.redact != nil {
			cmd = pr.redact(cmd)
		}
		p.Cmdline = truncate(cmd, MaxCmdline)
	}
	p.Package = npmPackage(filepath.Join(dir, "environ"))
	return p
}

// npmPackage returns npm_package_name from an environ file, reading no
// other variable into memory beyond the scanner's buffer (and never logging
// any).
func npmPackage(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	sc.Buffer(make([]byte, 0, 4096), 256<<10)
	sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
		if i := bytes.IndexByte(data, 0); i >= 0 {
			return i + 1, data[:i], nil
		}
		if atEOF && len(data) > 0 {
			return len(data), data, nil
		}
		return 0, nil, nil
	})
	const key = "npm_package_name="
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte(key)); ok {
			return truncate(string(v), 214) // npm's longest package name
		}
	}
	return ""
}

func readAtMost(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// truncate cuts s to at most n bytes at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	const mark = "…"
	cut := n - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// v2CgroupOf returns the cgroup v2 path ("0::<path>") in a /proc/<pid>/cgroup
// file.
func v2CgroupOf(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest, nil
		}
	}
	return "", errNoV2Cgroup
}
