package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/integration/harness"
	"github.com/cleanroom-ci/cleanroom/internal/lab"
)

const laneAttrib = "attrib"

// Every egress event of the evil postinstall names the process that made
// it: node running the postinstall of @cleanroom-demo/telemetry-helper; the
// connections to the registry gateway name npm's process (or the
// postinstall's, trying the registry channel).
func TestAttributionNamesThePostinstallAndNpm(t *testing.T) {
	e := env(t)
	agentFor(t, e, "main", harness.AgentOptions{Labels: "lane=" + laneMain})
	ctx := timeout(t, 4*time.Minute)
	dir := copyExample(t, "evil-postinstall")
	editSpec(t, dir, func(s map[string]any) { s["labels"] = map[string]any{"lane": laneMain} })
	id := submit(ctx, t, e, dir)
	if j := waitTerminal(ctx, t, e, id, 3*time.Minute); j.State != api.StateSucceeded {
		t.Fatalf("job %s: %s (%s)", id, j.State, j.Reason)
	}
	raw, events := egress(ctx, t, e, "--job", id)
	var denied, fetches int
	for _, ev := range events {
		p := ev.Process
		switch {
		case ev.Verdict == api.VerdictDeny && (ev.Proto == "tcp" || ev.Proto == "udp" || ev.Proto == "dns"):
			denied++
			if p == nil || p.Comm != "node" || !strings.Contains(p.Cmdline, "postinstall.js") ||
				p.Package != "@cleanroom-demo/telemetry-helper" || p.PID <= 1 || !strings.Contains(p.Exe, "node") {
				t.Errorf("denied %s %s (%s): process %+v, want node running postinstall.js of @cleanroom-demo/telemetry-helper", ev.Proto, ev.Dst, ev.Domain, p)
			}
		case ev.Verdict == api.VerdictDeny && strings.HasPrefix(ev.Proto, "icmp"):
			// ping, a child of the postinstall: its own comm, the package's environment.
			if p != nil && p.Package != "@cleanroom-demo/telemetry-helper" {
				t.Errorf("denied %s %s: process %+v, want the postinstall's package", ev.Proto, ev.Dst, p)
			}
		case ev.Verdict == api.VerdictAllow && ev.Proto == "tcp" && gatewayFlow(ev):
			// npm's fetches, and the postinstall's own tries of the
			// registry channel (refused by the gateway at L7).
			switch {
			case p != nil && strings.Contains(p.Comm+" "+p.Cmdline, "npm"):
				fetches++
			case p != nil && p.Package == "@cleanroom-demo/telemetry-helper" && strings.Contains(p.Cmdline, "postinstall.js"):
			default:
				t.Errorf("connection to the registry gateway %s: process %+v, want npm's or the postinstall's", ev.Dst, p)
			}
		}
	}
	if denied < 8 || fetches == 0 {
		t.Errorf("%d denied tcp/udp/dns events and %d npm connections to the registry gateway, want at least 8 and 1:\n%s", denied, fetches, raw)
	}
	if t.Failed() {
		t.Logf("events:\n%s", raw)
	}
}

// Four sandboxes at once, each hammering connects: every event names the
// process of its own job (the job's marker is in its command line), none
// is left unattributed and none names another job's process.
func TestAttributionUnderConcurrencyNamesEachJobsOwnProcess(t *testing.T) {
	e := env(t)
	agentFor(t, e, "attrib", harness.AgentOptions{Labels: "lane=" + laneAttrib, Concurrency: 4})
	ctx := timeout(t, 4*time.Minute)
	const n, perJob = 4, 40
	type job struct {
		id, mark string
		port     int
	}
	jobs := make([]job, n)
	for i := range jobs {
		mark := fmt.Sprintf("attribmark%d%s", i, randHex(3))
		port := 22000 + i
		// perJob connects at once to a denied destination, then a pause so
		// that every denied packet is read while the sandbox runs.
		build := fmt.Sprintf(`node -e '/*%s*/const net=require("net");let left=%d;for(let k=0;k<%d;k++){const s=net.connect(%d,"%s");s.setTimeout(1000);const end=()=>{s.destroy();if(--left===0)console.log("done")};s.on("error",end);s.on("timeout",end);s.on("connect",end)}'; sleep 1.5`,
			mark, perJob, perJob, port, lab.ForbiddenIP)
		dir := minimalProject(t, map[string]any{"build": build, "timeout": "2m", "labels": map[string]any{"lane": laneAttrib}})
		jobs[i] = job{submit(ctx, t, e, dir), mark, port}
	}
	for _, j := range jobs {
		if s := waitTerminal(ctx, t, e, j.id, 3*time.Minute); s.State != api.StateSucceeded {
			t.Fatalf("job %s: %s (%s)", j.id, s.State, s.Reason)
		}
	}
	misattributed, unattributed, total := 0, 0, 0
	for _, j := range jobs {
		raw, events := egress(ctx, t, e, "--job", j.id)
		own := 0
		for _, ev := range events {
			host, port, ok := splitDst(ev.Dst)
			if !ok || host != lab.ForbiddenIP.String() || ev.Proto != "tcp" {
				continue
			}
			total++
			if port == j.port {
				own++
			}
			switch p := ev.Process; {
			case p == nil:
				unattributed++
				t.Errorf("job %s: event without a process: %+v", j.id, ev)
			case !strings.Contains(p.Cmdline, j.mark):
				misattributed++
				t.Errorf("job %s: event names another process: %+v", j.id, p)
			}
		}
		if own == 0 {
			t.Errorf("job %s: no event for its own connects:\n%s", j.id, raw)
		}
	}
	t.Logf("%d denied connect events of %d concurrent jobs: %d misattributed, %d unattributed", total, n, misattributed, unattributed)
}
