package netpolicy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// netnsDir is where named namespaces live, so `ip netns` sees ours.
const netnsDir = "/run/netns"

// Do runs fn inside the network namespace at path ("" = the caller's), the
// only way the project enters namespaces: tests, the lab and the registry
// harness use it too.
func Do(path string, fn func() error) error { return doInNS(path, fn) }

// doInNS runs fn on an OS thread switched into the network namespace at path
// ("" = the caller's namespace, fn runs directly). As in CNI's ns.Do, the
// thread stays locked, and so is discarded by the runtime, if switching back
// fails: a goroutine must never run in a namespace it did not ask for.
func doInNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", path, err)
	}
	defer target.Close()

	return onSwitchedThread(func() error {
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering namespace %s: %w", path, err)
		}
		return nil
	}, fn)
}

// openNS opens the network namespace at path, or the caller's own when path
// is empty. The caller's is read from this thread, not /proc/self: the
// process's main thread may at that moment be switched into a sandbox's
// namespace by a concurrent doInNS, while an unlocked goroutine's thread is
// always in the original one.
func openNS(path string) (*os.File, error) {
	if path != "" {
		return os.Open(path)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return os.Open("/proc/thread-self/ns/net")
}

// onSwitchedThread runs enter and then fn on a locked OS thread, and puts the
// thread back in its original network namespace afterwards. If enter fails
// nothing was switched and the thread is released; if switching back fails
// the thread stays locked, so the runtime discards it with this goroutine
// (CNI's ns.Do rule: a goroutine never runs in a namespace it did not ask for).
func onSwitchedThread(enter, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("switching back to the original namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ensureNetnsDir makes /run/netns a shared mount point, as `ip netns add` does,
// so bind mounts of namespaces propagate to mount namespaces created later.
func ensureNetnsDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind mounting %s: %w", netnsDir, err)
	}
	if err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", netnsDir, err)
	}
	return nil
}

// createNamedNS creates a new network namespace bind-mounted at
// /run/netns/name and returns its path. The creating thread is switched back
// to its own namespace (or left locked, and discarded, if that fails).
func createNamedNS(name string) (_ string, retErr error) {
	if err := ensureNetnsDir(); err != nil {
		return "", err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return "", fmt.Errorf("creating namespace file %s: %w", path, err)
	}
	f.Close()
	defer func() {
		if retErr != nil {
			_ = os.Remove(path)
		}
	}()

	err = onSwitchedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unsharing network namespace: %w", err)
		}
		return nil
	}, func() error {
		src := "/proc/self/task/" + strconv.Itoa(unix.Gettid()) + "/ns/net"
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mounting namespace to %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return path, nil
}

// deleteNamedNS unmounts and removes a namespace created by createNamedNS.
// A missing namespace is not an error, so teardown can be repeated.
func deleteNamedNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing namespace file %s: %w", path, err)
	}
	return nil
}

// writeSysctl writes a sysctl of the namespace the calling thread is in; call
// it inside doInNS.
func writeSysctl(name, value string) error {
	p := filepath.Join("/proc/sys", filepath.FromSlash(name))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s: %w", name, err)
	}
	return nil
}

// readSysctl reads a sysctl of the namespace the calling thread is in.
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", filepath.FromSlash(name)))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", name, err)
	}
	return string(b), nil
}
