package attribution

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func rec(pid uint32, proto, dst string, at time.Duration) Record {
	return Record{PID: pid, Comm: "p" + string(rune('0'+pid%10)), Proto: proto, Dst: netip.MustParseAddrPort(dst), Time: t0.Add(at)}
}

func TestFindJoinsByProtoDestinationAndTime(t *testing.T) {
	recs := []Record{
		rec(1, "tcp", "10.0.0.1:443", 0),
		rec(2, "tcp", "10.0.0.1:443", time.Second),
		rec(3, "udp", "10.0.0.1:443", 2*time.Second),
		rec(4, "udp", "10.0.0.53:53", 0),
		rec(5, "tcp", "[fd00::1]:80", 0),
		rec(6, "icmp", "10.0.0.9:0", 0),
		rec(7, "tcp", "10.0.0.2:80", 10*time.Second),
		rec(8, "udp", "10.0.0.54:53", 5*time.Second),
		rec(9, "udp", "10.0.0.54:53", 5*time.Second+slack/2),
		rec(10, "udp", "10.0.0.54:53", 5*time.Second+slack/2+time.Millisecond),
	}
	ev := func(proto, dst string, at time.Duration) api.EgressEvent {
		return api.EgressEvent{Proto: proto, Dst: dst, Time: t0.Add(at)}
	}
	for _, c := range []struct {
		name string
		ev   api.EgressEvent
		want uint32 // 0 = none
	}{
		{"newest record of that tcp destination before the event", ev("tcp", "10.0.0.1:443", 3*time.Second), 2},
		{"a record after the event is not its cause", ev("tcp", "10.0.0.1:443", 500*time.Millisecond), 1},
		{"within the slack, the record counts", ev("tcp", "10.0.0.2:80", 10*time.Second-slack/2), 7},
		{"udp does not match a tcp record", ev("udp", "10.0.0.1:443", 3*time.Second), 3},
		{"other port", ev("tcp", "10.0.0.1:444", 3*time.Second), 0},
		{"dns to the responder matches the udp query", ev("dns", "10.0.0.53:53", time.Second), 4},
		{"a record before the event wins over a newer one within the slack", ev("dns", "10.0.0.54:53", 5*time.Second+time.Millisecond), 8},
		{"without one before, the first within the slack", ev("dns", "10.0.0.54:53", 5*time.Second-time.Millisecond), 8},
		{"ipv6", ev("tcp", "[fd00::1]:80", time.Second), 5},
		{"icmp by address", ev("icmp", "10.0.0.9", time.Second), 6},
		{"older than the window", ev("tcp", "10.0.0.1:443", Window+2*time.Second), 0},
		{"audit events are never joined", api.EgressEvent{Proto: "audit", Time: t0}, 0},
		{"the gateway's http events are not joined", ev("http", "10.0.0.1:443", 3*time.Second), 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := find(recs, c.ev)
			switch {
			case c.want == 0 && r != nil:
				t.Errorf("joined to pid %d, want none", r.PID)
			case c.want != 0 && r == nil:
				t.Errorf("no record, want pid %d", c.want)
			case c.want != 0 && r.PID != c.want:
				t.Errorf("joined to pid %d, want %d", r.PID, c.want)
			}
		})
	}
}

func TestDecodeRecord(t *testing.T) {
	b := make([]byte, recordSize)
	binary.LittleEndian.PutUint64(b[0:], uint64(4242)<<32|4243)
	binary.LittleEndian.PutUint64(b[8:], 1000)
	binary.LittleEndian.PutUint64(b[16:], 77)
	copy(b[24:], "node")
	// ::ffff:10.1.2.3 from a dual-stack socket reads as 10.1.2.3.
	copy(b[40:], netip.MustParseAddr("::ffff:10.1.2.3").AsSlice())
	binary.BigEndian.PutUint16(b[56:], 8443)
	b[60], b[61], b[62] = 6, 6, hookConnect
	r, err := decodeRecord(b, func(ns uint64) time.Time { return t0.Add(time.Duration(ns)) })
	if err != nil {
		t.Fatal(err)
	}
	want := Record{PID: 4242, TID: 4243, Comm: "node", Time: t0.Add(1000), Cgroup: 77, Proto: "tcp", Dst: netip.MustParseAddrPort("10.1.2.3:8443")}
	if r != want {
		t.Errorf("decoded %+v, want %+v", r, want)
	}
	if _, err := decodeRecord(b[:10], nil); err == nil {
		t.Error("a short record decoded")
	}
}

