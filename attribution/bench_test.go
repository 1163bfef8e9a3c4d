package attribution

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/internal/testutil"
)

// benchHelper is the process whose connects are measured: it runs in a
// cgroup of its own (hooked or not), connects CR_ATTR_N times to a
// loopback listener and prints the nanoseconds per connect+close.
func benchHelper() {
	n, _ := strconv.Atoi(os.Getenv("CR_ATTR_N"))
	addr := os.Getenv("CR_ATTR_TCP")
	bufio.NewReader(os.Stdin).ReadString('\n')
	start := time.Now()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		c.Close()
	}
	fmt.Println(time.Since(start).Nanoseconds() / int64(max(n, 1)))
	os.Exit(0)
}

// BenchmarkConnect measures TCP connect()+close() to a loopback listener
// from a process in a cgroup v2 of its own on the host, without and with
// the four hooks attached (and the agent reading their records): the cost
// attribution adds to each connect of a build.
func BenchmarkConnect(b *testing.B) {
	testutil.RequiresRoot(b)
	tr, err := Load()
	if err != nil {
		b.Skip(err)
	}
	defer tr.Close()
	ln := closingListener(b)
	for _, hooked := range []bool{false, true} {
		name := "unhooked"
		if hooked {
			name = "hooked"
		}
		b.Run(name, func(b *testing.B) {
			_, cgfd := testCgroup(b)
			cmd := exec.Command("/proc/self/exe", "-test.run=NONE")
			cmd.Env = append(os.Environ(), "CR_ATTR_HELPER=bench", "CR_ATTR_TCP="+ln.Addr().String(), "CR_ATTR_N="+strconv.Itoa(b.N))
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
			stdin, _ := cmd.StdinPipe()
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			w := tr.Watch(func(api.EgressEvent) {}, nil)
			if hooked {
				if err := w.AttachPID(uint32(cmd.Process.Pid)); err != nil {
					cmd.Process.Kill()
					cmd.Wait()
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			fmt.Fprintln(stdin, "go")
			line, _ := bufio.NewReader(out).ReadString('\n')
			b.StopTimer()
			cmd.Wait()
			w.Close(b.Context())
			ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
			if err != nil {
				b.Fatalf("helper said %q", line)
			}
			b.ReportMetric(float64(ns), "ns/connect")
		})
	}
}
