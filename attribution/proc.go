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

	"golang.org/x/sys/unix"

	"github.com/cleanroom-ci/cleanroom/api"
)

// MaxCmdline is the most of a command line an event carries, in bytes
// (after redaction).
const MaxCmdline = 256

// maxExe bounds an executable's path in an event (a sandbox can make one
// of PATH_MAX bytes, and a sandbox's index keeps thousands of records).
const maxExe = 512

// procReader looks processes up in /proc (root, a directory in tests).
type procReader struct {
	root   string
	redact func(string) string
}

// procOpened is called with the directory read opened (a test seam: it
// lets a test put another process at the path while read holds the old).
var procOpened = func(dir string) {}

// read returns what /proc says about pid right now: comm of the process
// (its thread group leader, where the record has the calling thread's),
// executable, command line (redacted, truncated) and npm_package_name of
// its environment. cgroup is the v2 cgroup the record came from.
//
// The pid may have been reused by the time read runs (the process exited
// and another, perhaps a host process, got its number), so everything is
// read through one descriptor of /proc/<pid>, which stays with the process
// it named when opened, and that process's cgroup is read last: if it is
// not cgroup (or cgroup is unknown), what was read is dropped and only pid
// and comm (from the record) are kept, as for a process that is gone.
// Every text is redacted and shown in visible form (the sandbox chooses
// them: a newline or an escape sequence must not reach a terminal or a log
// line as such).
func (pr procReader) read(pid uint32, comm, cgroup string) *api.EgressProcess {
	p := &api.EgressProcess{PID: int(pid), Comm: pr.clean(comm, 16)}
	if cgroup == "" {
		return p
	}
	dir := filepath.Join(pr.root, strconv.FormatUint(uint64(pid), 10))
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return p
	}
	defer unix.Close(dfd)
	procOpened(dir)
	got := *p
	if b, err := readAt(dfd, "comm", 64); err == nil {
		if c := strings.TrimRight(string(b), "\n"); c != "" {
			got.Comm = pr.clean(c, 16)
		}
	}
	if exe, err := readlinkAt(dfd, "exe"); err == nil {
		got.Exe = pr.clean(exe, maxExe)
	}
	if b, err := readAt(dfd, "cmdline", 64<<10); err == nil {
		cmd := strings.TrimSpace(strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "))
		got.Cmdline = pr.clean(cmd, MaxCmdline)
	}
	if f, err := openAt(dfd, "environ"); err == nil {
		got.Package = pr.clean(npmPackage(f), 214) // npm's longest package name
		f.Close()
	}
	if b, err := readAt(dfd, "cgroup", 64<<10); err != nil || v2Cgroup(b) != cgroup {
		return p
	}
	return &got
}

// clean redacts s, shows its unsafe runes and invalid bytes in visible
// form, and cuts it to n bytes.
func (pr procReader) clean(s string, n int) string {
	if pr.redact != nil {
		s = pr.redact(s)
	}
	if api.HasUnsafeRune(s) || !utf8.ValidString(s) {
		s = api.Printable(s)
	}
	return truncate(s, n)
}

// openAt opens name in the directory dfd, following no symlink.
func openAt(dfd int, name string) (*os.File, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "openat", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readAt reads at most n bytes of name in the directory dfd.
func readAt(dfd int, name string, n int64) ([]byte, error) {
	f, err := openAt(dfd, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// readlinkAt returns the text of the symlink name in dfd (never following
// it: /proc/<pid>/exe of a sandbox process names a file of its mount
// namespace).
func readlinkAt(dfd int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// npmPackage returns npm_package_name from an environ file, reading no
// other variable into memory beyond the scanner's buffer (and never logging
// any).
func npmPackage(f io.Reader) string {
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
			return string(v)
		}
	}
	return ""
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
	if cg := v2Cgroup(b); cg != "" {
		return cg, nil
	}
	return "", errNoV2Cgroup
}

// v2Cgroup returns the path of the "0::<path>" line of a cgroup file ("" if
// none).
func v2Cgroup(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest
		}
	}
	return ""
}
