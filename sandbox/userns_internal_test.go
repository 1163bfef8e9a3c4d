package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cleanroom-ci/cleanroom/internal/testutil"
	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestUserNamespaceIsInTheSpecOnlyWithASlot(t *testing.T) {
	for _, userNS := range []bool{false, true} {
		o := &Options{Hostname: "h", workspaceMount: "/state/ws", Limits: DefaultLimits, userNS: userNS, userNSStart: 1 << 30}
		s := applyOpts(t, hardeningOpts(o, "/cleanroom/x")...)
		var user []specs.LinuxNamespace
		for _, n := range s.Linux.Namespaces {
			if n.Type == specs.UserNamespace {
				user = append(user, n)
			}
		}
		want := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1 << 30, Size: UserNSSize}}
		switch {
		case !userNS && (len(user) > 0 || len(s.Linux.UIDMappings) > 0 || len(s.Linux.GIDMappings) > 0):
			t.Errorf("without a slot: user namespaces %v, mappings %v %v", user, s.Linux.UIDMappings, s.Linux.GIDMappings)
		case userNS && (len(user) != 1 || user[0].Path != "" || !equalMaps(s.Linux.UIDMappings, want) || !equalMaps(s.Linux.GIDMappings, want)):
			t.Errorf("with a slot: user namespaces %v, uid map %v, gid map %v; want one new namespace mapping %v", user, s.Linux.UIDMappings, s.Linux.GIDMappings, want)
		}
		// The process IDs stay the container's: the mapping moves them.
		if s.Process.User.UID != BuildUID || s.Process.User.GID != BuildGID {
			t.Errorf("process user %+v", s.Process.User)
		}
	}
}

func equalMaps(a, b []specs.LinuxIDMapping) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The image's files move into the slot's range, set-id bits survive the
// chown, a symlink is changed itself and never its target, a second pass
// changes nothing, and an ID the range cannot map is an error.
func TestShiftOwnersMovesTheImageIntoTheRange(t *testing.T) {
	testutil.RequiresRoot(t)
	const start = 1 << 30
	outside := filepath.Join(t.TempDir(), "host-file")
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(outside, nil, 0o644))
	must(os.WriteFile(filepath.Join(root, "rootfile"), nil, 0o644))
	must(os.Mkdir(filepath.Join(root, "home"), 0o755))
	must(os.Chown(filepath.Join(root, "home"), BuildUID, BuildGID))
	must(os.WriteFile(filepath.Join(root, "suid"), nil, 0o755))
	must(os.Chmod(filepath.Join(root, "suid"), 0o4755|os.ModeSetuid))
	must(os.Symlink(outside, filepath.Join(root, "link")))

	for pass := 1; pass <= 2; pass++ {
		must(shiftOwners(root, start))
		for name, want := range map[string]uint32{"": start, "rootfile": start, "home": start + BuildUID, "suid": start, "link": start} {
			var st unix.Stat_t
			must(unix.Lstat(filepath.Join(root, name), &st))
			if st.Uid != want || st.Gid != want {
				t.Errorf("pass %d: %q owned by %d:%d, want %d", pass, name, st.Uid, st.Gid, want)
			}
			if name == "suid" && st.Mode&unix.S_ISUID == 0 {
				t.Errorf("pass %d: the setuid bit was lost", pass)
			}
		}
	}
	var st unix.Stat_t
	must(unix.Stat(outside, &st))
	if st.Uid != 0 {
		t.Errorf("the symlink's target outside the image was chowned to %d", st.Uid)
	}

	must(os.WriteFile(filepath.Join(root, "unmappable"), nil, 0o644))
	must(os.Chown(filepath.Join(root, "unmappable"), 70000, 0))
	if err := shiftOwners(root, start); err == nil || !strings.Contains(err.Error(), "70000") {
		t.Errorf("an ID above 65535: %v", err)
	}
}

func TestSysfsFromReplacesSysWithANonRecursiveReadOnlyBind(t *testing.T) {
	s := applyOpts(t, func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
		s.Mounts = []specs.Mount{{Destination: "/proc", Type: "proc"}, {Destination: "/sys", Type: "sysfs", Source: "sysfs"}, {Destination: "/sys/fs/cgroup", Type: "cgroup"}}
		return nil
	}, WithSysfsFrom("/state/cr-x/sys"))
	if len(s.Mounts) != 3 || s.Mounts[1].Destination != "/sys" || s.Mounts[2].Destination != "/sys/fs/cgroup" {
		t.Fatalf("mounts %+v: want /sys replaced in place, before /sys/fs/cgroup", s.Mounts)
	}
	m := s.Mounts[1]
	if m.Type != "bind" || m.Source != "/state/cr-x/sys" || strings.Join(m.Options, ",") != "bind,ro,nosuid,nodev,noexec" {
		t.Errorf("/sys = %+v, want a read-only, non-recursive bind of the host's sysfs of the namespace", m)
	}
}
