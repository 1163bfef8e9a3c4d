package coordinator_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/api"
	"github.com/cleanroom-ci/cleanroom/coordinator"
	"github.com/cleanroom-ci/cleanroom/coordinator/store"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/postgres/pgtest"
	"github.com/cleanroom-ci/cleanroom/coordinator/store/sqlite"
)

// The BenchmarkHA* benchmarks compare the two deployments side by side in
// one run: one coordinator on SQLite (the embedded default) and two
// coordinators on one PostgreSQL database (the HA layout). They need
// CLEANROOM_TEST_POSTGRES (scripts/bench.sh starts scripts/postgres.sh);
// each run gets a fresh database. Each iteration alternates the side that
// goes first, so the machine's noise hits both alike.

// haSide is one deployment under comparison: coordinators on one store,
// their URLs, the admin token and one HTTP transport for every client.
type haSide struct {
	name  string
	urls  []string
	admin string
	tr    *http.Transport
}

// startHASide runs n in-process coordinators on loopback over one store:
// "sqlite" (a fresh file) or "postgres" (a fresh database, one pool and
// one LISTEN connection per coordinator, as separate processes would have).
func startHASide(b *testing.B, kind string, n int) *haSide {
	b.Helper()
	ctx := context.Background()
	s := &haSide{name: kind, admin: coordinator.NewAdminToken(), tr: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(s.tr.CloseIdleConnections)
	var shared store.Store
	if kind == "sqlite" {
		st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "cleanroom.db"), sqlite.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() }) // after the coordinators stopped
		shared = st
	}
	dsn := ""
	if kind == "postgres" {
		dsn = pgtest.NewDatabase(b)
	}
	for range n {
		st := shared
		if st == nil {
			pg, err := postgres.Open(ctx, dsn, postgres.Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { pg.Close() })
			st = pg
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv, err := coordinator.New(ctx, coordinator.Config{DataDir: b.TempDir(), AdminToken: s.admin, Store: st, LeaseTTL: 30 * time.Second})
		if err != nil {
			ln.Close()
			b.Fatal(err)
		}
		sctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(sctx, ln, "", "") }()
		b.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				b.Errorf("serving: %v", err)
			}
		})
		s.urls = append(s.urls, "http://"+ln.Addr().String())
	}
	return s
}

func (s *haSide) client(url, token string) *api.Client {
	c := api.NewClient(url, token)
	c.HTTP = &http.Client{Transport: s.tr}
	return c
}

// register registers a runner through url and returns its client there.
func (s *haSide) register(b *testing.B, url, name string) *api.Client {
	b.Helper()
	ctx := context.Background()
	tok, err := s.client(url, s.admin).CreateToken(ctx, api.TokenRequest{Kind: api.TokenRegistration, Uses: 1, Expires: api.Duration(time.Hour)})
	if err != nil {
		b.Fatalf("creating a registration token: %v", err)
	}
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	resp, err := s.client(url, "").Register(ctx, api.RegisterRequest{Token: tok.Token, Name: name, PublicKey: pub})
	if err != nil {
		b.Fatalf("registering %s: %v", name, err)
	}
	return s.client(url, resp.RunnerToken)
}

// submit submits a git job (commit i) through url.
func (s *haSide) submit(ctx context.Context, url string, i int) (api.Job, error) {
	return s.client(url, s.admin).SubmitGit(ctx, api.JobSpec{Build: api.Build{Script: "true"}},
		api.Source{Kind: api.SourceGit, URL: "https://git.example/app.git", Commit: fmt.Sprintf("%040x", i)})
}

