// Command demo is `make demo`: it brings up the whole product on this
// machine — a lab network with no route out, the internal registry, a
// coordinator and a registered agent — runs the four example scenarios
// through the real CLI, shows what a user would see, checks each outcome,
// prints the web console's address (relayed to this machine's loopback)
// with an audit token that opens it, and removes everything it made (with
// KEEP=1, after Ctrl-C).
//
// It expects a running containerd with the node image (make demo starts
// them) and the cleanroom binary (-bin).
package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/cleanroom-ci/cleanroom/integration/harness"
)

// deploySecret is what the malware is after; it must never reach a build.
const deploySecret = "dpl_live_4f9d2c7be1a84d0f9c3e"

// encodings are the forms of a secret that must never appear in output.
func encodings(v string) map[string]string {
	return map[string]string{
		"raw":    v,
		"base64": strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(v)), "="),
		"url":    url.QueryEscape(v),
		"hex":    hex.EncodeToString([]byte(v)),
	}
}

type phase struct {
	name string
	took time.Duration
	ok   bool
	note string
}

func main() {
	bin := flag.String("bin", "bin/cleanroom", "cleanroom binary")
	repo := flag.String("repo", ".", "checkout with examples/")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *repo); err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
}

func banner(s string) {
	fmt.Printf("\n\033[1m== %s\033[0m\n", s)
}

