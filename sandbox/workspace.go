package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// prepareWorkspace gives the sandbox a workspace of its own under its state
// dir, owned by the build user (its host IDs: see Sandbox.BuildUser), with a
// copy of src. With a disk limit the
// workspace is a loop-mounted ext4 filesystem of exactly that size, so a job
// that fills it gets ENOSPC and the host's disk is unaffected.
func (s *Sandbox) prepareWorkspace(ctx context.Context, src string, diskBytes int64) error {
	s.ws = filepath.Join(s.stateDir, "workspace")
	if err := os.Mkdir(s.ws, 0o755); err != nil {
		return fmt.Errorf("creating workspace: %w", err)
	}
	if diskBytes > 0 {
		img := filepath.Join(s.stateDir, "disk.img")
		f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("creating workspace disk image: %w", err)
		}
		err = f.Truncate(diskBytes)
		f.Close()
		if err != nil {
			return fmt.Errorf("sizing workspace disk image: %w", err)
		}
		if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
			"-E", "nodiscard,lazy_itable_init=1,root_owner="+strconv.Itoa(s.uid)+":"+strconv.Itoa(s.gid), img).CombinedOutput(); err != nil {
			return fmt.Errorf("formatting workspace disk (mkfs.ext4): %w: %s", err, strings.TrimSpace(string(out)))
		}
		if out, err := exec.CommandContext(ctx, "mount", "-o", "loop,nosuid,nodev", img, s.ws).CombinedOutput(); err != nil {
			return fmt.Errorf("mounting workspace disk: %w: %s", err, strings.TrimSpace(string(out)))
		}
		s.disk = true
		_ = os.Remove(filepath.Join(s.ws, "lost+found"))
	}
	if err := os.Chown(s.ws, s.uid, s.gid); err != nil {
		return fmt.Errorf("handing workspace to the build user: %w", err)
	}
	if src == "" {
		return nil
	}
	if err := copyTree(src, s.ws, s.uid, s.gid); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("%w: copying the workspace: the source does not fit in the %d-byte disk limit", ErrInvalidOptions, diskBytes)
		}
		return fmt.Errorf("copying workspace: %w", err)
	}
	return nil
}

// copyTree copies regular files, directories and symlinks from src into dst,
// owned by uid:gid. Anything else (devices, sockets, fifos) is refused: a
// workspace never needs one.
func copyTree(src, dst string, uid, gid int) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch mode := info.Mode(); {
		case mode.IsDir():
			if err := os.Mkdir(target, mode.Perm()|0o700); err != nil {
				return err
			}
		case mode&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		case mode.IsRegular():
			if err := copyFile(p, target, mode.Perm()|0o600); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: %w: special files (%s) are not allowed in a workspace", rel, ErrInvalidOptions, mode.Type())
		}
		return os.Lchown(target, uid, gid)
	})
}

func copyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// diskFull reports whether the workspace filesystem (only with a disk limit)
// has run out of space or inodes.
func (s *Sandbox) diskFull() bool {
	if !s.disk {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.ws, &st); err != nil {
		return false
	}
	return st.Bavail*uint64(st.Bsize) < 1<<20 || st.Ffree == 0
}

// removeStateDir unmounts whatever is mounted below dir (the workspace
// filesystem; the loop device is released with it) and removes dir.
func removeStateDir(dir string) error {
	if dir == "" {
		return nil
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, m := range mountsUnder(dir) {
		if err := unix.Unmount(m, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			if err2 := unix.Unmount(m, unix.MNT_DETACH); err2 != nil {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
			}
		}
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// removeCgroup removes the sandbox's cgroup directories if runc left any
// (it normally removes them with the container). Only empty cgroups can be
// removed; a populated one is an error worth reporting.
func removeCgroup(path string) error {
	if path == "" {
		return nil
	}
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	var errs []error
	for _, r := range roots {
		d := filepath.Join(r, path)
		if _, err := os.Stat(d); err != nil {
			continue
		}
		err := unix.Rmdir(d)
		if errors.Is(err, unix.EBUSY) {
			// Processes a crashed runtime left behind: they belong to
			// the sandbox, so they go with it.
			killCgroup(d)
			err = unix.Rmdir(d)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// ProcessOwner is this process's identity as recorded in owner labels and
// leases ("pid:starttime"): unlike a bare pid it is never reused.
func ProcessOwner() string { return selfOwner() }

// OwnerAlive reports whether the process a ProcessOwner string names still
// runs.
func OwnerAlive(owner string) bool { return ownerAlive(owner) }

// killCgroup SIGKILLs every process in the cgroup directory d (thawing it
// first if a freezer froze it) and waits up to 5 s for it to empty.
func killCgroup(d string) {
	_ = os.WriteFile(filepath.Join(d, "freezer.state"), []byte("THAWED"), 0o644)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			return
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// selfOwner is this process's identity for the cleanroom.owner label.
func selfOwner() string {
	pid := os.Getpid()
	return fmt.Sprintf("%d:%s", pid, procStartTime(pid))
}

// ownerAlive reports whether the process named by a cleanroom.owner label
// still runs (same pid and same start time, so a reused pid does not count).
func ownerAlive(owner string) bool {
	pidS, start, ok := strings.Cut(owner, ":")
	if !ok {
		return false
	}
	pid, err := strconv.Atoi(pidS)
	if err != nil || pid <= 0 {
		return false
	}
	st := procStartTime(pid)
	return st != "" && st == start
}

func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name may contain spaces: fields start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return ""
	}
	return f[19] // field 22 overall: starttime
}