// sides starts the two deployments compared: one coordinator on SQLite,
// two on PostgreSQL.
func sides(b *testing.B) (sqliteSide, pgSide *haSide) {
	pgtest.ServerDSN(b) // skip (or fail in CI) before starting anything
	return startHASide(b, "sqlite", 1), startHASide(b, "postgres", 2)
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkHASubmitToClaim measures submit → claimed with the runner's
// claim already long-polling, one job at a time, each timed from just
// before the submit request to the claim's answer: on PostgreSQL the job
// is submitted to coordinator A and claimed by a runner long-polling
// coordinator B (A's NOTIFY wakes B's dispatcher); on SQLite both are the
// one coordinator. One iteration is one job on each side; run with
// -benchtime=200x. Target: median < 20 ms on PostgreSQL.
func BenchmarkHASubmitToClaim(b *testing.B) {
	lite, pg := sides(b)
	type path struct {
		side     *haSide
		submitTo string
		runner   *api.Client
		lat      []time.Duration
	}
	paths := []*path{
		{side: lite, submitTo: lite.urls[0], runner: lite.register(b, lite.urls[0], "lat")},
		{side: pg, submitTo: pg.urls[0], runner: pg.register(b, pg.urls[1], "lat")},
	}
	ctx := context.Background()
	i := 0
	for b.Loop() {
		for k := range paths {
			p := paths[(i+k)%len(paths)]
			got := make(chan error, 1)
			var claimedAt time.Time
			go func() {
				resp, err := p.runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(10 * time.Second)})
				claimedAt = time.Now()
				if err == nil && len(resp.Claims) != 1 {
					err = fmt.Errorf("claim returned %d jobs", len(resp.Claims))
				}
				got <- err
			}()
			time.Sleep(10 * time.Millisecond) // the claim is parked: the runner is idle
			start := time.Now()
			if _, err := p.side.submit(ctx, p.submitTo, i); err != nil {
				b.Fatal(err)
			}
			if err := <-got; err != nil {
				b.Fatalf("%s: %v", p.side.name, err)
			}
			p.lat = append(p.lat, claimedAt.Sub(start))
		}
		i++
	}
	for _, p := range paths {
		slices.Sort(p.lat)
		b.ReportMetric(ms(p.lat[len(p.lat)/2]), p.side.name+"-ms-median")
		b.ReportMetric(ms(p.lat[len(p.lat)*9/10]), p.side.name+"-ms-p90")
	}
	b.ReportMetric(ms(paths[1].lat[len(paths[1].lat)/2])/ms(paths[0].lat[len(paths[0].lat)/2]), "pg/sqlite-median")
}

// haAgents is the number of runners (one slot each) of the throughput
// benchmark; haJobs the jobs of one round.
const haAgents, haJobs = 8, 200

// BenchmarkHAThroughput measures jobs/s through the runner's whole cycle
// — claim (long-poll), heartbeat, one log chunk, result — with 8 runners
// of one slot each and a no-op job, on one SQLite coordinator and on two
// PostgreSQL coordinators (runners alternate between A and B). A round
// submits 200 jobs (not timed), then times the runners from their start
// until the last result is stored. One iteration is one round on each
// side; run with -benchtime=5x. It reports each side's median jobs/s
// and the median ratio of rounds run back to back. Target: PostgreSQL
// ≥ 1.0× SQLite.
func BenchmarkHAThroughput(b *testing.B) {
	lite, pg := sides(b)
	type side struct {
		s       *haSide
		runners []*api.Client
		rates   []float64 // jobs/s of each round
	}
	var all []*side
	for _, s := range []*haSide{lite, pg} {
		sd := &side{s: s}
		for i := range haAgents {
			sd.runners = append(sd.runners, s.register(b, s.urls[i%len(s.urls)], fmt.Sprintf("tp%d", i)))
		}
		all = append(all, sd)
	}
	ctx := context.Background()
	logLine := []byte(strings.Repeat("npm notice a no-op build's line of output\n", 4))
	seq := 0
	round := 0
	for b.Loop() {
		for k := range all {
			sd := all[(round+k)%len(all)]
			for range haJobs {
				if _, err := sd.s.submit(ctx, sd.s.urls[seq%len(sd.s.urls)], seq); err != nil {
					b.Fatal(err)
				}
				seq++
			}
			var finished atomic.Int64
			var wg sync.WaitGroup
			errs := make(chan error, haAgents)
			start := time.Now()
			var end atomic.Int64
			for _, r := range sd.runners {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for finished.Load() < haJobs {
						if err := cycle(ctx, r, logLine); errors.Is(err, errNoJob) {
							continue
						} else if err != nil {
							errs <- err
							return
						}
						if finished.Add(1) == haJobs {
							end.Store(int64(time.Since(start)))
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatalf("%s: %v", sd.s.name, err)
			}
			sd.rates = append(sd.rates, haJobs/time.Duration(end.Load()).Seconds())
		}
		round++
	}
	var ratios []float64 // of the rounds run back to back
	for i := range all[0].rates {
		ratios = append(ratios, all[1].rates[i]/all[0].rates[i])
	}
	for _, sd := range all {
		b.ReportMetric(median(sd.rates), sd.s.name+"-jobs/s")
	}
	b.ReportMetric(median(ratios), "pg/sqlite")
}

// median returns the middle value of vs (the upper one of an even count).
func median(vs []float64) float64 {
	vs = slices.Clone(vs)
	slices.Sort(vs)
	return vs[len(vs)/2]
}

var errNoJob = errors.New("no job")

// cycle is one no-op job as a runner does it: claim, heartbeat, log,
// result.
func cycle(ctx context.Context, r *api.Client, line []byte) error {
	resp, err := r.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(300 * time.Millisecond)})
	if err != nil {
		return fmt.Errorf("claiming: %w", err)
	}
	if len(resp.Claims) == 0 {
		return errNoJob
	}
	c := resp.Claims[0]
	if _, err := r.Heartbeat(ctx, c.Job.ID, api.HeartbeatRequest{Token: c.Lease.Token}); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	off, err := r.AppendLog(ctx, c.Job.ID, c.Lease.Token, 0, line)
	if err != nil {
		return fmt.Errorf("appending log: %w", err)
	}
	if err := r.Result(ctx, c.Job.ID, api.ResultRequest{Token: c.Lease.Token, State: api.StateSucceeded, LogSize: off}); err != nil {
		return fmt.Errorf("result: %w", err)
	}
	return nil
}

