package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cleanroom-ci/cleanroom/agent"
	"github.com/cleanroom-ci/cleanroom/api"
)

// fakeCoordinator is an in-memory agent.Coordinator for unit tests of the job
// loop. It hands out the jobs queued with add, keeps what the agent reports,
// and fences lease calls the way the real coordinator does (a lost lease or
// an ended job answers 409, a revoked runner 401). Tests change its state
// while the agent runs (loseLease, revoke) and script failures of log
// appends (logFaults) that a real coordinator gives only by accident.
type fakeCoordinator struct {
	ttl      time.Duration // of every lease handed out
	logLimit int64         // the leases' LogLimit (0: none, as an older coordinator)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	queue   []api.Claim
	jobs    map[string]*fakeJob
	revoked bool
	// logFaults fail the first appends, in order, one each.
	logFaults []fault
}

// fault is one scripted failure: err is returned, after the request took
// effect if afterStore is set (an answer lost on the way back).
type fault struct {
	err        error
	afterStore bool
}

// fakeJob is what the fake keeps of one job.
type fakeJob struct {
	source      []byte
	token       int64
	lost, ended bool
	calls       map[string]int // calls by method, answered or refused
	log         []byte
	mismatches  []string // resent log bytes that differ from the stored ones
	events      []api.EgressEvent
	artifacts   map[string][]byte
	results     []api.ResultRequest
}

func newFakeCoordinator(ttl time.Duration) *fakeCoordinator {
	return &fakeCoordinator{ttl: ttl, changed: make(chan struct{}), jobs: map[string]*fakeJob{}}
}

var _ agent.Coordinator = (*fakeCoordinator)(nil)

// status is the error a real coordinator's answer with this HTTP status
// turns into in the client.
func status(code int) error { return &api.Error{Status: code} }

// changedLocked wakes waiting claims. f.mu is held.
func (f *fakeCoordinator) changedLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// add queues a job whose uploaded source holds files.
func (f *fakeCoordinator) add(t testing.TB, id string, files map[string]string) {
	t.Helper()
	var ents []entry
	for n, b := range files {
		ents = append(ents, entry{name: n, typ: tar.TypeReg, body: b})
	}
	src := tarGz(t, ents)
	sum := sha256.Sum256(src)
	f.mu.Lock()
	defer f.mu.Unlock()
	token := int64(len(f.jobs) + 1)
	f.jobs[id] = &fakeJob{source: src, token: token, calls: map[string]int{}, artifacts: map[string][]byte{}}
	f.queue = append(f.queue, api.Claim{
		Job:   api.Job{ID: id, State: api.StateRunning, Attempts: 1, Spec: spec, Source: api.Source{Kind: api.SourceUpload, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(src))}},
		Lease: api.Lease{Token: token, TTL: api.Duration(f.ttl), Expires: time.Now().Add(f.ttl), LogLimit: f.logLimit},
	})
	f.changedLocked()
}

// loseLease gives the job to "another runner": its lease calls answer 409.
func (f *fakeCoordinator) loseLease(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs[id].lost = true
	f.changedLocked()
}

// revoke removes the runner: every call answers 401.
func (f *fakeCoordinator) revoke() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = true
	f.changedLocked()
}

// job returns a copy of what the fake holds of job id.
func (f *fakeCoordinator) job(id string) fakeJob {
	f.mu.Lock()
	defer f.mu.Unlock()
	j := *f.jobs[id]
	j.log = bytes.Clone(j.log)
	j.calls = maps.Clone(j.calls)
	return j
}

// lease counts a lease call and checks its fencing token. f.mu is held.
func (f *fakeCoordinator) lease(method, jobID string, token int64) (*fakeJob, error) {
	j, ok := f.jobs[jobID]
	if ok {
		j.calls[method]++
	}
	switch {
	case f.revoked:
		return nil, status(http.StatusUnauthorized)
	case !ok:
		return nil, status(http.StatusNotFound)
	case j.lost || j.ended || j.token != token:
		return nil, status(http.StatusConflict)
	}
	return j, nil
}

func (f *fakeCoordinator) Claim(ctx context.Context, req api.ClaimRequest) (api.ClaimResponse, error) {
	wait := time.NewTimer(req.Wait.D())
	defer wait.Stop()
	for {
		f.mu.Lock()
		if f.revoked {
			f.mu.Unlock()
			return api.ClaimResponse{}, status(http.StatusUnauthorized)
		}
		if len(f.queue) > 0 {
			n := min(req.Slots, len(f.queue))
			claims := f.queue[:n:n]
			f.queue = f.queue[n:]
			f.mu.Unlock()
			return api.ClaimResponse{Claims: claims}, nil
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
		case <-wait.C:
			return api.ClaimResponse{}, nil
		case <-ctx.Done():
			return api.ClaimResponse{}, ctx.Err()
		}
	}
}