// fakeProc makes /proc/<pid> with the files the agent reads.
func fakeProc(t *testing.T, root string, pid, comm, cmdline, environ, cgroup string) {
	t.Helper()
	dir := filepath.Join(root, pid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"comm": comm + "\n", "cmdline": cmdline, "environ": environ, "cgroup": "0::" + cgroup + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/usr/local/bin/node", filepath.Join(dir, "exe")); err != nil {
		t.Fatal(err)
	}
}

func TestProcReadsOnlyWhatItNeeds(t *testing.T) {
	root := t.TempDir()
	long := strings.Repeat("x", 400)
	fakeProc(t, root, "10", "node", "node\x00postinstall.js\x00--token=hunter2-secret\x00"+long+"\x00",
		"PATH=/bin\x00npm_package_name=@cleanroom-demo/telemetry-helper\x00NPM_TOKEN=abc\x00", "/cleanroom/cr-j-1")
	fakeProc(t, root, "11", "bash", "bash\x00", "", "/other")
	pr := procReader{root: root, redact: func(s string) string { return strings.ReplaceAll(s, "hunter2-secret", "[REDACTED]") }}

	p := pr.read(10, "libuv-worker", "/cleanroom/cr-j-1")
	if p.PID != 10 || p.Comm != "node" || p.Exe != "/usr/local/bin/node" || p.Package != "@cleanroom-demo/telemetry-helper" {
		t.Errorf("process %+v", p)
	}
	if !strings.HasPrefix(p.Cmdline, "node postinstall.js --token=[REDACTED] xxx") || len(p.Cmdline) > MaxCmdline || !strings.HasSuffix(p.Cmdline, "…") {
		t.Errorf("cmdline %q (%d bytes): want redacted, cut to %d bytes with a mark", p.Cmdline, len(p.Cmdline), MaxCmdline)
	}
	// A pid now in another cgroup was reused: only the record's pid and comm.
	if p := pr.read(11, "node", "/cleanroom/cr-j-1"); *p != (api.EgressProcess{PID: 11, Comm: "node"}) {
		t.Errorf("reused pid: %+v, want only pid and comm", p)
	}
	// A process already gone: the same.
	if p := pr.read(12, "node", "/cleanroom/cr-j-1"); *p != (api.EgressProcess{PID: 12, Comm: "node"}) {
		t.Errorf("gone: %+v, want only pid and comm", p)
	}
}

// A pid reused while it is read (the sandbox process exited and a host
// process got its number) never lends the host process's command line or
// environment: read keeps the process it opened, and checks its cgroup
// after reading.
func TestProcNeverReadsAPidReusedByAHostProcess(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "10", "node", "node\x00install.js\x00", "npm_package_name=left-pad\x00", "/cleanroom/cr-j-1")
	host := t.TempDir()
	fakeProc(t, host, "10", "sshd", "sshd: admin --password=host-secret\x00", "npm_package_name=host-package\x00", "/system.slice/sshd.service")
	defer func(f func(string)) { procOpened = f }(procOpened)
	procOpened = func(dir string) {
		// The sandbox process is gone, the host one takes its place.
		if err := os.Rename(dir, dir+".gone"); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(host, "10"), dir); err != nil {
			t.Fatal(err)
		}
	}
	p := procReader{root: root}.read(10, "node", "/cleanroom/cr-j-1")
	if strings.Contains(p.Cmdline, "host-secret") || strings.Contains(p.Comm, "sshd") || p.Package == "host-package" {
		t.Fatalf("read the host process that reused the pid: %+v", p)
	}
	// Without a cgroup to check against, nothing is read.
	procOpened = func(string) {}
	if p := (procReader{root: root}).read(10, "node", ""); *p != (api.EgressProcess{PID: 10, Comm: "node"}) {
		t.Errorf("read without a cgroup: %+v, want only pid and comm", p)
	}
}