func run(ctx context.Context, bin, repo string) (retErr error) {
	bin, _ = filepath.Abs(bin)
	repo, _ = filepath.Abs(repo)
	var phases []phase
	record := func(name string, start time.Time, ok bool, note string) {
		phases = append(phases, phase{name, time.Since(start), ok, note})
	}
	summary := func() {
		banner("summary")
		for _, p := range phases {
			mark := "ok  "
			if !p.ok {
				mark = "FAIL"
			}
			fmt.Printf("  %s %-44s %6.1fs  %s\n", mark, p.name, p.took.Seconds(), p.note)
		}
	}

	banner("starting: lab network, internal registry, coordinator, agent")
	t := time.Now()
	env, err := harness.Start(ctx, harness.Options{
		Bin: bin, Repo: repo, Containerd: os.Getenv("CLEANROOM_CONTAINERD_ADDRESS"), Name: "demo",
		Progress: os.Stdout,
		// The deploy secret is also in the agent's own environment: a build
		// must still never see it.
		AgentEnv: []string{"DEPLOY_TOKEN=" + deploySecret},
	})
	if err != nil {
		summary()
		return err
	}
	// At the end: the summary, then (after a run whose checks all passed)
	// the console's address and a token that opens it, then with KEEP=1 a
	// wait for Ctrl-C; then everything is stopped and removed, the
	// console's relay included.
	keep := os.Getenv("KEEP") == "1"
	var consoleBase string
	defer func() {
		summary()
		if retErr == nil {
			consoleBase, retErr = showConsole(ctx, env, keep)
		}
		if keep && retErr == nil {
			fmt.Printf("The API answers on the same address: %s jobs --url %s --token %s\nPress Ctrl-C to stop and clean up.\n",
				bin, consoleBase, env.Admin)
			<-ctx.Done()
		}
		t := time.Now()
		fmt.Println()
		err := env.Close()
		if err != nil {
			fmt.Printf("stopping and cleaning up failed after %.1fs: %v\n", time.Since(t).Seconds(), err)
			if retErr == nil {
				retErr = err
			}
			return
		}
		fmt.Printf("stopped everything and cleaned up (lab namespaces, registry, coordinator, agent, console relay) in %.1fs\n", time.Since(t).Seconds())
	}()
	// The registry's real read-only token is the agent's upstream credential
	// (registry_token_secret): only the registry gateway holds it, no job
	// may be granted it, the sandbox's npmrc has no credential. The build
	// secret is another build-scope token the evil-postinstall job asks
	// for in its environment, so the malware does find one to print.
	registryToken := env.Registry.ReaderToken
	buildSecret := "npm_" + strings.Repeat("d3m0R3adT0k3n", 3)[:36]
	secretsFile := fmt.Sprintf(`# demo secrets file (mode 0600): a read-only build token (scope build), the
# registry's token (the gateway's upstream credential, never a job's) and a
# deploy token that no build may have
secrets:
  - name: NPM_READ_TOKEN
    value: %q
    scope: build
  - name: REGISTRY_TOKEN
    value: %q
    scope: deploy
  - name: DEPLOY_TOKEN
    value: %q
    scope: deploy
`, buildSecret, registryToken, deploySecret)
	a, err := env.AddAgent(ctx, harness.AgentOptions{Name: "demo-agent", Secrets: secretsFile, RegistryTokenSecret: "REGISTRY_TOKEN"})
	if err != nil {
		return err
	}
	fmt.Printf("agent %q registered and claiming (config %s)\n", a.Name, a.Config)
	record("start lab, registry, coordinator, agent", t, true, "")

	cli := func(args ...string) (string, string, int) {
		fmt.Printf("\n$ cleanroom %s\n", strings.Join(args, " "))
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		out, errOut, code := env.CLI(cctx, args...)
		fmt.Print(out)
		fmt.Print(errOut)
		return out, errOut, code
	}
	jobIDRe := regexp.MustCompile(`job (j-[0-9a-f]+)`)
	submit := func(dir string) (string, string, int) {
		out, errOut, code := cli("submit", filepath.Join(repo, "examples", dir), "--wait")
		id := ""
		if m := jobIDRe.FindStringSubmatch(errOut); m != nil {
			id = m[1]
		}
		return id, out + errOut, code
	}
	var failures []string
	check := func(ok bool, what string) bool {
		if !ok {
			failures = append(failures, what)
			fmt.Printf("  ✗ %s\n", what)
		} else {
			fmt.Printf("  ✓ %s\n", what)
		}
		return ok
	}

	// 1. A clean build, its artifacts, SBOM and provenance verified.
	banner("1. examples/hello: a real TypeScript build in a fresh sandbox")
	t = time.Now()
	id, log, code := submit("hello")
	ok := check(code == 0 && id != "", "build succeeded")
	outDir := filepath.Join(env.Dir, "hello-artifacts")
	_, _, c2 := cli("artifacts", id, "-o", outDir)
	ok = check(c2 == 0, "artifacts, SBOM and provenance downloaded") && ok
	prov := filepath.Join(outDir, "provenance.intoto.jsonl")
	pub := filepath.Join(filepath.Dir(a.Config), "agent.pub")
	art := filepath.Join(outDir, "dist", "index.js")
	_, _, c3 := cli("verify", art, filepath.Join(outDir, "sbom.cdx.json"), "--provenance", prov, "--coordinator", env.URL)
	ok = check(c3 == 0, "cleanroom verify passes on the artifacts (runner key fetched from the coordinator)") && ok
	if b, err := os.ReadFile(art); err == nil {
		_ = os.WriteFile(art, append(b, []byte("\n// tampered\n")...), 0o644)
	}
	_, _, c4 := cli("verify", art, "--provenance", prov, "--key", pub)
	ok = check(c4 != 0, "cleanroom verify fails on a tampered artifact") && ok
	_ = log
	record("1. hello builds; verify passes, tamper fails", t, ok, id)

	// 2. Malware in a dependency: every exfiltration attempt denied and logged.
	banner("2. examples/evil-postinstall: a dependency's postinstall tries to steal and send secrets")
	t = time.Now()
	env.Lab.ResetForbiddenPackets()
	vlogStart := 0
	if fi, err := os.Stat(env.Registry.LogPath); err == nil {
		vlogStart = int(fi.Size())
	}
	id, log, code = submit("evil-postinstall")
	fmt.Printf("(build exit code %d: the malware keeps quiet and the build itself succeeds; what matters is below)\n", code)
	out, _, _ := cli("egress", "--job", id, "--denied")
	ok = check(strings.Count(out, "deny") >= 5, "the egress log shows the attempts as denied")
	for _, want := range []string{"exfil.example", "169.254.169.254", "198.51.100.53", "10.231.253.2"} {
		ok = check(strings.Contains(out, want), "…including "+want) && ok
	}
	pk := env.Lab.ForbiddenPackets()
	ok = check(len(pk) == 0, fmt.Sprintf("the forbidden host (attacker, metadata, public resolver) received %d packets", len(pk))) && ok
	ok = check(!strings.Contains(log, deploySecret), "the deploy secret appears nowhere in the job log") && ok
	evOut, _, _ := env.CLI(ctx, "egress", "--job", id, "--json")
	ok = check(!strings.Contains(evOut, deploySecret), "…nor in the egress events") && ok
	leaked := ""
	for name, form := range encodings(buildSecret) {
		if strings.Contains(log, form) || strings.Contains(evOut, form) {
			leaked += " " + name
		}
	}
	ok = check(leaked == "" && strings.Contains(log, "[REDACTED]"),
		"the granted build secret NPM_READ_TOKEN, which the malware printed and sent, shows only as [REDACTED] (raw, base64, URL, hex)"+leaked) && ok

	// The registry channel: every request the malware made to the registry
	// it found in its npmrc (the job's gateway) was refused with a 403
	// naming the rule, audited, and never reached Verdaccio.
	httpOut, _, _ := cli("egress", "--job", id, "--proto", "http", "--denied")
	for _, w := range []struct{ log, rule, what string }{
		{"registry adduser: PUT /-/user/org.couchdb.user:", "registry-write", "creating a registry account (adduser)"},
		{"registry publish: PUT /@cleanroom-demo%2ftelemetry-helper", "registry-write", "publishing itself (the worm's move)"},
		{"registry search: GET /-/v1/search", "registry-api", "searching the registry"},
		{"registry tarball not in the lockfile: GET /typescript/-/typescript-5.6.3.tgz", "not-in-lockfile", "a tarball the lockfile does not pin"},
		{"registry packument of another name: GET /typescript", "not-in-lockfile", "the packument of another package"},
	} {
		ok = check(lineWith(log, w.log, ": refused: HTTP 403 (rule "+w.rule+")") && strings.Contains(httpOut, w.rule),
			"the registry channel: "+w.what+" refused (403, rule "+w.rule+") and audited") && ok
	}
	ok = check(strings.Contains(log, "/run/cleanroom/npmrc names http://") && strings.Contains(log, ", 0 credential line(s)"),
		"the sandbox's npmrc names only the job's gateway and holds no credential") && ok
	leaked = ""
	for name, form := range encodings(registryToken) {
		if strings.Contains(log, form) || strings.Contains(evOut, form) {
			leaked += " " + name
		}
	}
	ok = check(leaked == "", "the registry's own token appears nowhere in the log or the events"+leaked) && ok
	vlog, _ := os.ReadFile(env.Registry.LogPath)
	vlog = vlog[min(vlogStart, len(vlog)):]
	reached := ""
	for _, s := range []string{"org.couchdb.user", "/-/v1/search", "typescript", "req: 'PUT"} {
		if strings.Contains(string(vlog), s) {
			reached += " " + s
		}
	}
	ok = check(strings.Contains(string(vlog), "is-number-7.0.0.tgz") && reached == "",
		"the registry (Verdaccio's own log) saw the gateway fetch the lockfile's tarballs and none of those requests"+reached) && ok
	record("2. evil-postinstall: exfiltration denied, logged", t, ok, id)

	// 3. A job asking for a deploy secret is refused before anything runs.
	banner("3. examples/deploy-secret: a job asks for a deploy-scope secret")
	t = time.Now()
	id, log, code = submit("deploy-secret")
	ok = check(code != 0 && strings.Contains(log, "DEPLOY_TOKEN") && strings.Contains(log, "deploy"), "refused, naming the secret and its scope")
	ok = check(!strings.Contains(log, "$ npm ci"), "…before any sandbox ran") && ok
	record("3. deploy secret refused", t, ok, id)

	// 4. A lockfile that points at a foreign host is refused.
	banner("4. examples/foreign-lockfile: a lockfile entry resolves from another host")
	t = time.Now()
	id, log, code = submit("foreign-lockfile")
	ok = check(code != 0 && strings.Contains(log, "evil.example.com") && strings.Contains(log, "node_modules/picocolors"), "refused, naming the entry and the host")
	record("4. foreign lockfile refused", t, ok, id)

	if len(failures) > 0 {
		return fmt.Errorf("%d check(s) failed: %s", len(failures), strings.Join(failures, "; "))
	}
	return nil
}