func (f *fakeCoordinator) Heartbeat(ctx context.Context, jobID string, req api.HeartbeatRequest) (api.HeartbeatResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.lease("Heartbeat", jobID, req.Token); err != nil {
		return api.HeartbeatResponse{}, err
	}
	return api.HeartbeatResponse{Lease: api.Lease{Token: req.Token, TTL: api.Duration(f.ttl), Expires: time.Now().Add(f.ttl), LogLimit: f.logLimit}}, nil
}

func (f *fakeCoordinator) DownloadSource(ctx context.Context, jobID string, token int64, w io.Writer) (int64, error) {
	f.mu.Lock()
	j, err := f.lease("DownloadSource", jobID, token)
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(j.source)
	return int64(n), err
}

// AppendLog stores like the real store: bytes past the end are a gap (409
// with the expected offset), bytes already held are stored once. It also
// notes resent bytes that differ from the stored ones.
func (f *fakeCoordinator) AppendLog(ctx context.Context, jobID string, token, offset int64, data []byte) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, err := f.lease("AppendLog", jobID, token)
	if err != nil {
		return 0, err
	}
	var ft fault
	if len(f.logFaults) > 0 {
		ft, f.logFaults = f.logFaults[0], f.logFaults[1:]
	}
	if ft.err != nil && !ft.afterStore {
		return 0, ft.err
	}
	end := int64(len(j.log))
	if offset > end {
		return 0, &api.Error{Status: http.StatusConflict, ExpectedOffset: &end}
	}
	held := min(end-offset, int64(len(data)))
	if !bytes.Equal(data[:held], j.log[offset:offset+held]) {
		j.mismatches = append(j.mismatches, fmt.Sprintf("at %d: sent %q, held %q", offset, data[:held], j.log[offset:offset+held]))
	}
	j.log = append(j.log, data[held:]...)
	return int64(len(j.log)), ft.err
}

func (f *fakeCoordinator) PostEgress(ctx context.Context, jobID string, token, firstSeq int64, events []api.EgressEvent) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, err := f.lease("PostEgress", jobID, token)
	if err != nil {
		return err
	}
	if int(firstSeq) > len(j.events) {
		return status(http.StatusConflict)
	}
	j.events = append(j.events[:firstSeq], events...)
	return nil
}

func (f *fakeCoordinator) UploadArtifact(ctx context.Context, jobID string, token int64, name, kind, digest string, r io.Reader) (api.Artifact, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return api.Artifact{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	j, err := f.lease("UploadArtifact", jobID, token)
	if err != nil {
		return api.Artifact{}, err
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != digest {
		return api.Artifact{}, status(http.StatusBadRequest)
	}
	j.artifacts[name] = b
	return api.Artifact{Name: name, Kind: kind, SHA256: digest, Size: int64(len(b))}, nil
}

// Result ends the job once the log is complete (409 with the expected offset
// until then, as the real coordinator answers).
func (f *fakeCoordinator) Result(ctx context.Context, jobID string, req api.ResultRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, err := f.lease("Result", jobID, req.Token)
	if err != nil {
		return err
	}
	if end := int64(len(j.log)); req.LogSize != end {
		return &api.Error{Status: http.StatusConflict, ExpectedOffset: &end}
	}
	j.results = append(j.results, req)
	j.ended = true
	f.changedLocked()
	return nil
}

// runFakeAgent runs an agent against f; the returned stop function stops it
// gracefully and returns Run's error. Run's error also arrives on the
// channel if the agent stops by itself.
func runFakeAgent(t *testing.T, f *fakeCoordinator, ex agent.Executor) (done <-chan error, stop func() error) {
	t.Helper()
	cfg := &agent.Config{Coordinator: "http://fake.invalid", RunnerID: "r-fake", Name: "fake", DataDir: filepath.Join(t.TempDir(), "data")}
	cfg.SetDefaults()
	a, err := agent.New(cfg, ex, nil, agent.WithCoordinator(f))
	if err != nil {
		t.Fatal(err)
	}
	if a.Client() != nil {
		t.Fatal("Client() is an api.Client although a fake coordinator was given")
	}
	a.ClaimWait = 200 * time.Millisecond
	a.ReportTimeout = 5 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	finished := make(chan struct{})
	var runErr error
	go func() { runErr = a.Run(ctx); errc <- runErr; close(finished) }()
	var once sync.Once
	stop = func() error {
		once.Do(func() { cancel(); <-finished })
		return runErr
	}
	t.Cleanup(func() { stop() })
	return errc, stop
}