// Everything a sandbox process chooses about itself reaches the event
// redacted, in visible form and bounded: a package name with a newline and
// an escape sequence, or a job secret, does not reach a terminal or a log
// line as such.
func TestProcTextIsRedactedAndVisible(t *testing.T) {
	root := t.TempDir()
	const secret = "hunter2-secret"
	fakeProc(t, root, "10", "no\x1b[2Jde", "node\x00a\nb\x00",
		"npm_package_name=evil\n{\"verdict\":\"allow\"}\x1b]0;x\x07"+secret+"\x00", "/cleanroom/cr-j-1")
	if err := os.Remove(filepath.Join(root, "10", "exe")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/tmp/\x1b[31m"+secret+"/"+strings.Repeat("d", 3000), filepath.Join(root, "10", "exe")); err != nil {
		t.Fatal(err)
	}
	pr := procReader{root: root, redact: func(s string) string { return strings.ReplaceAll(s, secret, "[REDACTED]") }}
	p := pr.read(10, "x\ny"+secret[:8], "/cleanroom/cr-j-1")
	for name, v := range map[string]string{"comm": p.Comm, "exe": p.Exe, "cmdline": p.Cmdline, "package": p.Package} {
		if api.HasUnsafeRune(v) || strings.Contains(v, secret) {
			t.Errorf("%s %q: want no control characters and no secret", name, v)
		}
	}
	if !strings.Contains(p.Package, "[REDACTED]") || !strings.HasPrefix(p.Package, "evil") {
		t.Errorf("package %q: want the name shown, with the secret redacted", p.Package)
	}
	if len(p.Exe) > maxExe {
		t.Errorf("exe of %d bytes, want at most %d", len(p.Exe), maxExe)
	}
	// The record's comm (kept when the process is gone) is cleaned too.
	if p := pr.read(12, "x\ny", "/cleanroom/cr-j-1"); api.HasUnsafeRune(p.Comm) {
		t.Errorf("record comm %q", p.Comm)
	}
}

func TestTruncateKeepsRunes(t *testing.T) {
	s := truncate(strings.Repeat("é", 200), 11)
	if len(s) > 11 || !strings.HasSuffix(s, "…") || strings.ContainsRune(s, '\uFFFD') {
		t.Errorf("truncate: %q", s)
	}
}

// A Watch delivers events in order; one without a record waits at most
// MaxWait, and a record that arrives while its event waits is used.
func TestWatchDeliversInOrderWithABoundedWait(t *testing.T) {
	root := t.TempDir()
	tr := &Tracer{procs: procReader{root: root}, watches: map[uint64]*Watch{}}
	got := make(chan api.EgressEvent, 10)
	w := tr.Watch(func(ev api.EgressEvent) { got <- ev }, nil)
	w.cgroups[5] = "/cleanroom/cr-x"

	start := time.Now()
	w.OnEvent(api.EgressEvent{Time: start, Proto: "tcp", Dst: "10.0.0.1:1", Verdict: "deny"}) // no record ever
	w.OnEvent(api.EgressEvent{Time: start, Proto: "tcp", Dst: "10.0.0.2:2", Verdict: "deny"}) // its record comes late
	w.OnEvent(api.EgressEvent{Time: start, Proto: "audit", Verdict: "deny"})                  // never joined
	time.Sleep(20 * time.Millisecond)
	w.record(Record{PID: 99, Comm: "node", Cgroup: 5, Proto: "tcp", Dst: netip.MustParseAddrPort("10.0.0.2:2"), Time: start.Add(-time.Millisecond)})

	first, second, third := <-got, <-got, <-got
	elapsed := time.Since(start)
	if first.Dst != "10.0.0.1:1" || second.Dst != "10.0.0.2:2" || third.Proto != "audit" {
		t.Fatalf("order: %s, %s, %s", first.Dst, second.Dst, third.Proto)
	}
	if first.Process != nil || third.Process != nil {
		t.Errorf("attributed without a record: %+v %+v", first.Process, third.Process)
	}
	if second.Process == nil || second.Process.PID != 99 || second.Process.Comm != "node" {
		t.Errorf("late record not used: %+v", second.Process)
	}
	if elapsed < MaxWait-10*time.Millisecond || elapsed > 3*MaxWait {
		t.Errorf("delivery took %s, want about MaxWait (%s): each event waits from its own arrival", elapsed, MaxWait)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// After Close, events pass straight through.
	w.OnEvent(api.EgressEvent{Proto: "tcp", Dst: "10.0.0.2:2"})
	if ev := <-got; ev.Process != nil {
		t.Errorf("after close: %+v", ev.Process)
	}
}

func TestWatchWithoutTracerPassesThrough(t *testing.T) {
	var tr *Tracer
	var got []api.EgressEvent
	w := tr.Watch(func(ev api.EgressEvent) { got = append(got, ev) }, nil)
	if err := w.AttachPID(1); err != nil {
		t.Fatal(err)
	}
	w.OnEvent(api.EgressEvent{Proto: "tcp"})
	if len(got) != 1 || got[0].Process != nil {
		t.Errorf("got %+v", got)
	}
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// One sandbox whose /proc lookups are stuck (a flood of processes, a slow
// /proc) does not hold up the records of another: the tracer's one reader
// hands records over without waiting.
func TestASlowSandboxDoesNotDelayAnothersRecords(t *testing.T) {
	root := t.TempDir()
	fakeProc(t, root, "10", "node", "node\x00", "", "/cleanroom/cr-a")
	fakeProc(t, root, "20", "node", "node\x00", "", "/cleanroom/cr-b")
	stuck := make(chan struct{})
	defer func(f func(string)) { procOpened = f }(procOpened)
	procOpened = func(dir string) {
		if filepath.Base(dir) == "10" {
			<-stuck
		}
	}
	tr := &Tracer{procs: procReader{root: root}, watches: map[uint64]*Watch{}}
	a := tr.Watch(func(api.EgressEvent) {}, nil)
	b := tr.Watch(func(api.EgressEvent) {}, nil)
	a.cgroups[1], b.cgroups[2] = "/cleanroom/cr-a", "/cleanroom/cr-b"
	tr.watches[1], tr.watches[2] = a, b
	defer func() {
		close(stuck)
		a.Close(context.Background())
		b.Close(context.Background())
	}()

	dst := netip.MustParseAddrPort("10.0.0.1:443")
	flooded := make(chan struct{})
	go func() {
		defer close(flooded)
		for i := 0; i < 10*maxLookups; i++ {
			tr.dispatch(Record{PID: 10, Cgroup: 1, Proto: "tcp", Dst: dst, Time: time.Now()})
		}
		tr.dispatch(Record{PID: 20, Cgroup: 2, Proto: "tcp", Dst: dst, Time: time.Now()})
	}()
	select {
	case <-flooded:
	case <-time.After(5 * time.Second):
		t.Fatal("the reader waited for a sandbox's stuck lookups")
	}
	p := b.idx.wait(api.EgressEvent{Time: time.Now(), Proto: "tcp", Dst: dst.String()}, time.Now().Add(5*time.Second))
	if p == nil || p.PID != 20 {
		t.Fatalf("the other sandbox's record: %+v", p)
	}
}

// Events that pile up behind a slow consumer are delivered, in order,
// without searching for their record once more than maxBacklog wait: the
// queue drains at the consumer's pace, whatever the flood.
func TestWatchStopsSearchingBeyondTheBacklog(t *testing.T) {
	tr := &Tracer{procs: procReader{root: t.TempDir()}, watches: map[uint64]*Watch{}}
	release := make(chan struct{})
	var got []api.EgressEvent
	var mu sync.Mutex
	w := tr.Watch(func(ev api.EgressEvent) {
		mu.Lock()
		first := len(got) == 0
		got = append(got, ev)
		mu.Unlock()
		if first {
			<-release
		}
	}, nil)
	now := time.Now()
	dst := netip.MustParseAddrPort("10.0.0.1:443")
	w.idx.add(Record{PID: 7, Comm: "node", Proto: "tcp", Dst: dst, Time: now.Add(-time.Millisecond)})
	const n = 3 * maxBacklog
	for i := 0; i < n; i++ {
		w.OnEvent(api.EgressEvent{Time: now, Proto: "tcp", Dst: dst.String(), Rule: strconv.Itoa(i)})
		if i == 0 {
			for { // the first one is being emitted (and held)
				mu.Lock()
				k := len(got)
				mu.Unlock()
				if k == 1 {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	close(release)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("delivered %d events, want %d", len(got), n)
	}
	attributed := 0
	for i, ev := range got {
		if ev.Rule != strconv.Itoa(i) {
			t.Fatalf("event %d delivered as %s: out of order", i, ev.Rule)
		}
		if ev.Process != nil {
			attributed++
		}
	}
	if attributed == 0 || attributed > maxBacklog+1 {
		t.Errorf("%d of %d events attributed, want at most %d (those within the backlog)", attributed, n, maxBacklog+1)
	}
}