// showConsole makes the web console reachable on this machine's loopback
// (the coordinator listens inside the lab, which has no route in or out),
// creates an audit token — it reads every job and egress event and changes
// nothing — and prints both. The relay stops with the environment.
func showConsole(ctx context.Context, env *harness.Env, keep bool) (baseURL string, _ error) {
	banner("web console")
	base, _, err := env.Forward()
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, errOut, code := env.CLI(cctx, "token", "create", "--kind", "audit", "--expires", "0", "--note", "make demo console")
	token := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(token, "cru_") {
		return "", fmt.Errorf("creating an audit token for the console: exit %d: %s%s", code, out, errOut)
	}
	fmt.Printf("Console: %s/ui/  (sign in with the audit token: %s)\n", base, token)
	if keep {
		fmt.Println("KEEP=1: the console, the coordinator, the agent and the lab stay up until Ctrl-C.")
	} else {
		fmt.Println("The console stops with the demo, now; KEEP=1 make demo keeps it up until Ctrl-C.")
	}
	return base, nil
}

// lineWith reports whether one line of text holds both a and b, in order.
func lineWith(text, a, b string) bool {
	for _, l := range strings.Split(text, "\n") {
		if i := strings.Index(l, a); i >= 0 && strings.Contains(l[i+len(a):], b) {
			return true
		}
	}
	return false
}
