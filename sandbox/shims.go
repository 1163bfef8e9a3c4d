package sandbox

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// strayShims lists the PIDs of containerd shims still serving container id
// in namespace ns of the containerd at address. A shim normally exits once
// its last task is deleted; under load containerd can lose one ("shim
// disconnected") that then lingers, so teardown and GC look for them.
func strayShims(address, ns, id string) []int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []int
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), "containerd-shim") {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		var gotID, gotNS, gotAddr string
		for i := 0; i+1 < len(args); i++ {
			switch args[i] {
			case "-id":
				gotID = args[i+1]
			case "-namespace":
				gotNS = args[i+1]
			case "-address":
				gotAddr = args[i+1]
			}
		}
		if gotID != id || gotNS != ns || gotAddr != address {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// reapStrayShims kills, after a grace period in which a healthy shim exits
// by itself, any shim still serving a container that no longer exists.
func (c *Client) reapStrayShims(id string, after time.Duration) {
	time.Sleep(after)
	for _, pid := range strayShims(c.cfg.Address, c.cfg.Namespace, id) {
		c.log.Warn("killing a containerd shim left behind by a deleted sandbox", "sandbox", id, "pid", pid)
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}