// BenchmarkHAArtifactMemory runs a real coordinator process (cleanroom
// server, built from this checkout unless CLEANROOM_BENCH_BIN names a
// binary) per store and size, uploads one artifact of that size as a
// runner, downloads it, and reports the process's peak RSS (VmHWM) in
// MiB: 64 MiB next to 1 GiB on SQLite and on PostgreSQL. Flat means the
// 1 GiB peak is about the 64 MiB one. Run with -benchtime=1x.
func BenchmarkHAArtifactMemory(b *testing.B) {
	pgtest.ServerDSN(b)
	bin := os.Getenv("CLEANROOM_BENCH_BIN")
	if bin == "" {
		bin = filepath.Join(b.TempDir(), "cleanroom")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/cleanroom-ci/cleanroom/cmd/cleanroom").CombinedOutput(); err != nil {
			b.Fatalf("go build: %v\n%s", err, out)
		}
	}
	sizes := []int64{64 << 20, 1 << 30}
	for b.Loop() {
		for _, kind := range []string{"sqlite", "postgres"} {
			var peaks []float64
			for _, size := range sizes {
				peak, err := artifactPeak(b, bin, kind, size)
				if err != nil {
					b.Fatalf("%s, %d MiB: %v", kind, size>>20, err)
				}
				peaks = append(peaks, peak)
				b.ReportMetric(peak, fmt.Sprintf("%s-%dMiB-peak-MiB", kind, size>>20))
			}
			b.ReportMetric(peaks[1]/peaks[0], kind+"-1GiB/64MiB")
		}
	}
}

// artifactPeak starts `cleanroom server` on the store kind, streams one
// artifact of size bytes up (as a runner) and down (as the admin), checks
// its digest, and returns the server's VmHWM in MiB.
func artifactPeak(b *testing.B, bin, kind string, size int64) (float64, error) {
	ctx := context.Background()
	dir := b.TempDir()
	admin := coordinator.NewAdminToken()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(admin+"\n"), 0o600); err != nil {
		return 0, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := []string{"server", "--listen", addr, "--data-dir", filepath.Join(dir, "data"), "--admin-token-file", filepath.Join(dir, "admin.token"), "--max-artifact", "2GiB"}
	if kind == "postgres" {
		args = append(args, "--store", pgtest.NewDatabase(b))
	}
	var stderr bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	url := "http://" + addr
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := hc.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("server not ready: %v\n%s", err, stderr.String())
		}
	}
	s := &haSide{name: kind, urls: []string{url}, admin: admin, tr: tr}
	runner := s.register(b, url, "mem")
	j, err := s.submit(ctx, url, 1)
	if err != nil {
		return 0, err
	}
	resp, err := runner.Claim(ctx, api.ClaimRequest{Slots: 1, Wait: api.Duration(5 * time.Second)})
	if err != nil || len(resp.Claims) != 1 {
		return 0, fmt.Errorf("claiming: %d %v", len(resp.Claims), err)
	}
	lease := resp.Claims[0].Lease.Token
	h := sha256.New()
	if _, err := io.Copy(h, artifactReader(size)); err != nil {
		return 0, err
	}
	digest := hex.EncodeToString(h.Sum(nil))
	if _, err := runner.UploadArtifact(ctx, j.ID, lease, "big.bin", api.KindFile, digest, artifactReader(size)); err != nil {
		return 0, fmt.Errorf("uploading: %w", err)
	}
	h.Reset()
	n, err := s.client(url, admin).DownloadArtifact(ctx, j.ID, "big.bin", h)
	if err != nil {
		return 0, fmt.Errorf("downloading: %w", err)
	}
	if n != size || hex.EncodeToString(h.Sum(nil)) != digest {
		return 0, fmt.Errorf("downloaded %d bytes with another digest", n)
	}
	return vmHWM(cmd.Process.Pid)
}

// artifactReader yields size bytes: one random MiB, repeated (a
// non-seekable reader, so the client cannot hold the body for a retry).
func artifactReader(size int64) io.Reader {
	block := make([]byte, 1<<20)
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	return io.LimitReader(&repeater{block: block}, size)
}

type repeater struct {
	block []byte
	off   int
}

func (r *repeater) Read(p []byte) (int, error) {
	n := copy(p, r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	return n, nil
}

// vmHWM reads a process's peak resident set size in MiB.
func vmHWM(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing VmHWM %q: %w", v, err)
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}
